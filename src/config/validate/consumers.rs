//! `consumers`, `acls`, `mtls_auth_credentials`, and the credential entities plugins declare.

use super::*;

pub(super) fn credential(
    c: &RawCredential,
    consumer_id: &str,
    cas: &[Arc<CaCertificate>],
    ca_index: &Index,
    d: &mut Diags,
) -> Option<api::MtlsCredential> {
    let ca = match &c.ca_certificate {
        Some(r) => Some(ca_index.resolve(r, d).and_then(|i| cas.get(i))?.id.clone()),
        None => None,
    };
    Some(api::MtlsCredential {
        id: c
            .id
            .as_ref()
            .map(|v| v.v.clone())
            .unwrap_or_else(|| format!("{consumer_id}:{}", c.subject_name.v)),
        subject_name: c.subject_name.v.clone(),
        ca_certificate: ca,
        consumer_id: consumer_id.to_string(),
    })
}

/// Checks every plugin-declared credential entity with its kind's schema and uniqueness rules and
/// resolves its consumer (nested entries belong to the enclosing consumer).
fn plugin_credentials(
    doc: &RawDoc,
    consumers: &[Arc<api::Consumer>],
    cons_index: &mut Index,
    registry: &api::Registry,
    d: &mut Diags,
) -> HashMap<&'static str, Vec<Arc<api::credentials::Credential>>> {
    let mut entries: Vec<(&crate::config::raw::RawPluginCredential, usize)> = Vec::new();
    for (i, c) in doc.consumers.iter().enumerate() {
        entries.extend(c.plugin_credentials.iter().map(|pc| (pc, i)));
    }
    for pc in &doc.plugin_credentials {
        if let Some(i) = pc.consumer.as_ref().and_then(|r| cons_index.resolve(r, d)) {
            entries.push((pc, i));
        }
    }
    let mut out: HashMap<&'static str, Vec<Arc<api::credentials::Credential>>> = HashMap::new();
    let mut unique: HashMap<(&'static str, &'static str, String), Loc> = HashMap::new();
    let mut ids: HashMap<(&'static str, String), Loc> = HashMap::new();
    for (n, (pc, ci)) in entries.into_iter().enumerate() {
        let Some(kind) = registry.credential_kind(pc.collection) else {
            continue;
        };
        let Some(consumer) = consumers.get(ci) else {
            continue;
        };
        let fields = pc.fields();
        // Kong's entity `ttl` counts from creation in the database; a file has no creation time.
        if let Some(k) = pc.node.locate_key("ttl") {
            d.warn(
                &k.loc,
                &format!("{}.ttl", pc.path),
                "ttl is accepted and ignored: credentials from a file do not expire",
            );
        }
        let errors = (kind.validate)(&fields);
        if !errors.is_empty() {
            for e in errors {
                let (loc, path) = locate_node_error(&pc.node, &pc.path, &e);
                d.err(&loc, &path, e.message);
            }
            continue;
        }
        let mut duplicate = false;
        for field in kind.unique {
            let Some(value) = fields.get(*field).map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }) else {
                continue;
            };
            let at = pc.node.locate(field).loc.clone();
            match unique.get(&(kind.collection, *field, value.clone())) {
                Some(first) => {
                    // The value itself may be a secret (an API key): name the places only.
                    d.err(
                        &at,
                        &format!("{}.{field}", pc.path),
                        format!(
                            "duplicate {field} in {} (first at {first}); each must be unique",
                            kind.collection
                        ),
                    );
                    duplicate = true;
                }
                None => {
                    unique.insert((kind.collection, *field, value), at);
                }
            }
        }
        let id = match &pc.id {
            Some(v) => {
                if let Some(first) = ids.get(&(kind.collection, v.v.clone())) {
                    d.err(
                        &v.loc,
                        &v.path,
                        format!(
                            "duplicate {} id {:?} (first at {first})",
                            kind.collection, v.v
                        ),
                    );
                    duplicate = true;
                }
                ids.insert((kind.collection, v.v.clone()), v.loc.clone());
                v.v.clone()
            }
            None => format!("{}-{n}", kind.collection),
        };
        if duplicate {
            continue;
        }
        out.entry(kind.collection)
            .or_default()
            .push(Arc::new(api::credentials::Credential {
                id,
                consumer: consumer.clone(),
                fields,
                tags: pc.tags.clone(),
            }));
    }
    out
}

impl<'a> Resolver<'a> {
    pub(super) fn consumers(&mut self, doc: &'a RawDoc, d: &mut Diags) {
        let mut consumers: Vec<api::Consumer> = Vec::new();
        let mut custom_ids: HashMap<String, Loc> = HashMap::new();
        for c in &doc.consumers {
            let idx = consumers.len();
            let id =
                c.id.as_ref()
                    .or(c.username.as_ref())
                    .or(c.custom_id.as_ref())
                    .map(|v| v.v.clone())
                    .unwrap_or_else(|| format!("consumer-{idx}"));
            if let Some(v) = &c.id {
                self.cons_index.add(v, idx, "id", d);
            } else {
                self.cons_index.add_plain(&id, idx);
            }
            if let Some(v) = &c.username {
                self.cons_index.add(v, idx, "username", d);
            }
            if let Some(v) = &c.custom_id {
                if let Some(prev) = custom_ids.get(&v.v) {
                    d.err(
                        &v.loc,
                        &v.path,
                        format!("duplicate consumer custom_id {:?} (first at {prev})", v.v),
                    );
                }
                custom_ids.insert(v.v.clone(), v.loc.clone());
                self.cons_index.add_plain(&v.v, idx);
            }
            consumers.push(api::Consumer {
                id: id.clone(),
                username: c.username.as_ref().map(|v| v.v.clone()),
                custom_id: c.custom_id.as_ref().map(|v| v.v.clone()),
                groups: c.acls.iter().map(|a| a.group.v.clone()).collect(),
                tags: c.tags.clone(),
            });
            for cred in &c.mtls_auth_credentials {
                if let Some(cr) = credential(cred, &id, &self.cas, &self.ca_index, d) {
                    self.credentials.push(cr);
                }
            }
            for p in &c.plugins {
                self.plugin_raws.push((
                    p,
                    Scope {
                        consumer: Some(id.clone()),
                        ..Scope::default()
                    },
                ));
            }
        }
        for a in &doc.acls {
            if let Some(r) = &a.consumer {
                if let Some(i) = self.cons_index.resolve(r, d) {
                    consumers[i].groups.push(a.group.v.clone());
                }
            }
        }
        for cred in &doc.mtls_auth_credentials {
            if let Some(r) = &cred.consumer {
                if let Some(i) = self.cons_index.resolve(r, d) {
                    let id = consumers[i].id.clone();
                    if let Some(cr) = credential(cred, &id, &self.cas, &self.ca_index, d) {
                        self.credentials.push(cr);
                    }
                }
            }
        }
        self.consumers = consumers.into_iter().map(Arc::new).collect();
    }

    /// Credential entities declared by plugins (`keyauth_credentials`, `jwt_secrets`, …).
    pub(super) fn plugin_credentials(
        &mut self,
        doc: &RawDoc,
        registry: &api::Registry,
        d: &mut Diags,
    ) -> HashMap<&'static str, Vec<Arc<api::credentials::Credential>>> {
        plugin_credentials(doc, &self.consumers, &mut self.cons_index, registry, d)
    }
}
