//! The deployment files of `deploy/` (issue 4).
//!
//! - `deploy/systemd/*.service` pass `systemd-analyze verify` (ExecStart pointed at the binary
//!   just built, the provider drop-in included) without a single warning, and carry the
//!   hardening, restart and drain settings.
//! - `deploy/kubernetes/*.yaml` validate against the Kubernetes OpenAPI schemas of the pinned
//!   versions (`kubernetes-validate --strict`, schemas shipped inside the package: no network),
//!   and hold the facts no schema knows: termination grace above the drain, probe paths, non-root,
//!   Service and PodDisruptionBudget selecting the workers, secrets only as references.
//! - Every environment variable the deploy files set is one the code reads.
//!
//! The tools are installed by the tests themselves (`paysaga_testkit::tools`): the pinned
//! kubernetes-validate (version from `deploy/check-tools.sh`) into a virtual environment under
//! `$TMPDIR/paysaga-tools`, systemd-analyze with apt-get when missing and root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

/// Kubernetes versions the manifests are validated against: the oldest supported (the preStop
/// `sleep` action and `unhealthyPodEvictionPolicy` need 1.30+/1.31+) and the newest known.
const KUBERNETES_VERSIONS: &[&str] = &["1.31.0", "1.37.0"];
const INSTALL: &str = "bash deploy/check-tools.sh";
const UNIT_BINARY: &str = "/usr/local/bin/paysaga";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs a tool; a tool that cannot be started fails the test naming the install command.
fn run(cmd: &mut Command, tool: &str) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {tool} ({e}): install the deploy tools with `{INSTALL}` (as root)")
    })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A fresh scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("paysaga-deploy-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A systemd time span: `45s`, `10min`, `1h 30min`, or bare seconds.
fn systemd_span(value: &str) -> Duration {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Duration::from_secs(secs);
    }
    humantime::parse_duration(value).unwrap_or_else(|e| panic!("bad time span {value:?}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// systemd

/// A unit file as section -> key -> values (in order; a key may repeat).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_unit(path: &Path) -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    for (n, line) in read(path).lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "{}:{}: keep directives on one line",
            path.display(),
            n + 1
        );
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{}:{}: not key=value", path.display(), n + 1));
        unit.entry(section.clone())
            .or_default()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    unit
}

fn values<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a [String] {
    unit.get(section)
        .and_then(|s| s.get(key))
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn single<'a>(unit: &'a Unit, section: &str, key: &str, what: &str) -> &'a str {
    match values(unit, section, key) {
        [v] => v,
        other => panic!("{what}: expected exactly one [{section}] {key}=, found {other:?}"),
    }
}

