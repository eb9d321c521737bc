//! Fuzzes the config loader: arbitrary bytes as the one conf file of a directory, through the
//! same YAML parse → raw entities → validation pipeline that `portcullis check` and reloads use
//! (`config::load_texts`, which `config::load` calls once it has read the files).
//!
//! Checked, beyond "never panics" (no `unwrap`/`expect` may be reachable from config input):
//! - non-UTF-8 input is refused like `load` refuses it, before parsing;
//! - a refused config reports at least one error, and every diagnostic formats as
//!   `file:line:col: ...` naming the conf file;
//! - an accepted config compiles into a router (what a reload does next).
//!
//! Relative file references inside the YAML (certificates, keys) resolve against a directory
//! that does not exist, so they fail as "cannot read"; absolute ones are read, as `check` would.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use portcullis::config::load_texts;
use portcullis::routing::Router;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = Path::new("/nonexistent/portcullis-fuzz");
    let sources = [(dir.join("gateway.yaml"), text.to_string())];
    match load_texts(dir, &sources, portcullis::plugin::registry()) {
        Ok((config, warnings)) => {
            for w in &warnings {
                check_diag(&w.to_string());
            }
            let _ = Router::new(&config.routes);
        }
        Err(e) => {
            assert!(!e.diags.errors.is_empty(), "refused without an error");
            for diag in e.diags.errors.iter().chain(&e.diags.warnings) {
                check_diag(&diag.to_string());
            }
        }
    }
});

/// Diagnostics point at a file with a line and column. Errors about other files (a referenced
/// certificate, say) still name a path, so only the `:line:col` shape is required of those.
fn check_diag(line: &str) {
    let mut parts = line.splitn(4, ':');
    let (Some(file), Some(l), Some(c)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("diagnostic without file:line:col: {line:?}");
    };
    assert!(!file.is_empty(), "diagnostic without a file: {line:?}");
    assert!(
        l.parse::<u32>().is_ok() && c.parse::<u32>().is_ok(),
        "diagnostic without line:col: {line:?}"
    );
}
