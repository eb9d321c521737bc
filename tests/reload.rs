//! Live reload under load (issue 7, SPEC §7): persistent clients keep sending requests while the
//! conf is rewritten dozens of times (routes added and removed, a certificate replaced for the
//! same SNI, an upstream's targets changed, an invalid write, SIGHUP); Kubernetes' `..data`
//! symlink swaps; files that appear after the YAML referencing them; memory across reloads.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::metrics as prom;
use common::*;

/// How soon a change on disk must be visible to clients (the contract of this issue).
const VISIBLE: Duration = Duration::from_secs(2);

fn reloads(gw: &Gateway, result: &str) -> f64 {
    prom::value(
        &gw.metrics(),
        "portcullis_config_reloads_total",
        &[("result", result)],
    )
    .unwrap_or(0.0)
}

/// The access log of thousands of requests would drown the reload messages a failure needs.
fn quiet(b: GatewayBuilder) -> GatewayBuilder {
    b.env("PORTCULLIS_LOG", "info,access=off")
}

/// Polls `probe` until it holds; returns how long that took, or panics after `limit`.
fn within(what: &str, limit: Duration, mut probe: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if probe() {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            panic!("{what}: not visible within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET path` on the plain proxy port with a fresh connection: (status, echo `server` or "").
fn probe(gw: &Gateway, path: &str) -> (u16, String) {
    match http_get(gw.http_port(), path) {
        Ok((status, body)) => {
            let server = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["server"].as_str().map(str::to_string))
                .unwrap_or_default();
            (status, server)
        }
        Err(_) => (0, String::new()),
    }
}

fn served_serial(gw: &Gateway, sni: &str) -> String {
    TlsProbe::new(gw.https_port())
        .sni(sni)
        .run()
        .map(|s| s.serial)
        .unwrap_or_default()
}

/// Atomic replace, as editors and config-management tools do (a name starting with `.` is
/// ignored by the gateway while it is being written).
fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("conf")
    ));
    std::fs::write(&tmp, contents).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename over the conf file");
}

// ---------------------------------------------------------------------------------------------
// Load: persistent connections that must never see an error.

#[derive(Debug, Default)]
struct ClientReport {
    name: String,
    ok: usize,
    failures: Vec<String>,
    servers: BTreeMap<String, usize>,
    connections: usize,
}

struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<ClientReport>>,
}