/// `Environment=` assignments of a unit (or drop-in).
fn unit_environment(unit: &Unit) -> BTreeMap<String, String> {
    values(unit, "Service", "Environment")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("Environment=NAME=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// `NAME=value` lines of an environment file that are not commented out.
fn env_file(path: &Path) -> BTreeMap<String, String> {
    read(path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: {l:?} is not NAME=value", path.display()));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Copies the units into `dir` with ExecStart pointed at the binary just built, and the
/// provider drop-in into its `.service.d`.
fn stage_units(dir: &Path, extra_worker_line: Option<&str>) {
    let src = repo().join("deploy/systemd");
    let binary = env!("CARGO_BIN_EXE_paysaga");
    for name in ["paysaga-worker.service", "paysaga-migrate.service"] {
        let unit = read(&src.join(name));
        assert!(
            unit.contains(&format!("ExecStart={UNIT_BINARY} ")),
            "{name}: ExecStart should run {UNIT_BINARY}"
        );
        let mut unit = unit.replace(UNIT_BINARY, binary);
        if let (Some(line), "paysaga-worker.service") = (extra_worker_line, name) {
            unit.push_str(line);
            unit.push('\n');
        }
        std::fs::write(dir.join(name), unit).expect("write unit");
    }
    let dropins = dir.join("paysaga-worker.service.d");
    std::fs::create_dir_all(&dropins).expect("drop-in dir");
    std::fs::copy(
        src.join("providers.conf.example"),
        dropins.join("providers.conf"),
    )
    .expect("copy drop-in");
}

/// `systemd-analyze verify` on the staged units; its output lines that concern them.
fn verify_units(dir: &Path) -> (Output, Vec<String>) {
    let systemd_analyze =
        paysaga_testkit::tools::systemd_analyze().unwrap_or_else(|e| panic!("{e}"));
    let out = run(
        Command::new(systemd_analyze)
            .arg("verify")
            .arg("--man=no")
            .arg(dir.join("paysaga-worker.service"))
            .arg(dir.join("paysaga-migrate.service"))
            .env("SYSTEMD_LOG_COLOR", "0")
            .env("SYSTEMD_PAGER", ""),
        "systemd-analyze",
    );
    let ours = text(&out)
        .lines()
        .filter(|l| l.contains("paysaga") || l.contains(&*dir.to_string_lossy()))
        .map(str::to_string)
        .collect();
    (out, ours)
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let scratch = Scratch::new("verify");
    stage_units(&scratch.0, None);
    let (out, ours) = verify_units(&scratch.0);
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify failed or warned ({}):\n{}",
        out.status,
        text(&out)
    );

    // The check above is only worth something if verify reads our files and reports what it
    // dislikes: a unit with an unknown directive must produce a warning.
    let control = Scratch::new("verify-control");
    stage_units(&control.0, Some("NoSuchDirective=yes"));
    let (_, ours) = verify_units(&control.0);
    assert!(
        ours.iter().any(|l| l.contains("NoSuchDirective")),
        "systemd-analyze verify did not report an unknown directive; it does not check the units"
    );
}

/// Hardening both units share.
const HARDENING: &[(&str, &str)] = &[
    ("User", "paysaga"),
    ("Group", "paysaga"),
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("PrivateUsers", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("SystemCallArchitectures", "native"),
    ("EnvironmentFile", "/etc/paysaga/worker.env"),
    (
        "LoadCredential",
        "database_url:/etc/paysaga/credentials/database_url",
    ),
    ("UMask", "0077"),
];

#[test]
fn systemd_units_are_hardened_and_drain_within_the_stop_timeout() {
    let dir = repo().join("deploy/systemd");
    for name in ["paysaga-worker.service", "paysaga-migrate.service"] {
        let unit = parse_unit(&dir.join(name));
        for (key, want) in HARDENING {
            assert!(
                values(&unit, "Service", key).iter().any(|v| v == want),
                "{name}: [Service] {key}={want} missing (has {:?})",
                values(&unit, "Service", key)
            );
        }
        assert_eq!(
            values(&unit, "Service", "SystemCallFilter"),
            ["@system-service", "~@privileged @resources"],
            "{name}: SystemCallFilter"
        );
        for key in ["ReadWritePaths", "DynamicUser", "PermissionsStartOnly"] {
            assert!(
                values(&unit, "Service", key).is_empty(),
                "{name}: {key}= weakens the sandbox"
            );
        }
        assert_eq!(
            unit_environment(&unit)
                .get("DATABASE_URL_FILE")
                .map(String::as_str),
            Some("%d/database_url"),
            "{name}: the database URL comes from the credential"
        );
    }

    let worker = parse_unit(&dir.join("paysaga-worker.service"));
    let w = "paysaga-worker.service";
    let exec = single(&worker, "Service", "ExecStart", w);
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(
        args[..3],
        [UNIT_BINARY, "worker", "--no-migrate"],
        "{w}: {exec}"
    );
    let grace = args
        .iter()
        .position(|a| *a == "--shutdown-grace")
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("{w}: ExecStart must pin --shutdown-grace (got {exec})"));
    let grace = systemd_span(grace);
    let stop = systemd_span(single(&worker, "Service", "TimeoutStopSec", w));
    assert!(
        stop >= grace + Duration::from_secs(10),
        "{w}: TimeoutStopSec ({stop:?}) must exceed the drain grace ({grace:?}) by 10s or more"
    );
    assert_eq!(single(&worker, "Service", "KillSignal", w), "SIGTERM");
    assert_eq!(single(&worker, "Service", "Restart", w), "on-failure");
    assert!(systemd_span(single(&worker, "Service", "RestartSec", w)) >= Duration::from_secs(1));
    assert!(systemd_span(single(&worker, "Unit", "StartLimitIntervalSec", w)) > Duration::ZERO);
    let burst: u32 = single(&worker, "Unit", "StartLimitBurst", w)
        .parse()
        .expect("StartLimitBurst");
    assert!(burst >= 1);
    assert!(values(&worker, "Unit", "Requires").contains(&"paysaga-migrate.service".to_string()));
    assert!(values(&worker, "Unit", "After").contains(&"paysaga-migrate.service".to_string()));
    assert_eq!(
        single(&worker, "Install", "WantedBy", w),
        "multi-user.target"
    );

    let migrate = parse_unit(&dir.join("paysaga-migrate.service"));
    let m = "paysaga-migrate.service";
    assert_eq!(single(&migrate, "Service", "Type", m), "oneshot");
    assert_eq!(
        single(&migrate, "Service", "ExecStart", m),
        format!("{UNIT_BINARY} migrate")
    );

    // Provider secrets: every NAME_FILE of the drop-in names a credential the drop-in loads.
    let dropin = parse_unit(&dir.join("providers.conf.example"));
    let loaded: BTreeSet<String> = values(&dropin, "Service", "LoadCredential")
        .iter()
        .map(|v| {
            let (id, path) = v.split_once(':').expect("LoadCredential=ID:PATH");
            assert_eq!(path, format!("/etc/paysaga/credentials/{id}"));
            id.to_string()
        })
        .collect();
    let env = unit_environment(&dropin);
    assert!(!env.is_empty(), "providers.conf.example sets no variable");
    for (name, value) in &env {
        assert!(name.ends_with("_FILE"), "{name}: secrets only, as files");
        let id = value
            .strip_prefix("%d/")
            .unwrap_or_else(|| panic!("{name}={value}: not in the credentials directory"));
        assert!(loaded.contains(id), "{name}: credential {id} is not loaded");
    }

    // The environment file holds no secret and cannot move the drain past TimeoutStopSec.
    let example = env_file(&dir.join("worker.env.example"));
    for name in example.keys() {
        assert!(
            !is_secret_name(name),
            "worker.env.example: {name} is a secret; use a credential"
        );
        assert_ne!(name, "PAYSAGA_SHUTDOWN_GRACE");
    }
}

fn is_secret_name(name: &str) -> bool {
    let name = name.strip_suffix("_FILE").unwrap_or(name);
    name == "DATABASE_URL"
        || ["_SECRET", "_TOKEN", "_API_KEY", "_PASSWORD"]
            .iter()
            .any(|s| name.ends_with(s))
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

fn kubernetes_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// Every `*.yaml` of deploy/kubernetes, sorted.
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kubernetes_dir())
        .expect("deploy/kubernetes")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "deploy/kubernetes has too few manifests");
    files
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

/// The Python of the test support's virtual environment with the pinned kubernetes-validate
/// (version from deploy/check-tools.sh), installed there on first use.
fn tools_python() -> PathBuf {
    let script = read(&repo().join("deploy/check-tools.sh"));
    let pinned = script
        .lines()
        .find_map(|l| l.strip_prefix("KUBERNETES_VALIDATE_VERSION="))
        .expect("check-tools.sh pins KUBERNETES_VALIDATE_VERSION")
        .trim()
        .to_string();
    paysaga_testkit::tools::kubernetes_validate(&pinned)
}

/// `kubernetes-validate --strict --quiet`, the pinned version.
fn kubernetes_validate() -> Command {
    let mut cmd = Command::new(tools_python());
    cmd.args(["-m", "kubernetes_validate", "--strict", "--quiet"]);
    cmd
}

/// Schema validation of `files` against every pinned Kubernetes version; a warning (e.g. a
/// kind or apiVersion without a schema) fails as well.
fn validate_against_schemas(files: &[PathBuf]) {
    for version in KUBERNETES_VERSIONS {
        let out = run(
            kubernetes_validate()
                .args(["--kubernetes-version", version])
                .args(files),
            "kubernetes-validate",
        );
        let output = text(&out);
        assert!(
            out.status.success() && output.trim().is_empty(),
            "manifests do not validate against Kubernetes {version} ({}):\n{output}",
            out.status
        );
    }
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let files: Vec<PathBuf> = manifest_files()
        .into_iter()
        .filter(|p| file_name(p) != "kustomization.yaml")
        .collect();
    validate_against_schemas(&files);

    // The validator must reject what the API server would: a control with a bad field.
    let scratch = Scratch::new("schema-control");
    let bad = scratch.0.join("bad.yaml");
    let deployment = read(&kubernetes_dir().join("deployment.yaml"));
    std::fs::write(&bad, deployment.replacen("replicas: 2", "replicas: two", 1)).expect("write");
    let out = run(
        kubernetes_validate()
            .args(["--kubernetes-version", KUBERNETES_VERSIONS[0]])
            .arg(&bad),
        "kubernetes-validate",
    );
    assert!(
        !out.status.success(),
        "kubernetes-validate accepted replicas: two:\n{}",
        text(&out)
    );

    // The kustomization as kubectl renders it, where kubectl is installed (the schema has no
    // Kustomization kind; its structure is checked in the next test in any case).
    match Command::new("kubectl")
        .args(["kustomize"])
        .arg(kubernetes_dir())
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "kubectl kustomize failed:\n{}",
                text(&out)
            );
            let rendered = scratch.0.join("rendered.yaml");
            std::fs::write(&rendered, &out.stdout).expect("write");
            validate_against_schemas(&[rendered]);
        }
        Err(e) => {
            eprintln!("kubectl not available ({e}): the rendered kustomization is not validated")
        }
    }
}

