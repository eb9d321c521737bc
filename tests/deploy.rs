//! Structure tests for everything that ships the gateway: the Kubernetes manifests, the Dockerfile
//! and its `.dockerignore`, and the Grafana dashboard.
//!
//! No Docker engine or cluster runs here, so these tests check what can go wrong without one: ports,
//! probe paths and mount paths that drift away from the gateway's defaults, a conf layout whose
//! relative `certs/` paths would not resolve, a dashboard querying metrics that do not exist. The
//! gateway binary itself validates the configuration the manifests and the image carry, laid out
//! the way the kubelet and the image lay it out.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

/// The gateway's default listener ports (SPEC §2): proxy HTTP, proxy HTTPS, stream, status.
const DEFAULT_PORTS: [u16; 4] = [8000, 8443, 9443, 8100];
const STATUS_PORT: u16 = 8100;
const CONF_DIR: &str = "/etc/portcullis";
/// The image's non-root user (Dockerfile `USER`), which the Deployment's `runAsUser` must match.
const IMAGE_UID: u32 = 10001;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> Result<String> {
    fs::read_to_string(repo().join(rel)).with_context(|| format!("reading {rel}"))
}

// ---------------------------------------------------------------------------------------------
// Kubernetes manifests
// ---------------------------------------------------------------------------------------------

/// Every document of every `*.yaml` in deploy/kubernetes, with the file it came from.
fn manifests() -> Result<Vec<(String, Value)>> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = fs::read_to_string(&path)?;
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| anyhow!("deploy/kubernetes/{name}: {e}"))?;
        ensure!(!parsed.is_empty(), "{name} holds no document");
        docs.extend(parsed.into_iter().map(|d| (name.clone(), d)));
    }
    Ok(docs)
}

fn of_kind(docs: &[(String, Value)], kind: &str) -> Vec<Value> {
    docs.iter()
        .filter(|(_, d)| d["kind"] == kind)
        .map(|(_, d)| d.clone())
        .collect()
}

fn one_of_kind(docs: &[(String, Value)], kind: &str) -> Result<Value> {
    let mut found = of_kind(docs, kind);
    ensure!(
        found.len() == 1,
        "expected one {kind}, found {}",
        found.len()
    );
    Ok(found.remove(0))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Result<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("missing string at {pointer}"))
}

fn u64_at(v: &Value, pointer: &str) -> Result<u64> {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("missing integer at {pointer}"))
}

fn array_at<'a>(v: &'a Value, pointer: &str) -> Result<&'a Vec<Value>> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("missing list at {pointer}"))
}

fn gateway_container(deployment: &Value) -> Result<&Value> {
    array_at(deployment, "/spec/template/spec/containers")?
        .iter()
        .find(|c| c["name"] == "portcullis")
        .ok_or_else(|| anyhow!("no container named portcullis"))
}

/// containerPort by port name, and the set of all container ports.
fn container_ports(container: &Value) -> Result<(BTreeMap<String, u16>, BTreeSet<u16>)> {
    let mut named = BTreeMap::new();
    let mut all = BTreeSet::new();
    for p in array_at(container, "/ports")? {
        let port = u16::try_from(u64_at(p, "/containerPort")?)?;
        ensure!(all.insert(port), "containerPort {port} listed twice");
        if let Some(name) = p["name"].as_str() {
            named.insert(name.to_string(), port);
        }
    }
    Ok((named, all))
}

/// A probe's or Service's port: a number, or the name of a container port.
fn resolve_port(v: &Value, named: &BTreeMap<String, u16>) -> Result<u16> {
    match v {
        Value::Number(n) => Ok(u16::try_from(
            n.as_u64().ok_or_else(|| anyhow!("bad port {n}"))?,
        )?),
        Value::String(s) => named
            .get(s)
            .copied()
            .ok_or_else(|| anyhow!("port name {s} is not a container port")),
        other => bail!("bad port {other}"),
    }
}

/// The ConfigMap's gateway.yaml, parsed.
fn configmap_gateway_yaml(docs: &[(String, Value)]) -> Result<(String, Value)> {
    let cm = one_of_kind(docs, "ConfigMap")?;
    let text = str_at(&cm, "/data/gateway.yaml")?.to_string();
    let parsed: Value =
        serde_saphyr::from_str(&text).map_err(|e| anyhow!("ConfigMap gateway.yaml: {e}"))?;
    Ok((text, parsed))
}