impl Load {
    /// `plain` HTTP/1.1 keep-alive clients and `tls` HTTPS ones (SNI `sni`), each on one
    /// connection for the whole test, requesting `path` back to back.
    fn start(gw: &Gateway, plain: usize, tls: usize, sni: &str, path: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for i in 0..plain + tls {
            let is_tls = i >= plain;
            let port = if is_tls {
                gw.https_port()
            } else {
                gw.http_port()
            };
            let (sni, path, stop) = (sni.to_string(), path.to_string(), stop.clone());
            let name = format!("{}-{i}", if is_tls { "https" } else { "http" });
            clients.push(std::thread::spawn(move || {
                let connect = || {
                    if is_tls {
                        KeepAlive::connect_tls(port, &sni)
                    } else {
                        KeepAlive::connect(port, "load.test")
                    }
                };
                let mut report = ClientReport {
                    name,
                    ..ClientReport::default()
                };
                let mut conn = None;
                while !stop.load(Ordering::Relaxed) {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match connect() {
                            Ok(c) => {
                                report.connections += 1;
                                conn.insert(c)
                            }
                            Err(e) => {
                                report.failures.push(format!("connect: {e}"));
                                std::thread::sleep(Duration::from_millis(50));
                                continue;
                            }
                        },
                    };
                    match c.get(&path, &[]) {
                        Ok(r) if r.status == 200 => {
                            report.ok += 1;
                            let server = serde_json::from_slice::<serde_json::Value>(&r.body)
                                .ok()
                                .and_then(|v| v["server"].as_str().map(str::to_string))
                                .unwrap_or_default();
                            *report.servers.entry(server).or_default() += 1;
                            if c.is_closed() {
                                report.failures.push(format!(
                                    "server closed the keep-alive connection after {} requests",
                                    c.answered()
                                ));
                                conn = None;
                            }
                        }
                        Ok(r) => {
                            report
                                .failures
                                .push(format!("status {}: {}", r.status, r.text()));
                            if c.is_closed() {
                                conn = None;
                            }
                        }
                        Err(e) => {
                            report.failures.push(format!("request: {e}"));
                            conn = None;
                        }
                    }
                }
                report
            }));
        }
        Load { stop, clients }
    }

    fn finish(self) -> Vec<ClientReport> {
        self.stop.store(true, Ordering::SeqCst);
        self.clients
            .into_iter()
            .map(|h| h.join().expect("load client thread panicked"))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The main scenario.

/// What the test's `gateway.yaml` says at one moment.
struct State {
    /// Ports of the upstream's targets.
    targets: Vec<u16>,
    /// Extra routes `/r{n}` (on the same service).
    routes: Vec<u32>,
    generation: u32,
}

impl State {
    fn yaml(&self) -> String {
        let targets: String = self
            .targets
            .iter()
            .map(|p| format!("  - target: 127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join("\n");
        let routes: String = self
            .routes
            .iter()
            .map(|n| format!("  - name: dyn-{n}\n    paths: [/r{n}]\n    strip_path: false"))
            .collect::<Vec<_>>()
            .join("\n");
        let gen = self.generation;
        [
            format!("# generation {gen}"),
            "certificates:".into(),
            "- name: site".into(),
            "  cert_file: certs/site.crt".into(),
            "  key_file: certs/site.key".into(),
            "  snis: [site.test]".into(),
            "upstreams:".into(),
            "- name: pool".into(),
            "  targets:".into(),
            targets,
            "services:".into(),
            "- name: main".into(),
            "  url: http://pool".into(),
            "  routes:".into(),
            "  - name: stable".into(),
            "    paths: [/stable]".into(),
            "    strip_path: false".into(),
            routes,
        ]
        .join("\n")
    }
}

#[derive(Default)]
struct Latencies(BTreeMap<&'static str, Vec<Duration>>);

impl Latencies {
    fn add(&mut self, kind: &'static str, d: Duration) {
        self.0.entry(kind).or_default().push(d);
    }
    fn summary(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| {
                let max = v.iter().max().copied().unwrap_or_default();
                let avg = v.iter().sum::<Duration>() / v.len().max(1) as u32;
                format!("{k}: n={} avg={avg:?} max={max:?}", v.len())
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[test]
fn rewrites_under_keepalive_load_lose_no_request() {
    let pki = Pki::new();
    let echoes: Vec<HttpEcho> = ["a", "b", "c"].iter().map(|n| HttpEcho::start(n)).collect();
    let first = pki.server_leaf("site-0", &["DNS:site.test"]);
    let mut state = State {
        targets: vec![echoes[0].port()],
        routes: Vec::new(),
        generation: 0,
    };
    let gw = quiet(Gateway::builder())
        .file("certs/site.crt", &first.chain_pem)
        .file("certs/site.key", &first.key_pem)
        .file("gateway.yaml", state.yaml())
        .start();
    let conf = gw.conf().dir();
    let yaml_path = conf.join("gateway.yaml");
    assert_eq!(probe(&gw, "/stable"), (200, "a".to_string()));
    assert_eq!(served_serial(&gw, "site.test"), first.serial);
    let errors_at_start = reloads(&gw, "error");
    let success_at_start = reloads(&gw, "success");

    let load = Load::start(&gw, 3, 2, "site.test", "/stable");
    let started = Instant::now();
    let mut lat = Latencies::default();
    let mut current_cert = first.clone();
    let mut target_idx = 0usize;
    let changes = 56u32;
    for i in 0..changes {
        state.generation = i + 1;
        let kind = match i % 4 {
            0 => {
                state.routes.push(i);
                "route added"
            }
            1 => {
                state.routes.retain(|n| *n != i - 1);
                "route removed"
            }
            2 => {
                let leaf = pki.server_leaf(&format!("site-{i}"), &["DNS:site.test"]);
                // In place, two writes in a row, as `cp new.crt site.crt; cp new.key site.key`:
                // the debounce must not catch the mismatched pair in between.
                std::fs::write(conf.join("certs/site.crt"), &leaf.chain_pem).expect("write crt");
                std::fs::write(conf.join("certs/site.key"), &leaf.key_pem).expect("write key");
                current_cert = leaf;
                "certificate replaced"
            }
            _ => {
                target_idx = (target_idx + 1) % echoes.len();
                state.targets = vec![echoes[target_idx].port()];
                "targets changed"
            }
        };
        if i % 4 != 2 {
            // Alternate between in-place writes and atomic renames.
            if i % 2 == 0 {
                std::fs::write(&yaml_path, state.yaml()).expect("write gateway.yaml");
            } else {
                write_atomic(&yaml_path, &state.yaml());
            }
        }
        let what = format!("change {i} ({kind})");
        let took = match i % 4 {
            0 => within(&what, VISIBLE, || probe(&gw, &format!("/r{i}")).0 == 200),
            1 => within(&what, VISIBLE, || {
                probe(&gw, &format!("/r{}", i - 1)).0 == 404
            }),
            2 => within(&what, VISIBLE, || {
                served_serial(&gw, "site.test") == current_cert.serial
            }),
            _ => {
                let want = echoes[target_idx].name().to_string();
                within(&what, VISIBLE, || {
                    probe(&gw, "/stable") == (200, want.clone())
                })
            }
        };
        lat.add(kind, took);

        if i == 27 {
            // An invalid write halfway: the running configuration stays, the error is counted
            // and logged with its location.
            let hash = gw.status()["config_hash"].as_str().map(str::to_string);
            let errors = reloads(&gw, "error");
            std::fs::write(
                &yaml_path,
                state.yaml() + "\n  - name: broken\n    paths: [\"~/(unclosed\"]\n",
            )
            .expect("write invalid gateway.yaml");
            let took = within("error counter after an invalid write", VISIBLE, || {
                reloads(&gw, "error") >= errors + 1.0
            });
            lat.add("invalid write rejected", took);
            assert_eq!(
                reloads(&gw, "error"),
                errors + 1.0,
                "one attempt, one error"
            );
            assert_eq!(
                gw.status()["config_hash"].as_str().map(str::to_string),
                hash,
                "an invalid configuration must not be applied"
            );
            assert_eq!(probe(&gw, "/stable").0, 200);
            assert!(
                gw.wait_for_log("gateway.yaml:", Duration::from_secs(2)),
                "the rejected configuration's errors name the file"
            );
            // Repair it (the next loop iteration's write would too; do it now so the next
            // change is measured on its own).
            let success = reloads(&gw, "success");
            write_atomic(&yaml_path, &state.yaml());
            within("the repaired configuration", VISIBLE, || {
                reloads(&gw, "success") > success
            });
        }
    }

    // SIGHUP reloads, counted once, with nothing changed on disk.
    let success = reloads(&gw, "success");
    gw.signal("HUP");
    let took = within("SIGHUP reload", VISIBLE, || {
        reloads(&gw, "success") >= success + 1.0
    });
    lat.add("SIGHUP", took);

    let elapsed = started.elapsed();
    let reports = load.finish();
    let total: usize = reports.iter().map(|r| r.ok).sum();
    let mut servers: BTreeMap<String, usize> = BTreeMap::new();
    for r in &reports {
        for (s, n) in &r.servers {
            *servers.entry(s.clone()).or_default() += n;
        }
    }
    eprintln!(
        "{changes} changes in {elapsed:?}; {total} requests on {} persistent connections; by upstream {servers:?}\nvisible after: {}",
        reports.len(),
        lat.summary()
    );
    for r in &reports {
        assert!(
            r.failures.is_empty(),
            "client {} had {} failed requests (of {}): {:?}",
            r.name,
            r.failures.len(),
            r.ok + r.failures.len(),
            &r.failures[..r.failures.len().min(5)]
        );
        assert_eq!(r.connections, 1, "client {} had to reconnect", r.name);
        assert!(r.ok > 50, "client {} barely ran: {} requests", r.name, r.ok);
    }
    assert!(
        servers.len() == 3,
        "the load saw every target the upstream pointed to: {servers:?}"
    );
    assert_eq!(
        reloads(&gw, "error"),
        errors_at_start + 1.0,
        "only the deliberately invalid write may fail (a half-written pair of files must be retried, not rejected)"
    );
    assert!(reloads(&gw, "success") >= success_at_start + f64::from(changes) + 2.0);
}

// ---------------------------------------------------------------------------------------------
// Kubernetes ConfigMap/Secret volumes.

/// A directory laid out and updated the way the kubelet's atomic writer does it: the payload
/// lives in `..<timestamp>/`, `..data` links to it, and every top-level name is a link
/// `name -> ..data/name`. An update writes a new timestamped dir, points a temporary link at it,
/// renames that link over `..data` (the one atomic step), then removes the old dir.
struct K8sVolume {
    dir: std::path::PathBuf,
    generation: u32,
    current: Option<std::path::PathBuf>,
}

impl K8sVolume {
    fn new(dir: &Path) -> K8sVolume {
        K8sVolume {
            dir: dir.to_path_buf(),
            generation: 0,
            current: None,
        }
    }

    fn publish(&mut self, files: &[(&str, &str)]) {
        use std::os::unix::fs::symlink;
        self.generation += 1;
        let ts = format!(
            "..2026_01_01_00_00_{:02}.{:09}",
            self.generation % 60,
            self.generation
        );
        let payload = self.dir.join(&ts);
        for (rel, contents) in files {
            let p = payload.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("payload dir");
            std::fs::write(&p, contents).expect("payload file");
        }
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink(&ts, &tmp).expect("temp ..data link");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        let mut top: Vec<&str> = files
            .iter()
            .map(|(rel, _)| rel.split('/').next().unwrap_or(rel))
            .collect();
        top.dedup();
        for name in &top {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{name}"), &link).expect("user-visible link");
            }
        }
        if let Some(old) = self.current.replace(payload) {
            std::fs::remove_dir_all(old).expect("remove the old payload");
        }
    }
}

#[test]
fn kubernetes_data_symlink_swaps_are_picked_up() {
    let pki = Pki::new();
    let echo = HttpEcho::start("k8s");
    let builder = quiet(Gateway::builder()).no_settings();
    let ports = builder.ports();
    let settings = ports.settings_yaml(false);
    let yaml = |routes: &[&str]| {
        let mut y = format!(
            "certificates:\n- name: site\n  cert_file: certs/tls.crt\n  key_file: certs/tls.key\n  snis: [site.test]\nservices:\n- name: app\n  url: {}\n  routes:\n  - name: stable\n    paths: [/stable]\n    strip_path: false\n",
            echo.url()
        );
        for r in routes {
            y.push_str(&format!(
                "  - name: {r}\n    paths: [/{r}]\n    strip_path: false\n"
            ));
        }
        y
    };
    let mut volume = K8sVolume::new(&builder.conf().dir());
    let leaf = pki.server_leaf("k8s-0", &["DNS:site.test"]);
    volume.publish(&[
        ("00-settings.yaml", &settings),
        ("gateway.yaml", &yaml(&["v1"])),
        ("certs/tls.crt", &leaf.chain_pem),
        ("certs/tls.key", &leaf.key_pem),
    ]);
    let gw = builder.start();
    assert_eq!(probe(&gw, "/v1").0, 200);
    assert_eq!(served_serial(&gw, "site.test"), leaf.serial);
    let errors = reloads(&gw, "error");
    let load = Load::start(&gw, 2, 1, "site.test", "/stable");

    let mut lat = Latencies::default();
    for i in 1..=6u32 {
        // Odd generations rotate the Secret's certificate; even ones change the ConfigMap's
        // routes (and keep the certificate), as separate rollouts would.
        let leaf_i = pki.server_leaf(&format!("k8s-{i}"), &["DNS:site.test"]);
        let (routes, rotate) = if i % 2 == 1 {
            (vec![format!("v{i}")], true)
        } else {
            (vec![format!("v{}", i - 1), format!("v{i}")], false)
        };
        let routes: Vec<&str> = routes.iter().map(String::as_str).collect();
        let want_serial = if rotate {
            leaf_i.serial.clone()
        } else {
            served_serial(&gw, "site.test")
        };
        let (crt, key) = if rotate {
            (leaf_i.chain_pem.clone(), leaf_i.key_pem.clone())
        } else {
            let cur = std::fs::read_to_string(gw.conf().dir().join("certs/tls.crt"))
                .expect("current cert");
            let k = std::fs::read_to_string(gw.conf().dir().join("certs/tls.key"))
                .expect("current key");
            (cur, k)
        };
        volume.publish(&[
            ("00-settings.yaml", &settings),
            ("gateway.yaml", &yaml(&routes)),
            ("certs/tls.crt", &crt),
            ("certs/tls.key", &key),
        ]);
        let last = routes[routes.len() - 1];
        let took = within(&format!("..data swap {i}"), VISIBLE, || {
            probe(&gw, &format!("/{last}")).0 == 200
                && served_serial(&gw, "site.test") == want_serial
        });
        lat.add(
            if rotate {
                "secret rotated"
            } else {
                "routes changed"
            },
            took,
        );
        if rotate {
            assert_eq!(
                probe(&gw, &format!("/v{}", i - 1)).0,
                404,
                "route removed by swap {i}"
            );
        }
    }
    let reports = load.finish();
    eprintln!("..data swaps visible after: {}", lat.summary());
    for r in &reports {
        assert!(
            r.failures.is_empty() && r.connections == 1,
            "client {}: {} reconnects, failures {:?}",
            r.name,
            r.connections - 1,
            &r.failures[..r.failures.len().min(5)]
        );
    }
    assert_eq!(
        reloads(&gw, "error"),
        errors,
        "an atomic swap never shows a half-written state"
    );
}

#[test]
fn a_file_referenced_before_it_exists_is_applied_when_it_appears() {
    // An operator edits gateway.yaml first, then copies the new certificate into certs/ (or the
    // ConfigMap and the Secret volume update a few seconds apart).
    let pki = Pki::new();
    let echo = HttpEcho::start("late");
    let site = pki.server_leaf("late-site", &["DNS:site.test"]);
    let other = pki.server_leaf("late-other", &["DNS:other.test"]);
    let base = format!(
        "certificates:\n- name: site\n  cert_file: certs/site.crt\n  key_file: certs/site.key\n  snis: [site.test]\nservices:\n- name: app\n  url: {}\n  routes:\n  - name: all\n    paths: [/]\n",
        echo.url()
    );
    let gw = quiet(Gateway::builder())
        .file("certs/site.crt", &site.chain_pem)
        .file("certs/site.key", &site.key_pem)
        .file("gateway.yaml", &base)
        .start();
    let errors = reloads(&gw, "error");
    // The same document with a second certificate whose files are not there yet.
    let with_other = base.replace(
        "services:",
        "- name: other\n  cert_file: certs/new/other.crt\n  key_file: certs/new/other.key\n  snis: [other.test]\nservices:",
    );
    gw.conf().write("gateway.yaml", &with_other);
    within("the error for the missing file", VISIBLE, || {
        reloads(&gw, "error") >= errors + 1.0
    });
    assert_eq!(
        served_serial(&gw, "site.test"),
        site.serial,
        "old config kept"
    );

    gw.conf().write("certs/new/other.key", &other.key_pem);
    gw.conf().write("certs/new/other.crt", &other.chain_pem);
    let took = within("the configuration once its files exist", VISIBLE, || {
        served_serial(&gw, "other.test") == other.serial
    });
    eprintln!("applied {took:?} after the referenced files appeared");
}

#[test]
fn a_steady_trickle_of_writes_does_not_postpone_a_reload() {
    // Something rewrites a referenced file every 50 ms (a CRL updater gone wild, a sync loop):
    // the debounce must not hold an unrelated change back for as long as that goes on.
    let pki = Pki::new();
    let echo = HttpEcho::start("trickle");
    let site = pki.server_leaf("trickle-site", &["DNS:site.test"]);
    let yaml = |route: &str| {
        format!(
            "certificates:\n- name: site\n  cert_file: certs/site.crt\n  key_file: certs/site.key\n  snis: [site.test]\nservices:\n- name: app\n  url: {}\n  routes:\n  - name: r\n    paths: [/{route}]\n",
            echo.url()
        )
    };
    let gw = quiet(Gateway::builder())
        .file("certs/site.crt", &site.chain_pem)
        .file("certs/site.key", &site.key_pem)
        .file("gateway.yaml", yaml("before"))
        .start();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, path, pem) = (
            stop.clone(),
            gw.conf().dir().join("certs/site.crt"),
            site.chain_pem.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::write(&path, &pem);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    gw.conf().write("gateway.yaml", yaml("after"));
    let took = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        within(
            "a change during a steady trickle of writes",
            VISIBLE,
            || probe(&gw, "/after").0 == 200,
        )
    }));
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer thread");
    match took {
        Ok(took) => eprintln!("visible after {took:?} despite writes every 50 ms"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

// ---------------------------------------------------------------------------------------------
// Memory across reloads.

/// `VmRSS` (KiB) and `Threads` of a process, from /proc.
fn proc_status(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("Threads:"))
}

fn wait_log_count(gw: &Gateway, needle: &str, count: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while gw.log().matches(needle).count() < count {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// A large configuration: `services` services of `routes_per` routes each, `certs` certificates
/// from files, and upstreams with active health checks whose weights change with `variant`
/// (so every reload rebuilds balancers and their probe threads).
fn large_yaml(
    services: usize,
    routes_per: usize,
    certs: usize,
    echo: &HttpEcho,
    variant: u32,
) -> String {
    let mut y = String::with_capacity(services * routes_per * 100);
    y.push_str(&format!("# variant {variant}\ncertificates:\n"));
    for c in 0..certs {
        y.push_str(&format!(
            "- name: cert-{c}\n  cert_file: certs/c{c}.crt\n  key_file: certs/c{c}.key\n  snis: [c{c}.big.test]\n"
        ));
    }
    y.push_str("upstreams:\n");
    for s in 0..services {
        y.push_str(&format!(
            "- name: pool-{s}\n  healthchecks:\n    active:\n      type: tcp\n      healthy:\n        interval: 1\n      unhealthy:\n        interval: 1\n  targets:\n  - target: {}\n    weight: {}\n",
            echo.addr(),
            100 + variant % 2
        ));
    }
    y.push_str("services:\n");
    for s in 0..services {
        y.push_str(&format!(
            "- name: svc-{s}\n  url: http://pool-{s}\n  routes:\n"
        ));
        for r in 0..routes_per {
            // The path changes with the variant so the router is rebuilt, not just re-hashed.
            y.push_str(&format!(
                "  - name: r-{s}-{r}\n    paths: [/s{s}/r{r}/v{}]\n    hosts: [h{r}.big.test]\n",
                variant % 2
            ));
        }
    }
    y
}

#[test]
fn rss_stays_bounded_across_fifty_reloads_of_a_large_config() {
    let pki = Pki::new();
    let echo = HttpEcho::start("big");
    let (services, routes_per, certs) = (10, 100, 100);
    let mut builder = quiet(Gateway::builder());
    for c in 0..certs {
        let leaf = pki.server_leaf(&format!("big-{c}"), &[&format!("DNS:c{c}.big.test")]);
        builder = builder
            .file(&format!("certs/c{c}.crt"), &leaf.chain_pem)
            .file(&format!("certs/c{c}.key"), &leaf.key_pem);
    }
    let gw = builder
        .file(
            "gateway.yaml",
            large_yaml(services, routes_per, certs, &echo, 0),
        )
        .start();
    let pid = gw.pid().expect("gateway pid");
    let errors = reloads(&gw, "error");
    let hash = || gw.status()["config_hash"].as_str().map(str::to_string);

    let reload_to = |variant: u32| -> Duration {
        let before = hash();
        gw.conf().write(
            "gateway.yaml",
            large_yaml(services, routes_per, certs, &echo, variant),
        );
        let start = Instant::now();
        gw.signal("HUP");
        within(
            &format!("reload {variant}"),
            Duration::from_secs(20),
            || hash() != before,
        );
        start.elapsed()
    };
    // Warm up: allocator arenas, metric series, connection pools.
    for v in 1..=5 {
        reload_to(v);
    }
    let (rss_before, threads_before) = proc_status(pid);
    let mut times = Vec::new();
    for v in 6..56 {
        times.push(reload_to(v));
    }
    // Old runtimes go away when their last request finishes; probe threads notice within one
    // interval. Give them that long, then measure.
    let mut after = proc_status(pid);
    let settle = Instant::now() + Duration::from_secs(3);
    while after.1 > threads_before + 2 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(100));
        after = proc_status(pid);
    }
    let (rss_after, threads_after) = after;
    times.sort();
    eprintln!(
        "{} routes, {certs} certificates, {services} upstreams: 50 reloads, time to visible median {:?} max {:?}; VmRSS {} KiB -> {} KiB ({:+} KiB); threads {} -> {}",
        services * routes_per,
        times[times.len() / 2],
        times[times.len() - 1],
        rss_before,
        rss_after,
        rss_after as i64 - rss_before as i64,
        threads_before,
        threads_after
    );
    assert_eq!(reloads(&gw, "error"), errors);

    // A write that lands while a reload of this large config is still reading must not be
    // mistaken for what that reload applied: it gets a reload of its own.
    let sighups = gw.log().matches("SIGHUP received").count();
    gw.conf().write(
        "gateway.yaml",
        large_yaml(services, routes_per, certs, &echo, 100),
    );
    gw.signal("HUP");
    assert!(
        wait_log_count(&gw, "SIGHUP received", sighups + 1, Duration::from_secs(5)),
        "SIGHUP not handled"
    );
    gw.conf().write(
        "gateway.yaml",
        large_yaml(services, routes_per, certs, &echo, 100)
            + &format!(
                "- name: late\n  url: {}\n  routes:\n  - name: late\n    paths: [/late]\n",
                echo.url()
            ),
    );
    within(
        "a write made during a reload",
        Duration::from_secs(5),
        || probe(&gw, "/late").0 == 200,
    );

    // Generous: one extra copy of the configuration may be alive during a swap; a leak of one
    // runtime per reload would be 50 copies.
    assert!(
        rss_after <= rss_before + rss_before / 2 + 32 * 1024,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB over 50 reloads"
    );
    assert!(
        threads_after <= threads_before + 2,
        "threads grew from {threads_before} to {threads_after}: replaced balancers' probe threads must stop"
    );
}

// ---------------------------------------------------------------------------------------------
// A reload that used to panic, and what /status and /metrics say about reloads.

fn app_yaml(url: &str, route: &str, extra: &str) -> String {
    format!(
        "services:\n- name: app\n  url: {url}\n{extra}  routes:\n  - name: {route}\n    paths: [/]\n"
    )
}

#[test]
fn an_out_of_range_number_in_a_reload_keeps_the_old_config_and_the_watcher_alive() {
    let before = HttpEcho::start("before");
    let after = HttpEcho::start("after");
    let gw = quiet(Gateway::builder())
        .file("gateway.yaml", app_yaml(&before.url(), "all", ""))
        .start();
    let s = gw.status();
    assert_eq!(s["last_reload_error"], serde_json::Value::Null, "{s}");
    assert_eq!(
        s["conf_dir"],
        serde_json::Value::Null,
        "conf_dir shown by default: {s}"
    );
    let errors = reloads(&gw, "error");
    // `Duration::from_secs_f64` panicked on these and took the reload thread down with it.
    for bad in [".inf", "1e30", "-5", ".nan"] {
        let n = reloads(&gw, "error");
        gw.conf().write(
            "gateway.yaml",
            app_yaml(&after.url(), "all", &format!("  connect_timeout: {bad}\n")),
        );
        within("the refused reload", VISIBLE, || reloads(&gw, "error") > n);
        assert_eq!(
            probe(&gw, "/"),
            (200, "before".into()),
            "old config kept ({bad})"
        );
    }
    assert!(reloads(&gw, "error") >= errors + 4.0);
    let log = gw.log();
    assert!(
        log.contains("gateway.yaml:4:20: services[0].connect_timeout"),
        "no located error in the log:\n{log}"
    );
    let s = gw.status();
    let last = &s["last_reload_error"];
    assert!(last["at"].is_string(), "{s}");
    assert!(last["message"].is_string(), "{s}");
    // Without `status_details` the unauthenticated listener does not repeat file names.
    assert!(!s.to_string().contains("gateway.yaml"), "{s}");

    gw.conf()
        .write("gateway.yaml", app_yaml(&after.url(), "all", ""));
    within("the good reload after the refused ones", VISIBLE, || {
        probe(&gw, "/") == (200, "after".into())
    });
    within("the error cleared from /status", VISIBLE, || {
        gw.status()["last_reload_error"].is_null()
    });
}

#[test]
fn status_details_show_the_conf_dir_and_the_reload_error_text() {
    let echo = HttpEcho::start("details");
    let b = quiet(Gateway::builder());
    let settings = b.ports().settings_yaml(false) + "  status_details: true\n";
    let gw = b
        .file(common::gateway::SETTINGS_FILE, settings)
        .file("gateway.yaml", app_yaml(&echo.url(), "all", ""))
        .no_settings()
        .start();
    let s = gw.status();
    assert!(s["conf_dir"].is_string(), "{s}");
    let n = reloads(&gw, "error");
    gw.conf().write(
        "gateway.yaml",
        app_yaml(&echo.url(), "all", "  read_timeout: -1\n"),
    );
    within("the refused reload", VISIBLE, || reloads(&gw, "error") > n);
    let s = gw.status();
    let message = s["last_reload_error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("gateway.yaml:4:17: services[0].read_timeout"),
        "{s}"
    );
}

#[test]
fn a_reload_removes_the_metric_series_of_deleted_routes() {
    let echo = HttpEcho::start("series");
    let gw = quiet(Gateway::builder())
        .file("gateway.yaml", app_yaml(&echo.url(), "old-route", ""))
        .start();
    assert_eq!(probe(&gw, "/").0, 200);
    let has = |route: &str| {
        let text = gw.metrics();
        prom::samples(&text, "portcullis_http_requests_total")
            .iter()
            .chain(prom::samples(&text, "portcullis_http_request_duration_seconds_count").iter())
            .any(|s| s.labels.get("route").map(String::as_str) == Some(route))
    };
    within("the series of the first route", VISIBLE, || {
        has("old-route")
    });
    let hash = gw.status()["config_hash"].clone();
    gw.conf()
        .write("gateway.yaml", app_yaml(&echo.url(), "new-route", ""));
    // No request while the reload happens: one still running on the old configuration would
    // count (and so export) the old route again when it ends.
    within("the reload", VISIBLE, || gw.status()["config_hash"] != hash);
    within("the series of the deleted route removed", VISIBLE, || {
        !has("old-route")
    });
    assert_eq!(probe(&gw, "/").0, 200);
    within("the renamed route's series", VISIBLE, || has("new-route"));
    assert!(!has("old-route"), "series of a deleted route came back");
}