/// Every YAML document of every manifest, as JSON, by file name (PyYAML comes with
/// kubernetes-validate).
fn load_manifests() -> BTreeMap<String, Vec<Value>> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        out = {}\n\
        for p in sys.argv[1:]:\n    \
            with open(p) as f:\n        \
                out[p] = [d for d in yaml.safe_load_all(f) if d is not None]\n\
        json.dump(out, sys.stdout)\n";
    let files = manifest_files();
    let out = run(
        Command::new(tools_python())
            .arg("-c")
            .arg(SCRIPT)
            .args(&files),
        "python3",
    );
    assert!(
        out.status.success(),
        "cannot load the manifests (PyYAML missing? `{INSTALL}`):\n{}",
        text(&out)
    );
    let by_path: BTreeMap<String, Vec<Value>> =
        serde_json::from_slice(&out.stdout).expect("manifests as JSON");
    by_path
        .into_iter()
        .map(|(p, docs)| (file_name(Path::new(&p)), docs))
        .collect()
}

fn one<'a>(manifests: &'a BTreeMap<String, Vec<Value>>, file: &str, kind: &str) -> &'a Value {
    let docs = manifests
        .get(file)
        .unwrap_or_else(|| panic!("deploy/kubernetes/{file} missing"));
    match docs.as_slice() {
        [doc] if doc["kind"] == kind => doc,
        _ => panic!("{file}: expected one {kind}"),
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str, what: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: {pointer} is not a string"))
}