fn port_of_address(addr: &str) -> Result<u16> {
    let (_, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("address {addr} has no port"))?;
    Ok(port.parse()?)
}

/// Every listener port the ConfigMap's gateway.yaml configures.
fn listener_ports(gateway: &Value) -> Result<BTreeSet<u16>> {
    let mut ports = BTreeSet::new();
    for kind in ["proxy", "stream"] {
        for l in array_at(gateway, &format!("/listeners/{kind}"))? {
            ports.insert(port_of_address(str_at(l, "/address")?)?);
        }
    }
    ports.insert(port_of_address(str_at(
        gateway,
        "/listeners/status/address",
    )?)?);
    Ok(ports)
}

#[test]
fn every_manifest_parses_and_kustomization_lists_them_all() -> Result<()> {
    let docs = manifests()?;
    for (file, d) in &docs {
        ensure!(d["apiVersion"].is_string(), "{file}: apiVersion missing");
        ensure!(d["kind"].is_string(), "{file}: kind missing");
        if d["kind"] != "Kustomization" {
            ensure!(
                d.pointer("/metadata/name").is_some_and(Value::is_string),
                "{file}: metadata.name missing"
            );
            // Namespace-less, so `kubectl apply -n NS` / kustomize `namespace:` decides.
            ensure!(
                d.pointer("/metadata/namespace").is_none(),
                "{file}: hard-coded namespace"
            );
        }
    }
    for kind in [
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ] {
        ensure!(!of_kind(&docs, kind).is_empty(), "no {kind} manifest");
    }

    let kustomization = one_of_kind(&docs, "Kustomization")?;
    let listed: BTreeSet<String> = array_at(&kustomization, "/resources")?
        .iter()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    let files: BTreeSet<String> = docs
        .iter()
        .filter(|(_, d)| d["kind"] != "Kustomization")
        .map(|(f, _)| f.clone())
        .collect();
    assert_eq!(
        listed, files,
        "kustomization.yaml resources vs manifest files"
    );
    Ok(())
}

#[test]
fn container_ports_match_the_gateway_defaults_and_the_configmap() -> Result<()> {
    let docs = manifests()?;
    let deployment = one_of_kind(&docs, "Deployment")?;
    let (_, ports) = container_ports(gateway_container(&deployment)?)?;
    assert_eq!(ports, BTreeSet::from(DEFAULT_PORTS), "containerPorts");

    let (_, gateway) = configmap_gateway_yaml(&docs)?;
    assert_eq!(
        listener_ports(&gateway)?,
        ports,
        "listeners in the ConfigMap's gateway.yaml vs containerPorts"
    );
    assert_eq!(
        port_of_address(str_at(&gateway, "/listeners/status/address")?)?,
        STATUS_PORT
    );
    Ok(())
}

#[test]
fn probes_and_scrape_annotations_use_the_status_listener() -> Result<()> {
    let docs = manifests()?;
    let deployment = one_of_kind(&docs, "Deployment")?;
    let container = gateway_container(&deployment)?;
    let (named, _) = container_ports(container)?;
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = container
            .pointer(&format!("/{probe}/httpGet"))
            .ok_or_else(|| anyhow!("{probe} is not an httpGet probe"))?;
        assert_eq!(str_at(get, "/path")?, "/status", "{probe} path");
        assert_eq!(
            resolve_port(&get["port"], &named)?,
            STATUS_PORT,
            "{probe} port"
        );
    }

    let annotations = deployment
        .pointer("/spec/template/metadata/annotations")
        .ok_or_else(|| anyhow!("pod template has no annotations"))?;
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], STATUS_PORT.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    Ok(())
}

