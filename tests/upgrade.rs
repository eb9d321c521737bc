//! Lifecycle (issue 7, SPEC §7): Pingora's graceful upgrade (`portcullis run --upgrade`, then
//! SIGQUIT to the old process, listening sockets handed over `server.upgrade_sock`) under
//! continuous load, and SIGTERM draining within `server.graceful_shutdown_seconds`.

mod common;

use std::io::ErrorKind;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

/// `listeners` and `server` with the upgrade socket and pid file in `run_dir`.
fn settings(ports: &Ports, run_dir: &Path, drain_seconds: u64) -> String {
    format!(
        "listeners:\n  proxy:\n    - address: 127.0.0.1:{http}\n    - address: 127.0.0.1:{https}\n      tls: true\n  status:\n    address: 127.0.0.1:{status}\nserver:\n  threads: 2\n  graceful_shutdown_seconds: {drain_seconds}\n  upgrade_sock: {sock}\n  pid_file: {pid}\n",
        http = ports.http,
        https = ports.https,
        status = ports.status,
        sock = run_dir.join("upgrade.sock").display(),
        pid = run_dir.join("portcullis.pid").display(),
    )
}

fn app_yaml(pki_leaf: &Leaf, echo: &HttpEcho) -> String {
    format!(
        "certificates:\n- name: site\n  cert: |\n{}  key: |\n{}  snis: [site.test]\nservices:\n- name: app\n  url: {}\n  routes:\n  - name: app\n    paths: [/app]\n    strip_path: false\n",
        indent(&pki_leaf.chain_pem, 4),
        indent(&pki_leaf.key_pem, 4),
        echo.url()
    )
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Load with three kinds of clients.

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    /// Idle keep-alive connections the server closed (after `Connection: close`, or by closing
    /// an idle one, retried once on a new connection as RFC 9112 §9.3.1 lets a client do).
    keepalive_closed: AtomicUsize,
    /// Of those, how many were noticed as an error (EOF or reset) on the next request rather
    /// than announced with `Connection: close`.
    keepalive_races: Mutex<Vec<String>>,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, who: &str, what: String) {
        if let Ok(mut f) = self.failures.lock() {
            f.push(format!("{who}: {what}"));
        }
    }
}