fn int_at(v: &Value, pointer: &str, what: &str) -> i64 {
    v.pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("{what}: {pointer} is not an integer"))
}

/// Pod and container security of a pod template: the "restricted" Pod Security Standard and more.
fn assert_restricted(pod: &Value, what: &str) {
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
    assert!(
        int_at(pod, "/securityContext/runAsUser", what) >= 1000,
        "{what}: runAsUser"
    );
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
        "{what}"
    );
    assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(pod[key].is_null() || pod[key] == false, "{what}: {key}");
    }
    let containers = pod["containers"].as_array().expect("containers");
    assert!(!containers.is_empty());
    for c in containers {
        let sc = &c["securityContext"];
        let name = format!("{what} container {}", c["name"]);
        assert_eq!(sc["runAsNonRoot"], true, "{name}");
        assert_ne!(sc["runAsUser"], 0, "{name}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{name}"
        );
        assert!(
            sc["capabilities"]["add"].is_null(),
            "{name}: adds capabilities"
        );
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        assert!(
            sc["privileged"].is_null() || sc["privileged"] == false,
            "{name}"
        );
        for kind in ["requests", "limits"] {
            for res in ["cpu", "memory"] {
                assert!(
                    c["resources"][kind][res].is_string(),
                    "{name}: resources.{kind}.{res} missing"
                );
            }
        }
        assert_eq!(
            env_var(c, "DATABASE_URL")["valueFrom"]["secretKeyRef"]["name"],
            "paysaga-database",
            "{name}: DATABASE_URL comes from the Secret"
        );
    }
}

