//! Runs the real `portcullis` binary on a conf dir written by the test.
//!
//! The conf dir lives at `<tempdir>/conf` and the binary runs with `<tempdir>` as its working
//! directory and `--conf conf`, so error messages read `conf/gateway.yaml:L:C: ...` exactly as a user
//! who typed `portcullis check --conf conf` would see them.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::client::http_get;

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// How long a gateway may take to become ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);

/// A conf directory in a temp dir: `root()/conf/`.
#[allow(dead_code)]
pub struct ConfDir {
    root: TempDir,
}

#[allow(dead_code)]
impl ConfDir {
    pub fn new() -> ConfDir {
        let root = tempfile::Builder::new()
            .prefix("portcullis-conf-")
            .tempdir()
            .expect("create conf temp dir");
        std::fs::create_dir_all(root.path().join("conf")).expect("create conf dir");
        ConfDir { root }
    }

    /// Writes `rel` (relative to the conf dir, subfolders created) and returns its path.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create conf subdir");
        }
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        // Private keys as an operator keeps them: the gateway warns about keys others can read.
        if rel.ends_with(".key") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        }
        path
    }

    /// Builder-style [`ConfDir::write`].
    pub fn with(self, rel: &str, contents: impl AsRef<[u8]>) -> ConfDir {
        self.write(rel, contents);
        self
    }

    pub fn remove(&self, rel: &str) {
        let _ = std::fs::remove_file(self.dir().join(rel));
    }

    /// The conf dir itself (absolute).
    pub fn dir(&self) -> PathBuf {
        self.root.path().join("conf")
    }

    /// The working directory the binary runs in (parent of `conf/`).
    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

/// Ephemeral ports for every listener a gateway may open.
#[allow(dead_code)]
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub http: u16,
    pub https: u16,
    pub status: u16,
    pub stream: u16,
}

#[allow(dead_code)]
impl Ports {
    pub fn new() -> Ports {
        // Held together until all four are known, so no two are the same port; below the
        // ephemeral range, so no outgoing connection takes one before the gateway binds it.
        let held: Vec<std::net::TcpListener> = (0..4).map(|_| super::reserve_listener()).collect();
        let port = |i: usize| held[i].local_addr().expect("local addr").port();
        Ports {
            http: port(0),
            https: port(1),
            status: port(2),
            stream: port(3),
        }
    }

    /// The `listeners:` and `server:` settings on these ports; `stream` only when asked.
    pub fn settings_yaml(&self, with_stream: bool) -> String {
        let stream = if with_stream {
            format!("  stream:\n    - address: 127.0.0.1:{}\n", self.stream)
        } else {
            String::new()
        };
        format!(
            "listeners:\n  proxy:\n    - address: 127.0.0.1:{http}\n    - address: 127.0.0.1:{https}\n      tls: true\n{stream}  status:\n    address: 127.0.0.1:{status}\nserver:\n  threads: 1\n  graceful_shutdown_seconds: 1\n",
            http = self.http,
            https = self.https,
            status = self.status,
        )
    }
}

/// File the harness writes the settings into (the test's own files keep their line numbers).
pub const SETTINGS_FILE: &str = "00-test-listeners.yaml";

