//! `plugins`: scopes resolved, one instance per name and scope, each built by its factory.

use super::*;

pub(super) fn collect_files(v: &serde_json::Value, dir: &Path, files: &mut Vec<PathBuf>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, val) in m {
                if k.ends_with("_file") {
                    if let Some(s) = val.as_str() {
                        files.push(dir.join(s));
                    }
                }
                collect_files(val, dir, files);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_files(x, dir, files)),
        _ => {}
    }
}

impl<'a> Resolver<'a> {
    pub(super) fn plugins(
        &mut self,
        doc: &'a RawDoc,
        registry: &api::Registry,
        plugin_credentials: HashMap<&'static str, Vec<Arc<api::credentials::Credential>>>,
        d: &mut Diags,
    ) -> Vec<PluginInstance> {
        for p in &doc.plugins {
            let mut scope = Scope::default();
            if let Some(r) = &p.service {
                scope.service = self
                    .svc_index
                    .resolve(r, d)
                    .and_then(|i| self.services.get(i))
                    .map(|s| s.id.clone());
            }
            if let Some(r) = &p.route {
                scope.route = self
                    .route_index
                    .resolve(r, d)
                    .and_then(|i| self.route_ids.get(&i).cloned());
            }
            if let Some(r) = &p.consumer {
                scope.consumer = self
                    .cons_index
                    .resolve(r, d)
                    .and_then(|i| self.consumers.get(i))
                    .map(|c| c.id.clone());
            }
            self.plugin_raws.push((p, scope));
        }
        // Plugins run in HTTP phases only: one on a stream route would be silently skipped, and an
        // access-control plugin skipped is a route left open. Metrics are always on (prometheus).
        for (p, scope) in &self.plugin_raws {
            let on_stream = scope
                .route
                .as_ref()
                .and_then(|id| self.stream_routes.iter().find(|r| &r.id == id));
            if let (Some(route), true) = (on_stream, p.enabled && p.name.v != "prometheus") {
                d.err(
                    &p.name.loc,
                    &p.name.path,
                    format!(
                        "plugin {:?} cannot run on stream route {:?} (plugins apply to HTTP routes only here); remove it",
                        p.name.v, &*route.name
                    ),
                );
            }
        }
        let build_ctx = api::BuildContext {
            consumers: self.consumers.clone(),
            credentials: self.credentials.clone(),
            ca_certificates: self
                .cas
                .iter()
                .map(|c| {
                    Arc::new(api::CaCertificate {
                        id: c.id.clone(),
                        name: c.name.clone(),
                        pem: c.pem.clone(),
                    })
                })
                .collect(),
            conf_dir: self.dir.to_path_buf(),
            plugin_credentials,
            instance_id: String::new(),
            route_id: None,
            service_id: None,
            files: self.file_log.clone(),
            warnings: Default::default(),
        };
        let mut build_ctx = build_ctx;
        let mut plugins = Vec::new();
        let mut seen_scopes: Vec<(String, Scope, Loc)> = Vec::new();
        for (p, scope) in std::mem::take(&mut self.plugin_raws) {
            // A disabled instance is still validated (as Kong does): enabling it later must not
            // surface errors that were there all along.
            let Some(factory) = registry.factory(&p.name.v) else {
                let message = if crate::config::kong::is_kong_plugin(&p.name.v) {
                    crate::config::kong::plugin_not_provided(&p.name.v)
                } else {
                    let known: Vec<&str> = registry.names().collect();
                    format!(
                        "unknown plugin {:?} (available: {})",
                        p.name.v,
                        known.join(", ")
                    )
                };
                d.err(&p.name.loc, &p.name.path, message);
                continue;
            };
            if !p.enabled {
                // Validated below, never applied, and no competitor for its scope.
            } else if let Some((_, _, at)) = seen_scopes
                .iter()
                .find(|(n, s, _)| n == &p.name.v && s == &scope)
            {
                d.err(
                    &p.loc,
                    &p.path,
                    format!(
                        "plugin {:?} is configured twice for the same scope (first at {at}); one instance per name applies",
                        p.name.v
                    ),
                );
                continue;
            }
            if p.enabled {
                seen_scopes.push((p.name.v.clone(), scope.clone(), p.loc.clone()));
            }
            let config_json = p
                .config
                .as_ref()
                .map(|n| n.to_json())
                .unwrap_or(serde_json::Value::Null);
            // Files a plugin config names (`crl_file`) are watched for reloads too.
            collect_files(&config_json, self.dir, &mut self.files);
            build_ctx.instance_id = match &p.id {
                Some(id) => id.v.clone(),
                None => format!(
                    "{}:{}:{}:{}",
                    p.name.v,
                    scope.route.as_deref().unwrap_or(""),
                    scope.service.as_deref().unwrap_or(""),
                    scope.consumer.as_deref().unwrap_or("")
                ),
            };
            build_ctx.route_id = scope.route.clone();
            build_ctx.service_id = scope.service.clone();
            let built = factory.build(&config_json, &build_ctx);
            let warnings = build_ctx
                .warnings
                .get_mut()
                .map(std::mem::take)
                .unwrap_or_default();
            for w in warnings {
                let (loc, path) = match &p.config {
                    Some(node) if !w.path.is_empty() => {
                        locate_node_error(node, &format!("{}.config", p.path), &w)
                    }
                    Some(node) => (node.loc.clone(), format!("{}.config", p.path)),
                    None => (p.loc.clone(), format!("{}.config", p.path)),
                };
                d.warn(&loc, &path, w.message);
            }
            match built {
                Ok(_) if !p.enabled => {}
                Ok(plugin) => plugins.push(PluginInstance {
                    name: p.name.v.clone(),
                    scope,
                    plugin,
                }),
                Err(errs) => {
                    for e in errs {
                        let (loc, path) = match &p.config {
                            Some(node) => {
                                locate_node_error(node, &format!("{}.config", p.path), &e)
                            }
                            None => (p.loc.clone(), format!("{}.config", p.path)),
                        };
                        d.err(&loc, &path, e.message);
                    }
                }
            }
        }
        plugins
    }
}