fn kind_name(k: ErrorKind) -> &'static str {
    match k {
        ErrorKind::ConnectionRefused => "REFUSED",
        ErrorKind::ConnectionReset => "RESET",
        ErrorKind::ConnectionAborted => "ABORTED",
        ErrorKind::UnexpectedEof => "EOF",
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "TIMEOUT",
        _ => "OTHER",
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(ports: Ports) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut threads = Vec::new();
        // A new TCP connection per request on the plain listener: a refused connect or a reset
        // here is exactly what the socket hand-over must prevent.
        for i in 0..2 {
            let (stop, tally) = (stop.clone(), tally.clone());
            threads.push(std::thread::spawn(move || {
                let who = format!("fresh-http-{i}");
                while !stop.load(Ordering::Relaxed) {
                    match http_get(ports.http, "/app") {
                        Ok((200, _)) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((code, body)) => tally.fail(&who, format!("status {code}: {body}")),
                        Err(e) => tally.fail(&who, format!("{} {e}", kind_name(e.kind()))),
                    }
                }
            }));
        }
        // Slow requests (300 ms upstream) on new connections: whichever process accepted them,
        // some are always in flight when the old process stops, and must still complete.
        for i in 0..3 {
            let (stop, tally) = (stop.clone(), tally.clone());
            threads.push(std::thread::spawn(move || {
                let who = format!("slow-{i}");
                while !stop.load(Ordering::Relaxed) {
                    let res = KeepAlive::connect(ports.http, "slow.test")
                        .map_err(|e| format!("connect: {} {e}", kind_name(e.kind())))
                        .and_then(|mut c| {
                            c.get("/app", &["Connection: close", "x-echo-delay-ms: 300"])
                                .map_err(|e| format!("{} {e}", kind_name(e.error.kind())))
                        });
                    match res {
                        Ok(r) if r.status == 200 => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => tally.fail(&who, format!("status {}", r.status)),
                        Err(e) => tally.fail(&who, e),
                    }
                }
            }));
        }
        // A new TLS connection per request on the TLS listener.
        {
            let (stop, tally) = (stop.clone(), tally.clone());
            threads.push(std::thread::spawn(move || {
                let who = "fresh-https";
                while !stop.load(Ordering::Relaxed) {
                    let res = KeepAlive::connect_tls(ports.https, "site.test")
                        .map_err(|e| format!("connect: {} {e}", kind_name(e.kind())))
                        .and_then(|mut c| {
                            c.get("/app", &["Connection: close"])
                                .map_err(|e| format!("{} {e}", kind_name(e.error.kind())))
                        });
                    match res {
                        Ok(r) if r.status == 200 => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => tally.fail(who, format!("status {}", r.status)),
                        Err(e) => tally.fail(who, e),
                    }
                }
            }));
        }
        // Persistent connections: they may be closed by the old process while idle (it stops
        // serving), never in the middle of a request.
        for i in 0..2 {
            let (stop, tally) = (stop.clone(), tally.clone());
            threads.push(std::thread::spawn(move || {
                let who = format!("keepalive-{i}");
                let mut conn: Option<KeepAlive> = None;
                while !stop.load(Ordering::Relaxed) {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match KeepAlive::connect(ports.http, "upgrade.test") {
                            Ok(c) => conn.insert(c),
                            Err(e) => {
                                tally.fail(&who, format!("connect: {} {e}", kind_name(e.kind())));
                                continue;
                            }
                        },
                    };
                    match c.get("/app", &[]) {
                        Ok(r) if r.status == 200 => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            if c.is_closed() {
                                tally.keepalive_closed.fetch_add(1, Ordering::Relaxed);
                                conn = None;
                            }
                        }
                        Ok(r) => {
                            tally.fail(&who, format!("status {}", r.status));
                            conn = None;
                        }
                        Err(e) if e.answered_before > 0 && !e.partial => {
                            // The server closed this idle connection as the request went out:
                            // nothing was processed, retry once on a new connection.
                            tally.keepalive_closed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut r) = tally.keepalive_races.lock() {
                                r.push(kind_name(e.error.kind()).to_string());
                            }
                            conn = None;
                        }
                        Err(e) => {
                            tally.fail(&who, format!("{} {e}", kind_name(e.error.kind())));
                            conn = None;
                        }
                    }
                }
            }));
        }
        Load {
            stop,
            tally,
            threads,
        }
    }

    fn ok(&self) -> usize {
        self.tally.ok.load(Ordering::Relaxed)
    }

    fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("load thread panicked");
        }
        self.tally
    }
}