#[test]
fn configmap_and_secret_land_in_one_conf_dir_where_gateway_yaml_expects_them() -> Result<()> {
    let docs = manifests()?;
    let deployment = one_of_kind(&docs, "Deployment")?;
    let container = gateway_container(&deployment)?;
    let pod = deployment
        .pointer("/spec/template/spec")
        .ok_or_else(|| anyhow!("no pod spec"))?;

    let env_conf = array_at(container, "/env")?
        .iter()
        .find(|e| e["name"] == "PORTCULLIS_CONF")
        .and_then(|e| e["value"].as_str());
    assert_eq!(env_conf, Some(CONF_DIR), "PORTCULLIS_CONF");

    let mounts = array_at(container, "/volumeMounts")?;
    let conf_mount = mounts
        .iter()
        .find(|m| m["mountPath"] == CONF_DIR)
        .ok_or_else(|| anyhow!("nothing mounted at {CONF_DIR}"))?;
    // A subPath mount is never updated by the kubelet: live rotation would silently stop.
    ensure!(
        conf_mount.get("subPath").is_none(),
        "conf mount must not use subPath"
    );
    assert_eq!(conf_mount["readOnly"], true);
    let volume_name = str_at(conf_mount, "/name")?;
    let volume = array_at(pod, "/volumes")?
        .iter()
        .find(|v| v["name"] == volume_name)
        .ok_or_else(|| anyhow!("volume {volume_name} not declared"))?;
    let sources = array_at(volume, "/projected/sources")?;

    // The ConfigMap's keys become top-level files of the conf dir.
    let cm = one_of_kind(&docs, "ConfigMap")?;
    let cm_name = str_at(&cm, "/metadata/name")?;
    let cm_source = sources
        .iter()
        .find(|s| s.pointer("/configMap/name").and_then(Value::as_str) == Some(cm_name))
        .ok_or_else(|| anyhow!("ConfigMap {cm_name} is not projected into {CONF_DIR}"))?;
    ensure!(
        cm_source.pointer("/configMap/items").is_none(),
        "every ConfigMap key should be projected, so a new *.yaml key is picked up"
    );

    // The Secret's keys land at the paths gateway.yaml references.
    let secret = one_of_kind(&docs, "Secret")?;
    let secret_name = str_at(&secret, "/metadata/name")?;
    let secret_keys: BTreeSet<&str> = secret["stringData"]
        .as_object()
        .or_else(|| secret["data"].as_object())
        .ok_or_else(|| anyhow!("Secret has no data"))?
        .keys()
        .map(String::as_str)
        .collect();
    let secret_source = sources
        .iter()
        .find(|s| s.pointer("/secret/name").and_then(Value::as_str) == Some(secret_name))
        .ok_or_else(|| anyhow!("Secret {secret_name} is not projected into {CONF_DIR}"))?;
    let mut projected_paths = BTreeSet::new();
    for item in array_at(secret_source, "/secret/items")? {
        let key = str_at(item, "/key")?;
        ensure!(secret_keys.contains(key), "Secret has no key {key}");
        projected_paths.insert(str_at(item, "/path")?.to_string());
    }
    let (_, gateway) = configmap_gateway_yaml(&docs)?;
    let mut referenced = BTreeSet::new();
    for cert in array_at(&gateway, "/certificates")? {
        for field in ["cert_file", "key_file"] {
            referenced.insert(str_at(cert, &format!("/{field}"))?.to_string());
        }
    }
    assert_eq!(
        referenced, projected_paths,
        "files gateway.yaml references vs files the Secret projects"
    );
    Ok(())
}

