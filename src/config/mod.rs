//! Configuration: the conf directory read into YAML trees (`yaml`), converted into typed raw
//! entities (`raw`), validated and resolved into the immutable model (`model`, by `validate`).
//!
//! The pipeline never half-applies anything: `load` returns a whole `Config` or every error.

pub mod kong;
pub mod model;
pub mod raw;
pub mod validate;
pub mod yaml;

use portcullis_plugin_api as api;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use model::Config;
use yaml::Loc;

/// One problem, located: `file:line:col: entity.path: message`.
#[derive(Debug, Clone)]
pub struct Diag {
    pub loc: Loc,
    pub path: String,
    pub message: String,
    pub warning: bool,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let warn = if self.warning { "warning: " } else { "" };
        if self.path.is_empty() {
            write!(f, "{}: {warn}{}", self.loc, self.message)
        } else {
            write!(f, "{}: {}: {warn}{}", self.loc, self.path, self.message)
        }
    }
}

/// Errors and warnings collected over a whole load.
#[derive(Debug, Default)]
pub struct Diags {
    pub errors: Vec<Diag>,
    pub warnings: Vec<Diag>,
}

impl Diags {
    pub fn err(&mut self, loc: &Loc, path: &str, message: impl Into<String>) {
        self.errors.push(Diag::at(loc, path, message));
    }
    pub fn warn(&mut self, loc: &Loc, path: &str, message: impl Into<String>) {
        let mut w = Diag::at(loc, path, message);
        w.warning = true;
        self.warnings.push(w);
    }
}

/// A failed load: every error, plus the warnings seen on the way.
#[derive(Debug)]
pub struct LoadError {
    pub diags: Diags,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.diags.errors {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// The YAML files of a conf dir: every `*.yaml`/`*.yml` directly inside, lexical order, names
/// starting with `.` skipped (Kubernetes keeps `..data` and friends there).
pub fn conf_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        // Follow symlinks (ConfigMap mounts are links into ..data) but skip directories.
        if std::fs::metadata(entry.path())
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Display name of a file for diagnostics: relative to the current directory when possible,
/// so errors read `conf/gateway.yaml:14:7` as in the contract.
pub fn display_path(p: &Path) -> String {
    if let Ok(cwd) = std::env::current_dir() {
        if let Ok(rel) = p.strip_prefix(&cwd) {
            return rel.display().to_string();
        }
    }
    p.display().to_string()
}

/// Load and validate a conf directory into a whole configuration, or report every error.
pub fn load(dir: &Path, registry: &api::Registry) -> Result<(Arc<Config>, Vec<Diag>), LoadError> {
    let mut d = Diags::default();
    let dir_loc = Loc {
        file: Arc::from(display_path(dir)),
        line: 1,
        col: 1,
    };
    let files = match conf_files(dir) {
        Ok(f) => f,
        Err(e) => {
            d.err(&dir_loc, "", format!("cannot read conf directory: {e}"));
            return Err(LoadError { diags: d });
        }
    };
    if files.is_empty() {
        d.err(
            &dir_loc,
            "",
            "no *.yaml or *.yml file in the conf directory",
        );
        return Err(LoadError { diags: d });
    }
    let mut sources = Vec::new();
    for file in &files {
        let name: Arc<str> = Arc::from(display_path(file));
        let text = match std::fs::read(file) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => {
                    d.err(
                        &Loc {
                            file: name,
                            line: 1,
                            col: 1,
                        },
                        "",
                        "file is not UTF-8",
                    );
                    continue;
                }
            },
            Err(e) => {
                d.err(
                    &Loc {
                        file: name,
                        line: 1,
                        col: 1,
                    },
                    "",
                    format!("cannot read: {e}"),
                );
                continue;
            }
        };
        sources.push((file.clone(), text));
    }
    load_sources(dir, &sources, registry, d)
}

/// Parse, read and validate conf file texts already in memory, exactly as `load` does once it
/// has read the files of `dir` (file paths inside the texts still resolve against `dir`). Public
/// so the config fuzz target (fuzz/fuzz_targets/config.rs) drives the whole `portcullis check`
/// pipeline without a temp dir per input.
pub fn load_texts(
    dir: &Path,
    sources: &[(PathBuf, String)],
    registry: &api::Registry,
) -> Result<(Arc<Config>, Vec<Diag>), LoadError> {
    load_sources(dir, sources, registry, Diags::default())
}

fn load_sources(
    dir: &Path,
    sources: &[(PathBuf, String)],
    registry: &api::Registry,
    mut d: Diags,
) -> Result<(Arc<Config>, Vec<Diag>), LoadError> {
    let mut doc = raw::RawDoc::default();
    for (file, text) in sources {
        let name: Arc<str> = Arc::from(display_path(file));
        match yaml::parse(&name, text) {
            Ok(root) => {
                let mut file_doc = raw::RawDoc::default();
                raw::read_root(&root, &mut file_doc, registry, &mut d);
                merge(&mut doc, file_doc, &mut d);
            }
            Err((loc, msg)) => d.err(&loc, "", msg),
        }
    }
    let config = validate::validate(dir, doc, sources, registry, &mut d);
    match config {
        Some(c) if d.errors.is_empty() => Ok((Arc::new(c), d.warnings)),
        _ => Err(LoadError { diags: d }),
    }
}

fn merge(into: &mut raw::RawDoc, from: raw::RawDoc, d: &mut Diags) {
    for (section, loc) in &from.sections {
        if let Some((_, first)) = into.sections.iter().find(|(s, _)| s == section) {
            d.err(
                loc,
                section,
                format!("section `{section}` is already defined at {first}; define each settings section in one file only"),
            );
        }
    }
    into.sections.extend(from.sections);
    if from.format_version.is_some() {
        into.format_version = from.format_version;
    }
    if from.listeners.is_some() {
        into.listeners = from.listeners;
    }
    if from.tls.is_some() {
        into.tls = from.tls;
    }
    if from.server.is_some() {
        into.server = from.server;
    }
    into.certificates.extend(from.certificates);
    into.ca_certificates.extend(from.ca_certificates);
    into.services.extend(from.services);
    into.routes.extend(from.routes);
    into.upstreams.extend(from.upstreams);
    into.targets.extend(from.targets);
    into.consumers.extend(from.consumers);
    into.plugins.extend(from.plugins);
    into.acls.extend(from.acls);
    into.mtls_auth_credentials
        .extend(from.mtls_auth_credentials);
    into.plugin_credentials.extend(from.plugin_credentials);
    into.snis.extend(from.snis);
}

#[cfg(test)]
mod load_texts_tests {
    use super::*;

    #[test]
    fn in_memory_texts_validate_like_files_and_name_them_in_errors() {
        let dir = Path::new("/nonexistent");
        let ok = [(
            dir.join("a.yaml"),
            "_format_version: \"3.0\"\nservices:\n  - name: s\n    url: http://127.0.0.1:1\n    routes:\n      - name: r\n        paths: [/x]\n".to_string(),
        )];
        let (config, _) =
            load_texts(dir, &ok, crate::plugin::registry()).expect("valid config loads");
        assert_eq!(config.routes.len(), 1);

        let bad = [(dir.join("b.yaml"), "services: [: \n".to_string())];
        let err =
            load_texts(dir, &bad, crate::plugin::registry()).expect_err("broken YAML is refused");
        assert!(
            err.to_string().starts_with("/nonexistent/b.yaml:1:"),
            "{err}"
        );
    }
}
