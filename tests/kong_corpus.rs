//! `portcullis check` on a corpus of Kong declarative files (tests/kong-corpus/, its README says
//! which kind of real file each one models): every file Kong 3.x loads and that uses only what
//! Portcullis provides loads unchanged; shapes Kong itself rejects fail with the exact error;
//! files that use Kong plugins not provided yet fail only with "Portcullis does not provide".
//!
//! Each file is checked alone, as `conf/kong.yml`. Directives in its leading comments:
//! `# expect: ok`, `# expect-warning: <text of a warning line>`, `# expect-error: <whole line>`.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn corpus(sub: &str) -> Vec<PathBuf> {
    let dir = repo_root().join("tests/kong-corpus").join(sub);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    files
}

fn directives(text: &str, key: &str) -> Vec<String> {
    let prefix = format!("# {key}: ");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

fn check_file(path: &Path) -> (String, CheckOutput) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let out = check(&ConfDir::new().with("kong.yml", &text));
    assert!(
        !out.all().contains("panicked"),
        "{}:\n{}",
        path.display(),
        out.all()
    );
    (text, out)
}

/// Located error lines (warnings and the summary excluded).
fn errors(out: &CheckOutput) -> Vec<String> {
    out.lines_starting("conf/kong.yml:")
        .into_iter()
        .filter(|l| !l.contains(": warning: "))
        .collect()
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn every_corpus_file_kong_loads_loads_unchanged() {
    let files = corpus("");
    assert!(files.len() >= 20, "the corpus has {} files", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let (text, out) = check_file(f);
        assert_eq!(
            directives(&text, "expect"),
            ["ok"],
            "{} needs `# expect: ok` (rejected shapes go in rejected/)",
            name(f)
        );
        if out.code != 0 {
            failures.push(format!("{}: exit {}\n{}", name(f), out.code, out.all()));
            continue;
        }
        for w in directives(&text, "expect-warning") {
            if !out.all().lines().any(|l| l.contains(&w)) {
                failures.push(format!(
                    "{}: no warning containing {w:?}\n{}",
                    name(f),
                    out.all()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn shapes_kong_rejects_fail_with_the_exact_error() {
    let files = corpus("rejected");
    assert!(!files.is_empty());
    for f in &files {
        let (text, out) = check_file(f);
        let mut want = directives(&text, "expect-error");
        assert!(!want.is_empty(), "{} has no `# expect-error:`", name(f));
        assert_eq!(out.code, 1, "{}:\n{}", name(f), out.all());
        let mut got = errors(&out);
        want.sort();
        got.sort();
        assert_eq!(got, want, "{}:\n{}", name(f), out.all());
    }
}

/// Files that need Kong plugins Portcullis does not provide yet: they fail, and only because of
/// those plugins and their credentials. When a file passes, its plugins have landed: move it up
/// into tests/kong-corpus/ with `# expect: ok`.
#[test]
fn files_with_plugins_not_provided_fail_only_on_those_plugins() {
    let files = corpus("pending-plugins");
    assert!(!files.is_empty());
    for f in &files {
        let (_, out) = check_file(f);
        assert_ne!(
            out.code,
            0,
            "{} loads now: move it into tests/kong-corpus/ with `# expect: ok`\n{}",
            name(f),
            out.all()
        );
        let errs = errors(&out);
        assert!(!errs.is_empty(), "{}:\n{}", name(f), out.all());
        for e in &errs {
            assert!(
                e.contains("is a Kong plugin that Portcullis does not provide; remove it or write it as a Rust plugin")
                    || e.contains("which Portcullis does not provide; remove them or write the plugin as a Rust plugin"),
                "{}: an error other than a plugin not provided:\n{e}\n\n{}",
                name(f),
                out.all()
            );
        }
    }
}

/// The migration of 2.x regex paths is not just a warning: the migrated path routes as a regex,
/// and a plain 2.x path stays a prefix.
#[test]
fn a_migrated_2x_regex_path_routes_as_a_regex() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        "_format_version: \"2.1\"\nservices:\n- name: s\n  url: {}\n  routes:\n  - name: by-id\n    paths: ['/users/\\d+$']\n  - name: plain\n    paths: [/plain.v1]\n",
        echo.url()
    ));
    let hit = Curl::at("http", "h.test", gw.http_port(), "/users/42").run();
    assert_eq!(hit.status, 200, "{}", hit.text());
    let miss = Curl::at("http", "h.test", gw.http_port(), "/users/abc").run();
    assert_eq!(miss.status, 404, "{}", miss.text());
    // `.` is no regex character in Kong 2.x: `/plain.v1` is a prefix, `/plainXv1` does not match.
    let prefix = Curl::at("http", "h.test", gw.http_port(), "/plain.v1/x").run();
    assert_eq!(prefix.status, 200, "{}", prefix.text());
    let not = Curl::at("http", "h.test", gw.http_port(), "/plainXv1").run();
    assert_eq!(not.status, 404, "{}", not.text());
    assert!(
        gw.log().contains("read as `~/users/\\d+$`"),
        "the migration is logged at load:\n{}",
        gw.log()
    );
}

/// Protocol names in messages are Kong's (`tcp`), never the internal enum's (`Tcp`).
#[test]
fn messages_spell_protocols_as_kong_does() {
    let out = check(&ConfDir::new().with(
        "kong.yml",
        "services:\n- name: db\n  url: tcp://db.internal:5432\n  routes:\n  - name: r\n    paths: [/db]\n",
    ));
    let errs = errors(&out);
    assert_eq!(errs.len(), 1, "{}", out.all());
    assert!(
        errs[0].starts_with(
            "conf/kong.yml:5:5: services[0].routes[0]: service \"db\" has protocol tcp, which only "
        ),
        "{}",
        out.all()
    );
    assert!(!out.all().contains("Tcp"), "{}", out.all());
}