#[test]
fn pods_run_non_root_read_only_and_outlive_the_drain() -> Result<()> {
    let docs = manifests()?;
    let deployment = one_of_kind(&docs, "Deployment")?;
    ensure!(
        u64_at(&deployment, "/spec/replicas")? >= 2,
        "fewer than 2 replicas"
    );
    let pod = deployment
        .pointer("/spec/template/spec")
        .ok_or_else(|| anyhow!("no pod spec"))?;
    let container = gateway_container(&deployment)?;

    assert_eq!(
        pod.pointer("/securityContext/runAsNonRoot"),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        u64_at(pod, "/securityContext/runAsUser")?,
        u64::from(IMAGE_UID)
    );
    assert_eq!(
        container.pointer("/securityContext/readOnlyRootFilesystem"),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        container.pointer("/securityContext/allowPrivilegeEscalation"),
        Some(&Value::Bool(false))
    );
    // Read-only root: Pingora's upgrade socket and pid file need a writable /tmp.
    let tmp_mount = array_at(container, "/volumeMounts")?
        .iter()
        .find(|m| m["mountPath"] == "/tmp")
        .ok_or_else(|| anyhow!("no writable /tmp"))?;
    let tmp_volume = str_at(tmp_mount, "/name")?;
    ensure!(
        array_at(pod, "/volumes")?
            .iter()
            .any(|v| v["name"] == tmp_volume && v.get("emptyDir").is_some()),
        "/tmp is not an emptyDir"
    );

    // SIGKILL must never cut the drain short.
    let (_, gateway) = configmap_gateway_yaml(&docs)?;
    let grace = u64_at(&gateway, "/server/graceful_shutdown_seconds")?;
    let pre_stop = match container.pointer("/lifecycle/preStop/exec/command") {
        Some(Value::Array(cmd)) if cmd.first() == Some(&Value::from("sleep")) => cmd
            .get(1)
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0),
        _ => 0,
    };
    let termination = u64_at(pod, "/terminationGracePeriodSeconds")?;
    ensure!(
        termination > pre_stop + grace,
        "terminationGracePeriodSeconds {termination} <= preStop {pre_stop} + graceful_shutdown_seconds {grace}"
    );
    Ok(())
}

#[test]
fn services_select_the_pods_and_reach_proxy_and_stream_ports() -> Result<()> {
    let docs = manifests()?;
    let deployment = one_of_kind(&docs, "Deployment")?;
    let (named, ports) = container_ports(gateway_container(&deployment)?)?;
    let labels = deployment
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow!("pod template has no labels"))?;
    let mut targets = BTreeSet::new();
    for svc in of_kind(&docs, "Service") {
        let name = str_at(&svc, "/metadata/name")?;
        let selector = svc
            .pointer("/spec/selector")
            .and_then(Value::as_object)
            .ok_or_else(|| anyhow!("Service {name} has no selector"))?;
        for (k, v) in selector {
            ensure!(
                labels.get(k) == Some(v),
                "Service {name} selector {k}={v} matches no pod"
            );
        }
        for p in array_at(&svc, "/spec/ports")? {
            let target = resolve_port(&p["targetPort"], &named)?;
            ensure!(
                ports.contains(&target),
                "Service {name} targets {target}, not a container port"
            );
            targets.insert(target);
        }
    }
    assert_eq!(
        targets,
        BTreeSet::from([8000, 8443, 9443]),
        "Services expose proxy and stream"
    );
    Ok(())
}

/// Lays the ConfigMap and Secret out exactly as the kubelet does for a projected volume
/// (`..<timestamp>/` holding the files, `..data` pointing at it, top-level symlinks through
/// `..data`), with a real certificate in place of the Secret's placeholders.
#[cfg(unix)]
fn materialize_projected_volume(docs: &[(String, Value)], root: &Path) -> Result<()> {
    use std::os::unix::fs::symlink;
    let (gateway_text, gateway) = configmap_gateway_yaml(docs)?;
    let snis: Vec<String> = array_at(&gateway, "/certificates/0/snis")?
        .iter()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    let (cert_pem, key_pem) = self_signed(&snis)?;

    let data = root.join("..2026_01_01_00_00_00.000000001");
    fs::create_dir_all(data.join("certs"))?;
    fs::write(data.join("gateway.yaml"), gateway_text)?;
    fs::write(data.join("certs/tls.crt"), cert_pem)?;
    fs::write(data.join("certs/tls.key"), key_pem)?;
    symlink("..2026_01_01_00_00_00.000000001", root.join("..data"))?;
    symlink("..data/gateway.yaml", root.join("gateway.yaml"))?;
    symlink("..data/certs", root.join("certs"))?;
    Ok(())
}

fn self_signed(snis: &[String]) -> Result<(Vec<u8>, Vec<u8>)> {
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509NameBuilder, X509};

    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, snis.first().map_or("portcullis", |s| s))?;
    let name = name.build();
    let mut serial = BigNum::new()?;
    serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&key)?;
    let (not_before, not_after) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(90)?);
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    let mut san = SubjectAlternativeName::new();
    for sni in snis {
        san.dns(sni);
    }
    let san = san.build(&b.x509v3_context(None, None))?;
    b.append_extension(san)?;
    b.sign(&key, MessageDigest::sha256())?;
    Ok((b.build().to_pem()?, key.private_key_to_pem_pkcs8()?))
}