#[test]
fn graceful_upgrade_under_load_refuses_no_connection() {
    let pki = Pki::new();
    let leaf = pki.server_leaf("upgrade-site", &["DNS:site.test"]);
    let echo = HttpEcho::start("up");
    let run_dir = tempfile::tempdir().expect("run dir");
    let old_builder = Gateway::builder().no_settings();
    let ports = old_builder.ports();
    let mut old = old_builder
        .file("00-settings.yaml", settings(&ports, run_dir.path(), 2))
        .file("gateway.yaml", app_yaml(&leaf, &echo))
        .start();

    let load = Load::start(ports);
    wait_until("load on the old process", Duration::from_secs(10), || {
        load.ok() >= 200
    });

    // The new binary (same one here) with the same conf; it waits on the upgrade socket.
    let sock = run_dir.path().join("upgrade.sock");
    let new = Gateway::builder()
        .no_settings()
        .with_ports(ports)
        .file("00-settings.yaml", settings(&ports, run_dir.path(), 2))
        .file("gateway.yaml", app_yaml(&leaf, &echo))
        .arg("--upgrade")
        .start();
    wait_until(
        "the new process listens on upgrade_sock",
        Duration::from_secs(5),
        || sock.exists(),
    );
    let before_quit = load.ok();
    let quit_at = Instant::now();
    old.signal("QUIT");
    let code = old.wait_exit(Duration::from_secs(20));
    let old_exit = quit_at.elapsed();
    assert!(
        code.is_some(),
        "the old process did not exit within 20 s of SIGQUIT"
    );
    let during = load.ok() - before_quit;
    let after_exit = load.ok();
    wait_until(
        "load on the new process alone",
        Duration::from_secs(10),
        || load.ok() >= after_exit + 200,
    );
    let tally = load.finish();

    let failures = tally.failures.lock().map(|f| f.clone()).unwrap_or_default();
    eprintln!(
        "old process exited {old_exit:?} after SIGQUIT (code {code:?}); {} requests in total, {during} between SIGQUIT and the old process's exit; {} idle keep-alive connections closed by the old process and reopened (noticed on the next request: {:?}); {} failures",
        tally.ok.load(Ordering::Relaxed),
        tally.keepalive_closed.load(Ordering::Relaxed),
        tally.keepalive_races.lock().map(|r| r.clone()).unwrap_or_default(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed requests during the upgrade, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(during > 0, "no request was served during the hand-over");

    // The new process serves on its own now.
    let mut new = new;
    assert!(new.is_running(), "the new process died:\n{}", new.log());
    assert_eq!(
        http_get(ports.status, "/status").map(|r| r.0).ok(),
        Some(200)
    );
    let r = Curl::at("https", "site.test", ports.https, "/app")
        .insecure()
        .run();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        new.log().contains("path=/app"),
        "the new process's access log shows no request"
    );
}

#[test]
fn sigterm_drains_in_flight_requests_within_the_configured_time() {
    let pki = Pki::new();
    let leaf = pki.server_leaf("drain-site", &["DNS:site.test"]);
    let echo = HttpEcho::start("drain");
    let run_dir = tempfile::tempdir().expect("run dir");
    let drain = 3u64;
    let builder = Gateway::builder().no_settings();
    let ports = builder.ports();
    let mut gw = builder
        .file("00-settings.yaml", settings(&ports, run_dir.path(), drain))
        .file("gateway.yaml", app_yaml(&leaf, &echo))
        .start();

    // A request that is still upstream when SIGTERM arrives.
    let slow = std::thread::spawn(move || {
        let mut c = KeepAlive::connect(ports.http, "drain.test").map_err(|e| e.to_string())?;
        c.get("/app", &["x-echo-delay-ms: 1500"])
            .map(|r| r.status)
            .map_err(|e| e.to_string())
    });
    wait_until(
        "the slow request reaches the upstream",
        Duration::from_secs(5),
        || echo.requests() >= 1,
    );
    let term_at = Instant::now();
    gw.signal("TERM");
    let code = gw.wait_exit(Duration::from_secs(drain + 10));
    let took = term_at.elapsed();
    let slow = slow.join().expect("slow request thread");
    eprintln!("exited {took:?} after SIGTERM (code {code:?}); in-flight request: {slow:?}");
    assert!(
        code.is_some(),
        "still running {:?} after SIGTERM (graceful_shutdown_seconds: {drain})",
        took
    );
    assert!(
        took < Duration::from_secs(drain + 3),
        "exited after {took:?}, expected within graceful_shutdown_seconds ({drain} s) and a margin"
    );
    assert_eq!(
        slow,
        Ok(200),
        "a request in flight at SIGTERM must complete during the drain"
    );
    // Nothing listens any more.
    assert!(http_get(ports.http, "/app").is_err());
}

#[test]
fn default_pid_file_lives_in_a_private_runtime_directory() {
    use std::os::unix::fs::PermissionsExt;
    let run = tempfile::tempdir().unwrap();
    let echo = HttpEcho::start("rundir");
    let gw = Gateway::builder()
        .env("XDG_RUNTIME_DIR", &run.path().display().to_string())
        .file(
            "gateway.yaml",
            format!(
                "services:\n- name: app\n  url: {}\n  routes:\n  - name: app\n    paths: [/]\n",
                echo.url()
            ),
        )
        .start();
    let dir = run.path().join("portcullis");
    let pid = dir.join("portcullis.pid");
    wait_until("the pid file", Duration::from_secs(5), || pid.exists());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "runtime directory mode");
    assert_eq!(mode(&pid), 0o600, "pid file mode");
    let written = std::fs::read_to_string(&pid).unwrap();
    assert_eq!(written.trim(), gw.pid().unwrap().to_string());
}

#[test]
fn a_runtime_directory_open_to_others_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let run = tempfile::tempdir().unwrap();
    let dir = run.path().join("portcullis");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = Gateway::builder()
        .env("XDG_RUNTIME_DIR", &run.path().display().to_string())
        .file("gateway.yaml", "services: []\n")
        .try_start()
        .err()
        .expect("started with a world-writable runtime directory");
    assert!(err.log.contains("accessible to other users"), "{}", err.log);
}