/// Starts a gateway. `file("gateway.yaml", ...)` for the entities; settings are added unless
/// [`GatewayBuilder::no_settings`] is used.
#[allow(dead_code)]
pub struct GatewayBuilder {
    conf: ConfDir,
    ports: Ports,
    settings: bool,
    stream: bool,
    h2c: bool,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

#[allow(dead_code)]
impl GatewayBuilder {
    pub fn ports(&self) -> Ports {
        self.ports
    }
    pub fn conf(&self) -> &ConfDir {
        &self.conf
    }
    pub fn file(self, rel: &str, contents: impl AsRef<[u8]>) -> GatewayBuilder {
        self.conf.write(rel, contents);
        self
    }
    /// Also open the stream (passthrough) listener on `ports().stream`.
    pub fn with_stream(mut self) -> GatewayBuilder {
        self.stream = true;
        self
    }
    /// Accept HTTP/2 with prior knowledge (h2c) on the plaintext proxy listener (`http2: true`).
    pub fn with_h2c(mut self) -> GatewayBuilder {
        self.h2c = true;
        self
    }
    /// Do not write the settings file: the test's own files carry `listeners`.
    pub fn no_settings(mut self) -> GatewayBuilder {
        self.settings = false;
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> GatewayBuilder {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    /// Extra arguments after `run --conf conf`.
    pub fn arg(mut self, arg: &str) -> GatewayBuilder {
        self.args.push(arg.to_string());
        self
    }

    /// Starts and waits until `GET /status` answers 200; panics with the log otherwise.
    pub fn start(self) -> Gateway {
        match self.try_start() {
            Ok(gw) => gw,
            Err(e) => panic!("gateway did not start: {e}"),
        }
    }

    /// Starts and waits for readiness; `Err` carries the exit status and the log.
    pub fn try_start(self) -> Result<Gateway, StartError> {
        let status = self.ports.status;
        self.try_start_on(status)
    }

    /// Like [`GatewayBuilder::try_start`] for a test that wrote its own `listeners`: readiness
    /// is polled on `status_port`.
    pub fn try_start_on(mut self, status_port: u16) -> Result<Gateway, StartError> {
        self.ports.status = status_port;
        if self.settings {
            let mut settings = self.ports.settings_yaml(self.stream);
            if self.h2c {
                let plain = format!("    - address: 127.0.0.1:{}\n", self.ports.http);
                settings = settings.replacen(&plain, &format!("{plain}      http2: true\n"), 1);
            }
            self.conf.write(SETTINGS_FILE, settings);
        }
        let log_path = self.conf.root().join("gateway.log");
        let log = File::create(&log_path).expect("create gateway log");
        let mut cmd = Command::new(BIN);
        cmd.current_dir(self.conf.root())
            .arg("run")
            .arg("--conf")
            .arg("conf")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
        let mut gw = Gateway {
            child: Some(child),
            conf: self.conf,
            ports: self.ports,
            log_path,
        };
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(child) = gw.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    gw.child = None;
                    return Err(StartError {
                        exit_code: status.code(),
                        log: gw.log(),
                    });
                }
            }
            if let Ok((200, _)) = http_get(gw.ports.status, "/status") {
                return Ok(gw);
            }
            if Instant::now() > deadline {
                let log = gw.log();
                return Err(StartError {
                    exit_code: None,
                    log: format!("not ready after {READY_DEADLINE:?}\n{log}"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Why a gateway did not become ready.
#[derive(Debug)]
pub struct StartError {
    /// `Some(code)` when the process exited, `None` when it hung.
    pub exit_code: Option<i32>,
    pub log: String,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n----- gateway log -----\n{}\n-----------------------",
            self.exit_code, self.log
        )
    }
}

/// A running gateway process; killed on drop (its log is printed if the test is failing).
#[allow(dead_code)]
pub struct Gateway {
    child: Option<Child>,
    conf: ConfDir,
    ports: Ports,
    log_path: PathBuf,
}

#[allow(dead_code)]
impl Gateway {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder {
            conf: ConfDir::new(),
            ports: Ports::new(),
            settings: true,
            stream: false,
            h2c: false,
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Starts a gateway whose `gateway.yaml` is `yaml` (settings added on ephemeral ports).
    /// Use [`Gateway::builder`] when the YAML needs the gateway's own ports or extra files.
    pub fn start(yaml: &str) -> Gateway {
        Gateway::builder().file("gateway.yaml", yaml).start()
    }

    pub fn ports(&self) -> Ports {
        self.ports
    }
    pub fn http_port(&self) -> u16 {
        self.ports.http
    }
    pub fn https_port(&self) -> u16 {
        self.ports.https
    }
    pub fn status_port(&self) -> u16 {
        self.ports.status
    }
    pub fn stream_port(&self) -> u16 {
        self.ports.stream
    }
    pub fn conf(&self) -> &ConfDir {
        &self.conf
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the log contains `needle`; returns whether it did within `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET /metrics` on the status listener (Prometheus text).
    pub fn metrics(&self) -> String {
        match http_get(self.ports.status, "/metrics") {
            Ok((200, body)) => body,
            Ok((code, body)) => panic!("GET /metrics answered {code}: {body}"),
            Err(e) => panic!("GET /metrics: {e}"),
        }
    }

    /// `GET /status` body parsed as JSON.
    pub fn status(&self) -> serde_json::Value {
        match http_get(self.ports.status, "/status") {
            Ok((_, body)) => serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}")),
            Err(e) => panic!("GET /status: {e}"),
        }
    }

    /// Sends a signal (`HUP`, `TERM`...) with the `kill` command (the crate forbids `unsafe`).
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// Waits for the process to exit on its own; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- gateway log ({}) -----\n{}\n-----------------------------",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

/// Output of `portcullis check`.
#[allow(dead_code)]
#[derive(Debug)]
pub struct CheckOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

#[allow(dead_code)]
impl CheckOutput {
    /// stdout then stderr: the contract does not say which stream errors go to.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
    /// Every output line starting with `prefix`.
    pub fn lines_starting(&self, prefix: &str) -> Vec<String> {
        self.all()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }
}

/// `portcullis check --conf conf` in the conf dir's parent.
#[allow(dead_code)]
pub fn check(conf: &ConfDir) -> CheckOutput {
    run_check(conf.root(), Path::new("conf"))
}

/// `portcullis check --conf DIR` for any directory (e.g. the repo's example `conf/`).
#[allow(dead_code)]
pub fn check_dir(dir: &Path) -> CheckOutput {
    let cwd = dir.parent().unwrap_or(Path::new("/"));
    run_check(cwd, dir)
}

fn run_check(cwd: &Path, conf: &Path) -> CheckOutput {
    let out = Command::new(BIN)
        .current_dir(cwd)
        .arg("check")
        .arg("--conf")
        .arg(conf)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {BIN} check: {e}"));
    CheckOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[allow(dead_code)]
impl GatewayBuilder {
    /// Use these ports instead of fresh ones: a second process that takes over the listeners of
    /// a first (graceful upgrade) runs on the same addresses.
    pub fn with_ports(mut self, ports: Ports) -> GatewayBuilder {
        self.ports = ports;
        self
    }
}