/// `portcullis check` with the conf dir given only through `PORTCULLIS_CONF` (as in the image),
/// as the image's uid when the test runs as root (as CI does), so an unreadable file or a path
/// that only works for root fails here.
fn check_as_image_user(conf: &Path) -> Result<()> {
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let as_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let mut cmd = if as_root {
        let mut c = Command::new("setpriv");
        c.args([
            format!("--reuid={IMAGE_UID}"),
            format!("--regid={IMAGE_UID}"),
            "--clear-groups".to_string(),
            "--".to_string(),
            bin.to_string(),
        ]);
        c
    } else {
        Command::new(bin)
    };
    let out = cmd
        .arg("check")
        .env("PORTCULLIS_CONF", conf)
        .env_remove("RUST_LOG")
        .output()
        .context("running portcullis check")?;
    ensure!(
        out.status.success(),
        "portcullis check on {} failed ({}):\n{}{}",
        conf.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A temp dir the image's uid can traverse (tempfile creates 0700 dirs).
#[cfg(unix)]
fn world_readable_tempdir() -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

#[cfg(unix)]
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

#[cfg(unix)]
#[test]
fn the_configmap_and_secret_as_mounted_pass_portcullis_check() -> Result<()> {
    let docs = manifests()?;
    let dir = world_readable_tempdir()?;
    let conf = dir.path().join("etc/portcullis");
    fs::create_dir_all(&conf)?;
    materialize_projected_volume(&docs, &conf)?;
    chmod_readable(dir.path())?;
    check_as_image_user(&conf)
}

#[cfg(unix)]
#[test]
fn the_image_default_conf_passes_check_as_the_image_user() -> Result<()> {
    // The image copies conf/ to /etc/portcullis and runs as uid 10001 with PORTCULLIS_CONF set.
    let dir = world_readable_tempdir()?;
    let conf = dir.path().join("etc/portcullis");
    copy_tree(&repo().join("conf"), &conf)?;
    chmod_readable(dir.path())?;
    check_as_image_user(&conf)
}

/// Git checks files out 0644 and the image's COPY keeps that; mirror it (tempfile and fs::write
/// may be stricter under a restrictive umask).
#[cfg(unix)]
fn chmod_readable(root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_symlink() {
            continue;
        }
        let mode = if ft.is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode))?;
        if ft.is_dir() {
            chmod_readable(&entry.path())?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------------

/// One Dockerfile instruction: keyword (upper-case) and its argument text, continuations joined.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

/// Instructions grouped by build stage (each `FROM` starts one).
fn dockerfile_stages() -> Result<Vec<Vec<Instruction>>> {
    let text = read("Dockerfile")?;
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        // Comment lines are dropped even inside a continuation, as Docker does.
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    ensure!(
        current.trim().is_empty(),
        "Dockerfile ends inside a continuation"
    );
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for l in logical {
        let (keyword, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let ins = Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.split_whitespace().collect::<Vec<_>>().join(" "),
        };
        if ins.keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .ok_or_else(|| anyhow!("instruction before FROM: {l}"))?
            .push(ins);
    }
    Ok(stages)
}

fn find<'a>(stage: &'a [Instruction], keyword: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|i| i.keyword == keyword)
        .map(|i| i.args.as_str())
        .collect()
}