fn env_var<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("container {}: no env {name}", container["name"]))
}

fn probe_path<'a>(container: &'a Value, probe: &str) -> &'a str {
    assert!(
        container[probe]["httpGet"]["port"] == "http"
            || container[probe]["httpGet"]["port"] == 8080,
        "{probe}: not on the HTTP port"
    );
    container[probe]["httpGet"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("{probe}: no httpGet path"))
}

#[test]
fn kubernetes_manifests_drain_probe_and_run_as_non_root() {
    let m = load_manifests();

    // kustomization.yaml applies every manifest except the secret example.
    let kustomization = one(&m, "kustomization.yaml", "Kustomization");
    let resources: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("resource path").to_string())
        .collect();
    let expected: BTreeSet<String> = m
        .keys()
        .filter(|f| *f != "kustomization.yaml" && *f != "secret.example.yaml")
        .cloned()
        .collect();
    assert_eq!(resources, expected, "kustomization.yaml resources");

    // Deployment.
    let d = one(&m, "deployment.yaml", "Deployment");
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let pod = &d["spec"]["template"]["spec"];
    let pod_labels = &d["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&d["spec"]["selector"]["matchLabels"], pod_labels);
    assert_restricted(pod, "deployment");
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let worker = &containers[0];
    assert_eq!(
        worker["args"],
        serde_json::json!(["worker", "--no-migrate"])
    );
    assert_eq!(
        env_var(worker, "PAYSAGA_HTTP_ADDR")["value"],
        "0.0.0.0:8080"
    );
    let port = worker["ports"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "http"))
        .expect("container port named http");
    assert_eq!(port["containerPort"], 8080);
    assert_eq!(probe_path(worker, "livenessProbe"), "/healthz");
    assert_eq!(probe_path(worker, "readinessProbe"), "/readyz");
    assert_eq!(probe_path(worker, "startupProbe"), "/healthz");

    // Termination: preStop + drain grace + margin within terminationGracePeriodSeconds.
    let grace = systemd_span(str_at(
        env_var(worker, "PAYSAGA_SHUTDOWN_GRACE"),
        "/value",
        "PAYSAGA_SHUTDOWN_GRACE",
    ));
    let pre_stop = worker
        .pointer("/lifecycle/preStop/sleep/seconds")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let termination = int_at(pod, "/terminationGracePeriodSeconds", "deployment");
    let termination = Duration::from_secs(u64::try_from(termination).expect("positive"));
    assert!(
        termination >= grace + Duration::from_secs(pre_stop + 5),
        "terminationGracePeriodSeconds ({termination:?}) must exceed preStop ({pre_stop}s) + \
         PAYSAGA_SHUTDOWN_GRACE ({grace:?}) with a margin"
    );

    // Configuration: the ConfigMap cannot override what the Deployment fixes, holds no secret,
    // and every *_FILE it names is a key of the mounted Secret.
    let config = one(&m, "configmap.yaml", "ConfigMap");
    let config_name = str_at(config, "/metadata/name", "configmap");
    assert!(worker["envFrom"]
        .as_array()
        .expect("envFrom")
        .iter()
        .any(|e| e["configMapRef"]["name"] == config_name));
    let data = config["data"].as_object().expect("configmap data");
    for fixed in [
        "PAYSAGA_SHUTDOWN_GRACE",
        "PAYSAGA_HTTP_ADDR",
        "DATABASE_URL",
    ] {
        assert!(!data.contains_key(fixed), "configmap.yaml sets {fixed}");
    }
    let secrets = m.get("secret.example.yaml").expect("secret.example.yaml");
    let secret_keys = |name: &str| -> BTreeSet<String> {
        let s = secrets
            .iter()
            .find(|s| s["kind"] == "Secret" && s["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("secret.example.yaml has no Secret {name}"));
        s["stringData"]
            .as_object()
            .expect("stringData")
            .keys()
            .cloned()
            .collect()
    };
    let volumes = pod["volumes"].as_array().expect("volumes");
    let mounts = worker["volumeMounts"].as_array().expect("volumeMounts");
    let mut files = 0;
    for (name, value) in data {
        let value = value.as_str().expect("configmap values are strings");
        if !name.ends_with("_FILE") {
            assert!(!is_secret_name(name), "configmap.yaml: {name} is a secret");
            continue;
        }
        files += 1;
        let (dir, key) = value.rsplit_once('/').expect("absolute path");
        let mount = mounts
            .iter()
            .find(|mt| mt["mountPath"] == dir)
            .unwrap_or_else(|| panic!("{name}={value}: {dir} is not mounted"));
        assert_eq!(mount["readOnly"], true, "{dir}");
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("volume of the mount");
        let secret = str_at(volume, "/secret/secretName", "secret volume");
        assert_eq!(
            volume["secret"]["defaultMode"], 0o440,
            "{secret}: file mode"
        );
        assert!(
            secret_keys(secret).contains(key),
            "{name}: secret.example.yaml {secret} has no key {key}"
        );
    }
    assert!(files > 0, "configmap.yaml names no secret file");
    assert!(
        !pod["securityContext"]["fsGroup"].is_null(),
        "fsGroup makes the 0440 secret files readable"
    );

    // Secret example: placeholders only.
    for s in secrets {
        assert!(
            s["data"].is_null(),
            "secret.example.yaml: use stringData placeholders"
        );
        for (k, v) in s["stringData"].as_object().expect("stringData") {
            assert!(
                v.as_str().is_some_and(|v| v.contains("REPLACE-ME")),
                "secret.example.yaml: {k} is not a REPLACE-ME placeholder"
            );
        }
    }

    // Migration Job.
    let job = one(&m, "migration-job.yaml", "Job");
    let job_pod = &job["spec"]["template"]["spec"];
    assert_restricted(job_pod, "migration job");
    assert_eq!(
        job_pod["containers"][0]["args"],
        serde_json::json!(["migrate"])
    );
    assert_eq!(job_pod["containers"][0]["image"], worker["image"]);
    assert_eq!(job_pod["containers"][0]["command"], worker["command"]);
    assert!(matches!(
        job_pod["restartPolicy"].as_str(),
        Some("Never" | "OnFailure")
    ));
    assert!(job["spec"]["backoffLimit"].is_u64());

    // Service for webhooks: port 80 to the worker's http port, selecting the workers.
    let svc = one(&m, "service.yaml", "Service");
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    let svc_port = &svc["spec"]["ports"][0];
    assert_eq!(svc_port["port"], 80);
    assert!(svc_port["targetPort"] == "http" || svc_port["targetPort"] == 8080);
    assert_selects(&svc["spec"]["selector"], pod_labels, "service");

    // PodDisruptionBudget.
    let pdb = one(&m, "pdb.yaml", "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert!(pdb["spec"]["minAvailable"].as_i64() < d["spec"]["replicas"].as_i64());
    assert_selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels, "pdb");
}

fn assert_selects(selector: &Value, labels: &Value, what: &str) {
    let selector = selector.as_object().expect("selector");
    assert!(!selector.is_empty(), "{what}: empty selector");
    for (k, v) in selector {
        assert_eq!(
            &labels[k], v,
            "{what}: selector {k} does not match the pod labels"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Both

/// Every variable the deploy files set is read by the code (a typo would be silently ignored).
#[test]
fn deploy_files_set_only_variables_the_code_reads() {
    let mut sources = String::new();
    let mut stack = vec![repo().join("crates")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&read(&path));
            }
        }
    }
    let known = |name: &str| {
        name == "RUST_LOG"
            || sources.contains(&format!("\"{name}\""))
            || name
                .strip_suffix("_FILE")
                .is_some_and(|base| sources.contains(&format!("\"{base}\"")))
    };

    let systemd = repo().join("deploy/systemd");
    let mut names: Vec<(String, String)> = Vec::new();
    for file in [
        "paysaga-worker.service",
        "paysaga-migrate.service",
        "providers.conf.example",
    ] {
        for name in unit_environment(&parse_unit(&systemd.join(file))).into_keys() {
            names.push((file.to_string(), name));
        }
    }
    for name in env_file(&systemd.join("worker.env.example")).into_keys() {
        names.push(("worker.env.example".to_string(), name));
    }
    let m = load_manifests();
    let config = one(&m, "configmap.yaml", "ConfigMap");
    for name in config["data"].as_object().expect("data").keys() {
        names.push(("configmap.yaml".to_string(), name.clone()));
    }
    for (file, kind) in [
        ("deployment.yaml", "Deployment"),
        ("migration-job.yaml", "Job"),
    ] {
        let pod = &one(&m, file, kind)["spec"]["template"]["spec"];
        for c in pod["containers"].as_array().expect("containers") {
            for e in c["env"].as_array().into_iter().flatten() {
                names.push((file.to_string(), str_at(e, "/name", file).to_string()));
            }
        }
    }
    assert!(names.len() > 10);
    let unknown: Vec<String> = names
        .iter()
        .filter(|(_, n)| !known(n))
        .map(|(f, n)| format!("{f}: {n}"))
        .collect();
    assert!(unknown.is_empty(), "variables no code reads: {unknown:?}");
}

/// The production build the deploy docs give leaves the `dev` feature (sandbox, demo,
/// development credentials) out.
#[test]
fn deploy_docs_build_the_production_binary_without_the_dev_feature() {
    let mut builds = Vec::new();
    for doc in ["deploy/systemd/README.md", "deploy/kubernetes/README.md"] {
        for line in read(&repo().join(doc)).lines() {
            if line.contains("cargo build") || line.contains("cargo install") {
                builds.push((doc, line.to_string()));
            }
        }
    }
    assert!(
        !builds.is_empty(),
        "the deploy docs say how to build paysaga"
    );
    for (doc, line) in builds {
        assert!(
            line.contains("--no-default-features"),
            "{doc}: a production build must leave the dev feature out: {line}"
        );
    }
}