#[test]
fn dockerfile_builds_with_the_toolchain_and_runs_slim() -> Result<()> {
    let stages = dockerfile_stages()?;
    ensure!(stages.len() >= 2, "not a multi-stage build");
    let build = &stages[0];
    let runtime = &stages[stages.len() - 1];
    let from_build = find(build, "FROM")[0];
    ensure!(
        from_build.starts_with("rust:") && from_build.contains("bookworm"),
        "{from_build}"
    );
    assert_eq!(find(runtime, "FROM"), ["debian:bookworm-slim"]);

    let build_runs = find(build, "RUN").join("\n");
    ensure!(
        build_runs.contains("cmake"),
        "the build stage must install cmake for Pingora"
    );
    ensure!(
        build_runs.contains("cargo build --release --locked --bin portcullis"),
        "release build of the portcullis binary from Cargo.lock"
    );
    let runtime_runs = find(runtime, "RUN").join("\n");
    ensure!(
        runtime_runs.contains("ca-certificates"),
        "runtime needs the system trust store"
    );
    ensure!(
        find(runtime, "COPY")
            .iter()
            .any(|c| c.starts_with("--from=") && c.ends_with("/usr/local/bin/portcullis")),
        "binary not copied to /usr/local/bin/portcullis"
    );
    Ok(())
}

#[test]
fn dockerfile_runtime_contract() -> Result<()> {
    let stages = dockerfile_stages()?;
    let runtime = stages.last().ok_or_else(|| anyhow!("no stage"))?;

    let user = find(runtime, "USER");
    ensure!(user.len() == 1, "exactly one USER in the runtime stage");
    let uid = user[0].split(':').next().unwrap_or("");
    ensure!(uid != "root" && uid != "0", "runs as root");
    assert_eq!(
        uid,
        IMAGE_UID.to_string(),
        "numeric USER (for runAsNonRoot)"
    );
    ensure!(
        find(runtime, "RUN")
            .iter()
            .any(|r| r.contains(&format!("--uid {IMAGE_UID}"))),
        "user {IMAGE_UID} is not created"
    );

    let exposed: BTreeSet<u16> = find(runtime, "EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp").parse::<u16>())
        .collect::<Result<_, _>>()?;
    assert_eq!(exposed, BTreeSet::from(DEFAULT_PORTS), "EXPOSE");

    assert_eq!(
        find(runtime, "ENV"),
        [format!("PORTCULLIS_CONF={CONF_DIR}")]
    );
    ensure!(
        find(runtime, "COPY")
            .iter()
            .any(|c| c.ends_with(&format!("conf/ {CONF_DIR}/"))),
        "example conf/ not copied to {CONF_DIR}"
    );
    let health = find(runtime, "HEALTHCHECK");
    ensure!(
        health.len() == 1 && health[0].contains(r#"CMD ["portcullis", "healthcheck"]"#),
        "HEALTHCHECK must run `portcullis healthcheck`: {health:?}"
    );
    assert_eq!(find(runtime, "ENTRYPOINT"), [r#"["portcullis"]"#]);
    assert_eq!(find(runtime, "CMD"), [r#"["run"]"#]);
    assert_eq!(find(runtime, "STOPSIGNAL"), ["SIGTERM"]);
    Ok(())
}

#[test]
fn dockerignore_keeps_sources_and_drops_build_output() -> Result<()> {
    let patterns: Vec<String> = read(".dockerignore")?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/').to_string())
        .collect();
    for needed in ["target", ".git"] {
        ensure!(
            patterns.iter().any(|p| p == needed),
            ".dockerignore lacks {needed}"
        );
    }
    // Everything `cargo build --locked` and the runtime COPY need must stay in the context.
    for kept in [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "plugins",
        "conf",
        "benches",
        "tests",
        "README.md",
    ] {
        ensure!(
            !patterns.iter().any(|p| p == kept || p == "*" || p == "**"),
            ".dockerignore drops {kept}, which the build needs"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Grafana dashboard
// ---------------------------------------------------------------------------------------------

/// Metric names the gateway defines (string literals in src/metrics/mod.rs).
/// Metric names the gateway defines: src/metrics/mod.rs, and the families the plugin API defines
/// for the gateway and plugins to share (plugins/api/src/*.rs).
fn defined_metrics() -> Result<BTreeSet<String>> {
    let mut text = read("src/metrics/mod.rs")?;
    let api = repo().join("plugins/api/src");
    for entry in std::fs::read_dir(&api)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            text.push_str(&std::fs::read_to_string(&path)?);
        }
    }
    let re = regex::Regex::new(r#""(portcullis_[a-z0-9_]+)""#)?;
    Ok(re.captures_iter(&text).map(|c| c[1].to_string()).collect())
}

/// Metrics of the prometheus crate's process collector (its `process` feature).
const PROCESS_METRICS: [&str; 7] = [
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

fn collect_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::Object(q)) => {
                        if let Some(Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => {}
                }
                collect_queries(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_queries(x, out)),
        _ => {}
    }
}

fn dashboard() -> Result<Value> {
    Ok(serde_json::from_str(&read(
        "deploy/grafana/portcullis-dashboard.json",
    )?)?)
}

#[test]
fn dashboard_queries_only_metrics_the_gateway_exports() -> Result<()> {
    let dash = dashboard()?;
    let defined = defined_metrics()?;
    ensure!(!defined.is_empty(), "no metric found in src/metrics/mod.rs");
    let mut queries = Vec::new();
    collect_queries(&dash, &mut queries);
    ensure!(queries.len() >= 10, "only {} queries", queries.len());

    let name = regex::Regex::new(r"\b((?:portcullis|process)_[a-z0-9_]+)")?;
    let mut used = BTreeSet::new();
    for q in &queries {
        for c in name.captures_iter(q) {
            let metric = c[1].to_string();
            // `{__name__=~"portcullis_.*"}` in the job variable is a pattern, not a name.
            if q[c.get(1).map_or(0, |m| m.end())..].starts_with(".*") {
                continue;
            }
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| metric.strip_suffix(s))
                .filter(|b| defined.contains(*b))
                .unwrap_or(&metric)
                .to_string();
            ensure!(
                defined.contains(&base) || PROCESS_METRICS.contains(&base.as_str()),
                "dashboard queries {metric}, which the gateway does not define: {q}"
            );
            used.insert(base);
        }
    }
    // Every metric of SPEC §6 has a panel.
    for spec in [
        "portcullis_http_requests_total",
        "portcullis_http_request_duration_seconds",
        "portcullis_upstream_duration_seconds",
        "portcullis_bandwidth_bytes_total",
        "portcullis_upstream_tls_failures_total",
        "portcullis_auth_failures_total",
        "portcullis_stream_connections_total",
        "portcullis_stream_active_connections",
        "portcullis_stream_bytes_total",
        "portcullis_certificate_expiry_timestamp_seconds",
        "portcullis_upstream_target_health",
        "portcullis_config_reloads_total",
    ] {
        ensure!(used.contains(spec), "no dashboard panel queries {spec}");
    }
    ensure!(
        queries.iter().any(|q| q.contains(
            "(portcullis_certificate_expiry_timestamp_seconds{job=~\"$job\"} - time()) / 86400"
        )),
        "no certificate expiry in days"
    );
    for quantile in ["0.5", "0.95", "0.99"] {
        ensure!(
            queries.iter().any(|q| q.contains(&format!(
                "histogram_quantile({quantile}, sum by (le) (rate(portcullis_http_request_duration_seconds_bucket"
            ))),
            "no p{quantile} request latency"
        );
    }
    Ok(())
}

#[test]
fn dashboard_is_importable() -> Result<()> {
    let dash = dashboard()?;
    let inputs = array_at(&dash, "/__inputs")?;
    ensure!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS datasource input"
    );
    ensure!(dash["uid"].is_string() && dash["title"].is_string());
    ensure!(
        dash["id"].is_null(),
        "an exported dashboard carries no database id"
    );

    let panels = array_at(&dash, "/panels")?;
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?");
        ensure!(
            ids.insert(u64_at(p, "/id")?),
            "duplicate panel id ({title})"
        );
        let x = u64_at(p, "/gridPos/x")?;
        let w = u64_at(p, "/gridPos/w")?;
        ensure!(x + w <= 24, "panel {title} is wider than the grid");
        if p["type"] != "row" {
            assert_eq!(
                p.pointer("/datasource/uid").and_then(Value::as_str),
                Some("${DS_PROMETHEUS}"),
                "panel {title} datasource"
            );
            for t in array_at(p, "/targets")? {
                assert_eq!(
                    t.pointer("/datasource/uid").and_then(Value::as_str),
                    Some("${DS_PROMETHEUS}"),
                    "panel {title} target datasource"
                );
            }
        }
    }
    Ok(())
}
