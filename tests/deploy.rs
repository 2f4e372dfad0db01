//! deploy/: the Kubernetes manifests, the image and the monitoring rules must agree with each
//! other and with bearerd itself. A port, a path, an env var or a metric name that drifts
//! apart would fail only in a cluster; here it fails the build.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

fn yaml(rel: &str) -> Value {
    let text = std::fs::read_to_string(deploy(rel)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for key in path {
        cur = &cur[*key];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("no string at {path:?}"))
}

/// The sidecar's config as the pod sees it, and the pod spec.
struct Pod {
    spec: Value,
    sidecar: Value,
    toml: toml::Value,
    config_path: String,
}

/// The manifest sets: one sidecar store per pod, the fleet sharing Redis, and the
/// secretless pod authenticating with projected service-account tokens.
const VARIANTS: [&str; 3] = ["kubernetes", "kubernetes/fleet", "kubernetes/secretless"];

/// Every `{ file = "…" }` the config reads.
fn config_files(text: &str) -> Vec<String> {
    text.match_indices("{ file = \"")
        .map(|(at, m)| {
            let rest = &text[at + m.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect()
}

/// The key of the Secret the pod mounts at `path`, when a Secret volume holds it: mounted
/// read-only (mode 0440 at most), so a rotated Secret is read live.
fn mounted_secret_key(pod: &Pod, path: &str) -> Option<String> {
    let (mount, volume) = volume_holding(pod, path);
    let secret = volume.get("secret")?;
    assert!(secret["secretName"].as_str().is_some());
    assert_eq!(mount["readOnly"], true, "{path}");
    // `0440` in the manifest is octal to Kubernetes (YAML 1.1); serde_yaml keeps it as text.
    let mode = match &secret["defaultMode"] {
        Value::Number(n) => n.as_u64().unwrap_or(0o644),
        Value::String(t) => u64::from_str_radix(t.trim_start_matches("0o"), 8).unwrap_or(0o644),
        _ => 0o644,
    };
    assert!(
        [0o400, 0o440].contains(&mode),
        "{path}: Secret files with mode {mode:o}"
    );
    Some(
        Path::new(path)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string(),
    )
}

/// The projected service-account token the pod mounts at `path`, with its audience.
fn projected_token_audience(pod: &Pod, path: &str) -> String {
    let (_, volume) = volume_holding(pod, path);
    let name = Path::new(path).file_name().unwrap().to_str().unwrap();
    let source = volume["projected"]["sources"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{path} is not on a projected volume"))
        .iter()
        .find(|s| s["serviceAccountToken"]["path"] == name)
        .unwrap_or_else(|| panic!("{path} is not a projected service-account token"));
    let token = &source["serviceAccountToken"];
    assert!(
        token["expirationSeconds"].as_u64().unwrap_or(3600) >= 600,
        "the kubelet's minimum"
    );
    let audience = str_at(token, &["audience"]);
    assert!(!audience.is_empty());
    audience.to_string()
}

fn pod() -> Pod {
    pod_in("kubernetes")
}

fn pod_in(dir: &str) -> Pod {
    let deployment = yaml(&format!("{dir}/deployment.yaml"));
    let spec = deployment["spec"]["template"]["spec"].clone();
    let sidecar = spec["initContainers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "bearerd")
        .expect("an init container named bearerd")
        .clone();
    let args: Vec<&str> = sidecar["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&args[..2], ["run", "-c"], "{args:?}");
    let config_path = args[2].to_string();
    let file_name = Path::new(&config_path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let toml_text = std::fs::read_to_string(deploy(&format!("{dir}/{file_name}"))).unwrap();
    Pod {
        toml: toml::from_str(&toml_text).unwrap(),
        spec,
        sidecar,
        config_path,
    }
}

fn listen(toml: &toml::Value, key: &str) -> SocketAddr {
    toml["server"][key].as_str().unwrap().parse().unwrap()
}

/// The mount of the pod volume that holds `path`, and that volume.
fn volume_holding<'a>(pod: &'a Pod, path: &str) -> (&'a Value, &'a Value) {
    let mount = pod.sidecar["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| Path::new(path).parent() == Some(Path::new(str_at(m, &["mountPath"]))))
        .unwrap_or_else(|| panic!("no volume is mounted where {path} lives"));
    let volume = pod.spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    (mount, volume)
}

#[test]
fn the_sidecar_config_passes_check_with_exactly_the_env_the_pod_provides() {
    for dir in VARIANTS {
        config_passes_check_with_exactly_the_pods_env(dir);
    }
}

fn config_passes_check_with_exactly_the_pods_env(dir: &str) {
    let pod = pod_in(dir);
    let file = deploy(dir).join(Path::new(&pod.config_path).file_name().unwrap());
    config_passes_check_in(&pod, &file);
}

/// `bearerd check` on `file` as the pod runs it: with the env the pod gives the sidecar, and
/// the files its volumes hold where the config names them.
fn config_passes_check_in(pod: &Pod, file: &Path) {
    let env: Vec<String> = pod.sidecar["env"]
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| str_at(e, &["name"]).to_string())
        .collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bearerd"));
    cmd.env_clear();
    for name in &env {
        // Each comes from a Secret in the cluster; any value of the right shape will do here.
        let value = match name.as_str() {
            "BEARERD_STORE_KEY" => bearerd::store::generate_key(),
            "BEARERD_REDIS_URL" => "rediss://orders:from-a-secret@redis:6380/0".into(),
            _ => "from-a-secret".into(),
        };
        cmd.env(name, value);
    }
    // The files the kubelet would write: the Secret's keys, and projected tokens (JWTs for
    // their audiences), each where the pod mounts it.
    let mut text = std::fs::read_to_string(file).unwrap();
    let tokens = std::env::temp_dir().join(format!("bearerd-deploy-{}", support::rand_suffix()));
    std::fs::create_dir_all(&tokens).unwrap();
    let cluster = support::keys::TestKey::generate(support::keys::KeyKind::Rsa);
    for (i, path) in config_files(&text).into_iter().enumerate() {
        let content = match mounted_secret_key(pod, &path) {
            Some(key) => match key.as_str() {
                "store-key" => bearerd::store::generate_key(),
                "redis-url" => "rediss://orders:from-a-secret@redis:6380/0".into(),
                sentinel if sentinel.starts_with("redis-sentinel-") => {
                    format!("rediss://orders:from-a-secret@{sentinel}.redis-headless:26379")
                }
                _ => "from-a-secret".into(),
            },
            None => {
                let audience = projected_token_audience(pod, &path);
                let now = support::keys::now();
                cluster.mint(&serde_json::json!({
                    "iss": "https://kubernetes.default.svc.cluster.local",
                    "sub": "system:serviceaccount:default:orders",
                    "aud": [audience], "iat": now, "exp": now + 3600,
                }))
            }
        };
        let fixture = tokens.join(format!("file-{i}"));
        std::fs::write(&fixture, content).unwrap();
        text = text.replace(&path, &fixture.display().to_string());
    }
    let checked = tokens.join("bearerd.toml");
    std::fs::write(&checked, &text).unwrap();
    let out = cmd.args(["check", "-c"]).arg(&checked).output().unwrap();
    assert!(
        out.status.success(),
        "with the pod's env ({env:?}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And each of those env vars is needed: none is left over from an older config.
    let text = std::fs::read_to_string(file).unwrap();
    for name in &env {
        assert!(text.contains(&format!("\"{name}\"")), "{name} is unused");
    }
}

#[test]
fn the_pod_reaches_the_sidecar_where_the_config_listens() {
    for dir in VARIANTS {
        pod_reaches_the_sidecar(dir);
    }
}

fn pod_reaches_the_sidecar(dir: &str) {
    let pod = pod_in(dir);
    let s = &pod.sidecar;
    assert_eq!(s["restartPolicy"], "Always", "a native sidecar");

    // The config is the file the generated ConfigMap holds, mounted where `run -c` reads it.
    let (mount, volume) = volume_holding(&pod, &pod.config_path);
    assert_eq!(mount["readOnly"], true);
    let kustomization = yaml(&format!("{dir}/kustomization.yaml"));
    let generated = kustomization["configMapGenerator"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|g| g["name"] == volume["configMap"]["name"])
        .expect("the config volume's ConfigMap is generated by kustomize");
    let file_name = Path::new(&pod.config_path).file_name().unwrap();
    assert!(generated["files"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|f| Path::new(f.as_str().unwrap()) == Path::new(file_name)));
    for resource in kustomization["resources"].as_sequence().unwrap() {
        assert!(
            deploy(dir).join(resource.as_str().unwrap()).exists(),
            "{resource:?}"
        );
    }

    // Probes and Prometheus reach the pod's IP: they get a listener of their own with
    // health, readiness and metrics only. Status and the operations stay on loopback, so
    // no admin token is needed and nothing else is readable cluster-wide.
    let admin = listen(&pod.toml, "admin_listen");
    assert!(admin.ip().is_loopback(), "{dir}: admin on {admin}");
    let probes = listen(&pod.toml, "metrics_listen");
    assert!(!probes.ip().is_loopback(), "probes cannot reach {probes}");
    let admin_port = s["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "bearerd-admin")
        .unwrap();
    assert_eq!(
        admin_port["containerPort"].as_u64(),
        Some(probes.port().into())
    );
    // Readiness after start does not follow the identity provider (an outage must not
    // take every replica out of its Service); the startup gate does.
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
    ] {
        assert_eq!(str_at(s, &[probe, "httpGet", "path"]), path, "{probe}");
        assert_eq!(
            str_at(s, &[probe, "httpGet", "port"]),
            "bearerd-admin",
            "{probe}"
        );
    }

    // Secrets come as files bearerd re-reads, never as env vars a rotation cannot reach.
    for e in s["env"]
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        assert!(
            e["valueFrom"].get("secretKeyRef").is_none(),
            "{dir}: {} comes from a Secret as an env var",
            str_at(e, &["name"])
        );
    }
    assert_eq!(s["securityContext"]["readOnlyRootFilesystem"], true);
    match pod.toml["store"]["backend"].as_str().unwrap() {
        "file" => {
            // The file store must be on a writable volume: the root filesystem is read-only,
            // and a volume claim mounts owned by root unless the pod's fsGroup is bearerd's.
            assert_eq!(
                pod.spec["securityContext"]["fsGroup"],
                s["securityContext"]["runAsGroup"]
            );
            let store = pod.toml["store"]["path"].as_str().unwrap();
            let (mount, _) = volume_holding(&pod, store);
            assert_ne!(mount["readOnly"], true, "the store's volume is read-only");
        }
        "redis" => {
            // Several replicas share the store: that is what it is for.
            let deployment = yaml(&format!("{dir}/deployment.yaml"));
            assert!(deployment["spec"]["replicas"].as_u64().unwrap() > 1);
            assert_eq!(
                pod.spec["volumes"].as_sequence().unwrap().len(),
                2,
                "only the config and the Secret"
            );
        }
        "memory" => {
            // Secretless: nothing to keep; the IdP credentials are projected tokens, and
            // the pod mounts nothing else.
            let files = config_files(
                &std::fs::read_to_string(deploy(&format!("{dir}/bearerd.toml"))).unwrap(),
            );
            assert!(!files.is_empty(), "{dir}: no projected token is used");
            for path in &files {
                projected_token_audience(&pod, path);
            }
            assert_eq!(pod.spec["automountServiceAccountToken"], false);
            assert_eq!(pod.spec["volumes"].as_sequence().unwrap().len(), 2);
            assert!(s.get("env").is_none(), "no Secret in the environment");
        }
        other => panic!("{dir}: store backend {other}"),
    }

    // The app's base URL points at the proxy listener and a configured path prefix.
    let proxy = listen(&pod.toml, "proxy_listen");
    let app = &pod.spec["containers"][0];
    let urls: Vec<&str> = app["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| e["value"].as_str())
        .filter(|v| v.starts_with("http://"))
        .collect();
    assert!(!urls.is_empty());
    let prefixes: Vec<&str> = pod.toml["upstreams"]
        .as_table()
        .unwrap()
        .values()
        .filter_map(|u| u.get("path_prefix")?.as_str())
        .collect();
    for url in urls {
        let rest = url
            .strip_prefix(&format!("http://{proxy}"))
            .unwrap_or_else(|| panic!("{url} is not bearerd's listener {proxy}"));
        assert!(
            prefixes.contains(&rest),
            "{url}: no upstream has prefix {rest}"
        );
    }

    // The PodMonitor scrapes this pod's admin port.
    let monitor = yaml("monitoring/podmonitor.yaml");
    let labels = &yaml(&format!("{dir}/deployment.yaml"))["spec"]["template"]["metadata"]["labels"];
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(&labels[k.as_str().unwrap()], v);
    }
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "bearerd-admin");
    assert_eq!(endpoint["path"], "/metrics");
}

#[test]
fn the_deployment_passes_the_kubernetes_api_schema() {
    // Strict: an unknown or misspelt field fails. 1.29 is the first release with native
    // sidecars (an init container's `restartPolicy`). scripts/setup.sh installs the checker.
    for dir in VARIANTS {
        passes_the_api_schema(&deploy(&format!("{dir}/deployment.yaml")));
    }
}

/// Every document of a manifest file against the Kubernetes API schema, strictly.
fn passes_the_api_schema(file: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .env("PYTHONPATH", root.join("target/pylib"))
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.29.0"])
        .arg(file)
        .output()
        .expect("python3: run scripts/setup.sh");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("passed") && !text.contains("failed"),
        "{}: {text}\n(kubernetes-validate missing? run scripts/setup.sh)",
        file.display()
    );
}

#[test]
fn the_image_runs_as_the_pod_expects() {
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    let pod = pod();
    let line = |prefix: &str| {
        dockerfile
            .lines()
            .rfind(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in the Dockerfile"))
            .to_string()
    };
    // Pingora does not build without cmake.
    assert!(dockerfile.contains("cmake"));
    // The user the image runs as is the one the pod's securityContext asks for.
    let uid = pod.sidecar["securityContext"]["runAsUser"]
        .as_u64()
        .unwrap();
    assert_eq!(line("USER "), format!("USER {uid}:{uid}"));
    // Its default config path is where the pod mounts the config.
    assert_eq!(
        line("ENV BEARERD_CONFIG="),
        format!("ENV BEARERD_CONFIG={}", pod.config_path)
    );
    // The entrypoint is the binary the build stage copies in.
    let entry = line("ENTRYPOINT ");
    let binary = entry.split('"').nth(1).unwrap();
    assert!(line("COPY --from=build").ends_with(&format!(" {binary}")));
    // The store's directory exists and belongs to that user (for a volume without one).
    let store_dir = Path::new(pod.toml["store"]["path"].as_str().unwrap())
        .parent()
        .unwrap()
        .display()
        .to_string();
    assert!(dockerfile.contains(&format!("chown {uid}:{uid} {store_dir}")));
}

/// Every `bearerd_…{…}` selector in a PromQL expression: the metric and its label matchers.
fn selectors(expr: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("bearerd_") {
        rest = &rest[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = rest[..end].to_string();
        rest = &rest[end..];
        let mut matchers = Vec::new();
        if let Some(body) = rest.strip_prefix('{') {
            let close = body.find('}').unwrap();
            for m in body[..close].split(',').filter(|m| !m.trim().is_empty()) {
                let (label, value) = m.split_once(['=', '!']).unwrap();
                let value = value.trim_start_matches(['=', '~', '!']).trim();
                matchers.push((
                    label.trim().to_string(),
                    value.trim_matches('"').to_string(),
                ));
            }
            rest = &body[close..];
        }
        out.push((name, matchers));
    }
    out
}

/// The label lists of `by`, `without`, `on` and `ignoring` in a PromQL expression, with or
/// without a space before the parenthesis.
fn grouping_labels(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (open, _) in expr.match_indices('(') {
        let before = expr[..open].trim_end();
        let word_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        if ["by", "without", "on", "ignoring"].contains(&&before[word_start..]) {
            let body = &expr[open + 1..];
            out.extend(
                body[..body.find(')').unwrap()]
                    .split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty()),
            );
        }
    }
    out
}

/// Checks each expression against a running sidecar's /metrics: the metric exists, every
/// label it filters or groups by exists on it, and every enumerated value it asks for
/// (`state`, `result`, `outcome`, `trigger`) is one bearerd exports.
fn check_against(exprs: &[String], scrape: &str, what: &str) {
    // metric name → label → values seen
    let mut series: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for line in scrape.lines().filter(|l| l.starts_with("bearerd_")) {
        let (name, labels) = match line.split_once('{') {
            Some((n, l)) => (n, &l[..l.find('}').unwrap()]),
            None => (line.split(' ').next().unwrap(), ""),
        };
        let entry = series.entry(name.to_string()).or_default();
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap();
            entry
                .entry(k.to_string())
                .or_default()
                .insert(v.trim_matches('"').to_string());
        }
    }
    // Labels Prometheus adds, and the histogram bucket label.
    let external = ["job", "instance", "le", "namespace", "pod"];
    for expr in exprs {
        let found = selectors(expr);
        if found.is_empty() {
            // Only the restart alert reads another exporter's series (kube-state-metrics).
            assert!(
                expr.contains(
                    "kube_pod_init_container_status_restarts_total{container=\"bearerd\"}"
                ),
                "{what}: no bearerd metric in {expr}"
            );
            continue;
        }
        let mut labels_in_expr: BTreeSet<&str> = external.into_iter().collect();
        for (name, matchers) in &found {
            let labels = series
                .get(name)
                .unwrap_or_else(|| panic!("{what}: {name} is not a metric bearerd exports"));
            labels_in_expr.extend(labels.keys().map(String::as_str));
            for (label, value) in matchers {
                if external.contains(&label.as_str()) {
                    continue;
                }
                let values = labels
                    .get(label)
                    .unwrap_or_else(|| panic!("{what}: {name} has no label {label}"));
                if ["state", "result", "outcome", "trigger"].contains(&label.as_str()) {
                    for v in value.split('|') {
                        assert!(
                            values.contains(v),
                            "{what}: {name}{{{label}=\"{v}\"}} never exists: {values:?}"
                        );
                    }
                }
            }
        }
        for label in grouping_labels(expr) {
            assert!(
                labels_in_expr.contains(label.as_str()),
                "{what}: grouping by {label}, which no metric in {expr} has"
            );
        }
    }
}

fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_use_only_series_bearerd_exports() {
    let h = support::Harness::start(support::Options::default()).await;
    h.wait_ready().await;
    let scrape = h.metrics().await;

    let rules = yaml("monitoring/alerts.yaml");
    let mut alerts = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            assert!(rule["alert"]
                .as_str()
                .is_some_and(|a| a.starts_with("Bearerd")));
            assert!(rule["labels"]["severity"].as_str().is_some());
            assert!(rule["annotations"]["summary"].as_str().is_some());
            // Each links to its section of the runbook in deploy/README.md.
            let runbook = str_at(rule, &["annotations", "runbook_url"]);
            let anchor = runbook
                .strip_prefix("deploy/README.md#")
                .unwrap_or_else(|| panic!("runbook_url {runbook}"));
            let readme = std::fs::read_to_string(deploy("README.md")).unwrap();
            assert!(
                readme.lines().any(|l| l
                    .strip_prefix("### ")
                    .is_some_and(|h| h.to_lowercase() == anchor)),
                "no runbook section for {anchor}"
            );
            alerts.push(str_at(rule, &["expr"]).to_string());
        }
    }
    assert!(alerts.len() >= 5, "{} alerts", alerts.len());
    check_against(&alerts, &scrape, "alerts.yaml");

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("monitoring/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    // Pods come and go: the dashboard narrows by namespace, job and pod, not instance alone.
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for v in ["namespace", "job", "pod"] {
        assert!(variables.contains(&v), "no ${v} variable: {variables:?}");
    }
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    for e in &exprs {
        assert!(e.contains(r#"pod=~"$pod""#), "{e} ignores the pod variable");
    }
    assert!(exprs.len() >= 8, "{} panel queries", exprs.len());
    check_against(&exprs, &scrape, "grafana-dashboard.json");
    h.stop().await;
}

#[test]
fn the_checks_catch_a_misspelt_metric_label_or_value() {
    // The checker itself must be able to fail, or the tests above prove nothing.
    let scrape = "bearerd_credential_state{credential=\"api\",state=\"failed\"} 0\n";
    let ok =
        |e: &str| std::panic::catch_unwind(|| check_against(&[e.to_string()], scrape, "t")).is_ok();
    assert!(ok(
        "max by (credential) (bearerd_credential_state{state=\"failed\"}) == 1"
    ));
    assert!(!ok("bearerd_credential_states{state=\"failed\"} == 1"));
    assert!(!ok("bearerd_credential_state{state=\"broken\"} == 1"));
    assert!(!ok("bearerd_credential_state{status=\"failed\"} == 1"));
    assert!(!ok("max by (upstream) (bearerd_credential_state) == 1"));
    assert!(!ok("max by(upstream) (bearerd_credential_state) == 1"));
    assert!(!ok(
        "bearerd_credential_state == 1 and on (instance, upstream) bearerd_credential_state"
    ));
    assert!(ok(
        "bearerd_credential_state == 1 and on (instance, credential) bearerd_credential_state"
    ));
}

fn promtool() -> Command {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/prometheus/usr/bin/promtool");
    assert!(bin.exists(), "no promtool: run scripts/setup.sh");
    Command::new(bin)
}

#[test]
fn promtool_accepts_the_alerting_rules() {
    let out = promtool()
        .args(["check", "rules"])
        .arg(deploy("monitoring/alerts.yaml"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("SUCCESS"), "{text}");
}

/// The samples of a Prometheus text scrape, keyed by series (name and labels, as written).
fn samples(scrape: &str) -> BTreeMap<String, f64> {
    scrape
        .lines()
        .filter(|l| l.starts_with("bearerd_"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The series as a scraper would store it: with `job` and `instance` labels.
fn scraped_series(series: &str) -> String {
    const TARGET: &str = r#"job="bearerd",instance="pod-a""#;
    match series.strip_suffix('}') {
        Some(head) => format!("{head},{TARGET}}}"),
        None => format!("{series}{{{TARGET}}}"),
    }
}

/// The sum of a scrape's `metric` series that carry any of these label pairs.
fn total(scrape: &BTreeMap<String, f64>, metric: &str, any_of: &[&str]) -> f64 {
    scrape
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix(metric)
                .is_some_and(|labels| labels.starts_with('{'))
                && any_of.iter().any(|pair| k.contains(pair))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Failed refreshes in a scrape, whatever triggered them.
fn refresh_failures(scrape: &BTreeMap<String, f64>) -> f64 {
    total(
        scrape,
        "bearerd_token_refresh_total",
        &[r#"result="transient_error""#],
    )
}

/// A sidecar with `credential_extra`, past its first token and a few good requests: the
/// sidecar and its healthy scrape.
async fn healthy_sidecar(
    lifetime_s: u64,
    credential_extra: &str,
) -> (support::Harness, BTreeMap<String, f64>) {
    let h = support::Harness::start(support::Options {
        lifetime: std::time::Duration::from_secs(lifetime_s),
        credential_extra: credential_extra.into(),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    for _ in 0..5 {
        assert_eq!(h.get("/api/ok").await.status(), 200);
    }
    let healthy = samples(&h.metrics().await);
    (h, healthy)
}

/// Scrapes (bounded) until `done` holds of the scrape and the credential's state; with
/// `request`, sends a request before each scrape.
async fn scrape_until(
    h: &support::Harness,
    request: bool,
    done: impl Fn(&BTreeMap<String, f64>, &str) -> bool,
) -> BTreeMap<String, f64> {
    let mut scrape = BTreeMap::new();
    for _ in 0..400 {
        if request {
            let _ = h.get("/api/x").await;
        }
        scrape = samples(&h.metrics().await);
        if done(&scrape, &h.state().await) {
            return scrape;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the sidecar never got there: {scrape:?}");
}

/// Replays two real scrapes of a sidecar as a timeline for promtool (healthy for minutes
/// 0-4, then the incident's scrape for minutes 5-15, counters climbing to it step by step
/// and gauges jumping to it) and evaluates the alerting rules: nothing may fire at minute 4,
/// and at minute 15 exactly the `firing` alerts: (alert, the label that names `api`, which
/// is the credential or the upstream, severity).
fn alerts_over(
    healthy: &BTreeMap<String, f64>,
    incident: &BTreeMap<String, f64>,
    firing: &[(&str, &str, &str)],
) {
    let dir = std::env::temp_dir().join(format!("bearerd-alerts-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    // The rules less their annotations: what matters here is whether and for what each
    // alert fires.
    let names = rules_for_promtool(&dir);

    let mut input = Vec::new();
    let all: BTreeSet<&String> = healthy.keys().chain(incident.keys()).collect();
    for series in all {
        let name = series.split('{').next().unwrap();
        let counter = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.ends_with(s));
        let (a, mut b) = (healthy.get(series).copied(), incident.get(series).copied());
        // A wall-clock time: in promtool's timeline the failures began at minute 4.
        if name == "bearerd_refresh_failing_since_timestamp_seconds" {
            b = b.map(|v| if v > 0.0 { 240.0 } else { 0.0 });
        }
        let values: Vec<String> = (0..=15)
            .map(|minute| {
                let v = if minute < 5 {
                    a
                } else if counter {
                    let a = a.unwrap_or(0.0);
                    b.map(|b| a + (b - a) * f64::from(minute - 4) / 11.0)
                } else {
                    b
                };
                v.map_or("_".to_string(), |v| format!("{v}"))
            })
            .collect();
        input.push(serde_json::json!({
            "series": scraped_series(series),
            "values": values.join(" "),
        }));
    }
    let expect = |at: &str, firing: &[(&str, &str, &str)]| -> Vec<serde_json::Value> {
        names
            .iter()
            .map(|name| {
                let exp: Vec<_> = firing
                    .iter()
                    .filter(|(n, _, _)| n == name)
                    .map(|(_, label, severity)| {
                        serde_json::json!({ "exp_labels": {
                            "job": "bearerd", "instance": "pod-a",
                            *label: "api", "severity": severity,
                        } })
                    })
                    .collect();
                serde_json::json!({ "eval_time": at, "alertname": name, "exp_alerts": exp })
            })
            .collect()
    };
    let mut checks = expect("4m", &[]);
    checks.extend(expect("15m", firing));
    run_rule_test(&dir, 60, input, checks);
}

/// Runs one promtool rule test in `dir` (which holds rules.yaml): the input series at
/// `step_s` seconds apart, evaluated at the same interval, and the expected alerts.
fn run_rule_test(
    dir: &Path,
    step_s: u64,
    input: Vec<serde_json::Value>,
    checks: Vec<serde_json::Value>,
) {
    let test = serde_json::json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": format!("{step_s}s"),
        "tests": [{ "interval": format!("{step_s}s"), "input_series": input, "alert_rule_test": checks }],
    });
    std::fs::write(dir.join("test.yaml"), serde_yaml::to_string(&test).unwrap()).unwrap();
    let out = promtool()
        .current_dir(dir)
        .args(["test", "rules", "test.yaml"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{text}\n(inputs in {})",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alerts_when_the_token_runs_out_in_an_outage() {
    let (h, healthy) = healthy_sidecar(
        2,
        "min_refresh_interval = \"200ms\"\nwait_budget = \"200ms\"",
    )
    .await;
    h.tokens.state.set_fail(support::FailMode::Status(503));
    // Requests keep asking for a token, so refreshes keep failing; they get 503.
    scrape_until(&h, true, |m, state| {
        state == "expired" && refresh_failures(m) >= 8.0
    })
    .await;
    // Enough traffic for the error-rate alert's floor.
    for _ in 0..40 {
        assert_eq!(h.get("/api/x").await.status(), 503);
    }
    let incident = samples(&h.metrics().await);
    h.stop().await;
    alerts_over(
        &healthy,
        &incident,
        &[
            ("BearerdNoValidToken", "credential", "critical"),
            (
                "BearerdTokenExpiringWhileRetrying",
                "credential",
                "critical",
            ),
            ("BearerdRefreshFailing", "credential", "warning"),
            ("BearerdUpstreamErrors", "upstream", "warning"),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alerts_when_refreshes_fail_before_the_token_expires() {
    // A minute-long token refreshed early: the outage starts while it is still good.
    let (h, healthy) = healthy_sidecar(60, "refresh_ratio = 0.05").await;
    h.tokens.state.set_fail(support::FailMode::Status(503));
    let incident = scrape_until(&h, false, |m, state| {
        (state == "retrying" || state == "refreshing") && refresh_failures(m) >= 8.0
    })
    .await;
    // Requests still get the current token meanwhile.
    assert_eq!(h.get("/api/still-good").await.status(), 200);
    h.stop().await;
    alerts_over(
        &healthy,
        &incident,
        &[("BearerdRefreshFailing", "credential", "warning")],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alerts_when_the_upstream_rejects_fresh_tokens() {
    let (h, healthy) = healthy_sidecar(60, "").await;
    h.upstream.state.reject_all(true);
    let incident = scrape_until(&h, true, |m, _| {
        let rejected = [r#"outcome="replayed_401""#, r#"outcome="rate_limited""#];
        total(m, "bearerd_upstream_401_total", &rejected) >= 3.0
    })
    .await;
    h.stop().await;
    alerts_over(
        &healthy,
        &incident,
        &[("BearerdUpstreamRejectsFreshTokens", "upstream", "warning")],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alerts_when_the_provider_refuses_the_credential() {
    let (h, healthy) = healthy_sidecar(60, "").await;
    h.tokens
        .state
        .set_fail(support::FailMode::OAuthError("invalid_client".into()));
    assert!(
        h.admin_post("/credentials/api/refresh")
            .await
            .status()
            .is_server_error(),
        "the refused refresh reports an error"
    );
    let incident = scrape_until(&h, false, |_, state| state == "failed").await;
    h.stop().await;
    alerts_over(
        &healthy,
        &incident,
        &[("BearerdCredentialFailed", "credential", "critical")],
    );
}

/// The rules without their annotations (promtool compares those verbatim) in `dir`, and the
/// alert names.
fn rules_for_promtool(dir: &Path) -> Vec<String> {
    let mut rules = yaml("monitoring/alerts.yaml");
    let mut names = Vec::new();
    for group in rules["groups"].as_sequence_mut().unwrap() {
        for rule in group["rules"].as_sequence_mut().unwrap() {
            rule.as_mapping_mut().unwrap().remove("annotations");
            names.push(str_at(rule, &["alert"]).to_string());
        }
    }
    std::fs::write(
        dir.join("rules.yaml"),
        serde_yaml::to_string(&rules).unwrap(),
    )
    .unwrap();
    names
}

/// A synthetic outage for promtool: `series` (metric{extra labels}, a value per step of
/// `step_s` seconds) for one pod's credential `api`, and at each evaluation time (seconds)
/// exactly the alerts (name, severity) that must fire.
fn synthetic_outage(
    step_s: u64,
    series: Vec<(String, Vec<f64>)>,
    checks: &[(u64, &[(&str, &str)])],
) {
    let dir = std::env::temp_dir().join(format!("bearerd-outage-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let names = rules_for_promtool(&dir);
    const POD: &str = r#"job="bearerd",instance="10.0.0.7:14091",namespace="orders",pod="orders-7d9f",credential="api""#;
    let input: Vec<_> = series
        .into_iter()
        .map(|(metric, values)| {
            let series = match metric.strip_suffix('}') {
                Some(head) => format!("{head},{POD}}}"),
                None => format!("{metric}{{{POD}}}"),
            };
            let values: Vec<String> = values.iter().map(|v| format!("{v}")).collect();
            serde_json::json!({ "series": series, "values": values.join(" ") })
        })
        .collect();
    let mut tests = Vec::new();
    for (at, firing) in checks {
        for name in &names {
            let exp: Vec<_> = firing
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, severity)| {
                    serde_json::json!({ "exp_labels": {
                        "job": "bearerd", "instance": "10.0.0.7:14091", "namespace": "orders",
                        "pod": "orders-7d9f", "credential": "api", "severity": severity,
                    } })
                })
                .collect();
            tests.push(serde_json::json!({
                "eval_time": format!("{at}s"), "alertname": name, "exp_alerts": exp,
            }));
        }
    }
    run_rule_test(&dir, step_s, input, tests);
}

/// The state series of a credential that is `state_at(t)` at each step.
fn state_series(
    steps: u64,
    step_s: u64,
    state_at: impl Fn(u64) -> &'static str,
) -> Vec<(String, Vec<f64>)> {
    bearerd::api::CredentialState::ALL
        .map(|s| s.as_str())
        .into_iter()
        .map(|s| {
            let values = (0..steps)
                .map(|k| f64::from(u8::from(state_at(k * step_s) == s)))
                .collect();
            (format!("bearerd_credential_state{{state=\"{s}\"}}"), values)
        })
        .collect()
}

/// Long outages, as promtool's synthetic series: each alert fires within its stated delay
/// and keeps firing for as long as the outage lasts (a count of failures over a window
/// would clear once the backoff reaches its cap).
#[test]
fn alerts_keep_firing_through_long_outages() {
    // Day-long tokens, refreshed at 80 %: the provider is down from minute 10 for 3 hours.
    let (step, steps, down) = (60, 200, 600);
    let mut series = state_series(steps, step, |t| if t < down { "valid" } else { "retrying" });
    let at = |f: &dyn Fn(u64) -> f64| (0..steps).map(|k| f(k * step)).collect::<Vec<_>>();
    series.push(("bearerd_token_lifetime_seconds".into(), at(&|_| 86400.0)));
    series.push((
        "bearerd_token_expires_in_seconds".into(),
        at(&|t| 17280.0 + down as f64 - t as f64),
    ));
    series.push((
        "bearerd_refresh_failing_since_timestamp_seconds".into(),
        at(&|t| if t < down { 0.0 } else { down as f64 }),
    ));
    let both: &[(&str, &str)] = &[
        ("BearerdTokenExpiringWhileRetrying", "critical"),
        ("BearerdRefreshFailing", "warning"),
    ];
    synthetic_outage(
        step,
        series,
        &[
            (540, &[]),
            (900, &[]),
            // 5 minutes of failures with a fifth of the lifetime left: critical.
            (960, &[("BearerdTokenExpiringWhileRetrying", "critical")]),
            (1260, both),
            (3600, both),
            (7200, both),
            (11940, both),
        ],
    );

    // 5-minute tokens: the refresh at minute 10 fails with a minute left; the token runs
    // out at 11:00 and the provider stays down for an hour.
    let (step, steps, expiry) = (15, 4 * 72, 660);
    let mut series = state_series(steps, step, |t| match t {
        t if t < down => "valid",
        t if t < expiry => "retrying",
        _ => "expired",
    });
    let at = |f: &dyn Fn(u64) -> f64| (0..steps).map(|k| f(k * step)).collect::<Vec<_>>();
    series.push(("bearerd_token_lifetime_seconds".into(), at(&|_| 300.0)));
    series.push((
        "bearerd_token_expires_in_seconds".into(),
        at(&|t| {
            if t < down {
                120.0
            } else {
                expiry.saturating_sub(t) as f64
            }
        }),
    ));
    series.push((
        "bearerd_refresh_failing_since_timestamp_seconds".into(),
        at(&|t| if t < down { 0.0 } else { down as f64 }),
    ));
    let out = &[
        ("BearerdNoValidToken", "critical"),
        ("BearerdTokenExpiringWhileRetrying", "critical"),
        ("BearerdRefreshFailing", "warning"),
    ];
    synthetic_outage(
        step,
        series,
        &[
            (585, &[]),
            // A warning 30 s into the outage, half a minute before the token runs out.
            (630, &[("BearerdTokenExpiringWhileRetrying", "critical")]),
            // Past expiry both criticals fire: no gap while NoValidToken's `for` runs.
            (690, &[("BearerdTokenExpiringWhileRetrying", "critical")]),
            (
                720,
                &[
                    ("BearerdNoValidToken", "critical"),
                    ("BearerdTokenExpiringWhileRetrying", "critical"),
                ],
            ),
            (1215, out),
            (2400, out),
            (4200, out),
        ],
    );
}

fn bearerd(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bearerd"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bearerd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The documents of a multi-document YAML text.
fn documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The pod template of a workload document, or none for other kinds.
fn pod_template(doc: &Value) -> Option<&Value> {
    let path: &[&str] = match doc["kind"].as_str()? {
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    };
    Some(path.iter().fold(doc, |cur, key| &cur[*key]))
}

/// `bearerd inject` on the deploy example and on varied workloads: each pod gets the
/// native sidecar first, its volumes (renamed around the app's own), the probes, and each
/// app container its upstream URLs; the output passes the API schema; the config it points
/// to passes `bearerd check` as the pod would run it; injecting again changes nothing, and
/// `--uninject` gives back exactly the input.
#[test]
fn inject_adds_the_sidecar_to_every_pod_and_uninject_takes_exactly_that_out() {
    let config = deploy("kubernetes/bearerd.toml");
    let config_arg = config.to_str().unwrap();
    let dir = std::env::temp_dir().join(format!("bearerd-inject-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let inputs = [
        deploy("kubernetes/app.yaml"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject/workloads.yaml"),
    ];
    for input in inputs {
        let original = std::fs::read_to_string(&input).unwrap();
        let injected = bearerd(&["inject", "-f", input.to_str().unwrap(), "-c", config_arg]);
        let out = dir.join(input.file_name().unwrap());
        std::fs::write(&out, &injected).unwrap();
        passes_the_api_schema(&out);

        let (before, after) = (documents(&original), documents(&injected));
        assert_eq!(before.len(), after.len());
        let mut pods = 0;
        for (was, doc) in before.iter().zip(&after) {
            let Some(template) = pod_template(doc) else {
                assert_eq!(was, doc, "a document without pods passes unchanged");
                continue;
            };
            pods += 1;
            let old = pod_template(was).unwrap();
            let spec = &template["spec"];
            let inits = spec["initContainers"].as_sequence().unwrap();
            let sidecar = &inits[0];
            assert_eq!(sidecar["name"], "bearerd");
            assert_eq!(
                sidecar["restartPolicy"], "Always",
                "a native sidecar, first"
            );
            let old_inits = old["spec"]["initContainers"]
                .as_sequence()
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert_eq!(&inits[1..], old_inits, "the app's init containers follow");
            assert_eq!(
                template["metadata"]["labels"]["bearerd.dev/injected"],
                "true"
            );
            let annotations = &template["metadata"]["annotations"];
            assert!(
                annotations["bearerd.dev/injected"].as_str().is_some(),
                "the version"
            );
            assert_eq!(
                annotations["bearerd.dev/config-hash"]
                    .as_str()
                    .map(str::len),
                Some(16),
                "a changed config rolls the pods"
            );
            // The app's own volumes are untouched; bearerd's have names of their own.
            let volumes = spec["volumes"].as_sequence().unwrap();
            for v in old["spec"]["volumes"]
                .as_sequence()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                assert!(volumes.contains(v), "{v:?} kept");
            }
            let mut names: Vec<&str> = volumes
                .iter()
                .map(|v| v["name"].as_str().unwrap())
                .collect();
            names.sort();
            names.dedup();
            assert_eq!(
                names.len(),
                volumes.len(),
                "volume names are unique: {names:?}"
            );
            for c in spec["containers"].as_sequence().unwrap() {
                let env = c["env"].as_sequence().unwrap();
                assert!(
                    env.iter().any(|e| e["name"] == "BEARERD_URL_CRM"
                        && e["value"] == "http://127.0.0.1:14080/crm"),
                    "{c:?}"
                );
            }
            // The same checks as the hand-written manifests: probes, ports, security.
            let pod = Pod {
                spec: spec.clone(),
                sidecar: sidecar.clone(),
                toml: toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap(),
                config_path: "/etc/bearerd/bearerd.toml".into(),
            };
            for (probe, path) in [
                ("startupProbe", "/readyz"),
                ("readinessProbe", "/healthz"),
                ("livenessProbe", "/healthz"),
            ] {
                assert_eq!(str_at(sidecar, &[probe, "httpGet", "path"]), path);
                assert_eq!(
                    str_at(sidecar, &[probe, "httpGet", "port"]),
                    "bearerd-admin"
                );
            }
            assert_eq!(sidecar["securityContext"]["readOnlyRootFilesystem"], true);
            // The Secret's files (mode 0440) and the store belong to the pod's fsGroup.
            assert_eq!(
                sidecar["securityContext"]["runAsGroup"], spec["securityContext"]["fsGroup"],
                "bearerd can read its Secret"
            );
            assert_eq!(
                sidecar["ports"][0]["containerPort"].as_u64(),
                Some(listen(&pod.toml, "metrics_listen").port().into())
            );
            config_passes_check_in(&pod, &config);
        }
        assert!(pods >= 1);
        let again = bearerd(&["inject", "-f", out.to_str().unwrap(), "-c", config_arg]);
        assert_eq!(again, injected, "injecting twice changes nothing");
        let back = bearerd(&["inject", "--uninject", "-f", out.to_str().unwrap()]);
        assert_eq!(
            documents(&back),
            before,
            "uninject takes out exactly what inject added"
        );
    }
}

/// The platform pieces agree with what they package: the kustomize Component's sidecar is
/// the one `bearerd inject` adds, the PrometheusRule holds alerts.yaml's rules, the
/// dashboard ConfigMap is labelled for Grafana's loader, the PodMonitor selects the label
/// inject sets, and the PodDisruptionBudget and NetworkPolicy pass the API schema.
#[test]
fn the_platform_pieces_agree_with_inject_and_the_rules() {
    let injected = bearerd(&[
        "inject",
        "-f",
        deploy("kubernetes/app.yaml").to_str().unwrap(),
        "-c",
        deploy("kubernetes/bearerd.toml").to_str().unwrap(),
    ]);
    let injected = &documents(&injected)[0]["spec"]["template"];
    let component = yaml("kubernetes/components/bearerd/kustomization.yaml");
    assert_eq!(component["kind"], "Component");
    let patch = yaml("kubernetes/components/bearerd/sidecar.yaml");
    let patched = &patch["spec"]["template"];
    for key in ["initContainers", "volumes", "securityContext"] {
        assert_eq!(patched["spec"][key], injected["spec"][key], "{key}");
    }
    assert_eq!(
        patched["metadata"]["labels"]["bearerd.dev/injected"],
        injected["metadata"]["labels"]["bearerd.dev/injected"]
    );

    let rule = yaml("monitoring/prometheusrule.yaml");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(
        rule["spec"]["groups"],
        yaml("monitoring/alerts.yaml")["groups"]
    );

    let monitoring = yaml("monitoring/kustomization.yaml");
    let dashboard = &monitoring["configMapGenerator"][0];
    assert_eq!(dashboard["options"]["labels"]["grafana_dashboard"], "1");
    let file = str_at(&dashboard["files"][0], &[])
        .split('=')
        .nth(1)
        .unwrap();
    assert!(deploy(&format!("monitoring/{file}")).exists());
    for resource in monitoring["resources"].as_sequence().unwrap() {
        assert!(deploy(&format!("monitoring/{}", resource.as_str().unwrap())).exists());
    }
    let monitor = yaml("monitoring/podmonitor.yaml");
    assert_eq!(monitor["spec"]["namespaceSelector"]["any"], true);
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["bearerd.dev/injected"],
        "true"
    );

    for piece in ["poddisruptionbudget.yaml", "networkpolicy.yaml"] {
        passes_the_api_schema(&deploy(&format!("kubernetes/platform/{piece}")));
    }
    // The NetworkPolicy lets monitoring reach the probes-and-metrics port, and nothing of
    // bearerd's beyond it.
    let policy = yaml("kubernetes/platform/networkpolicy.yaml");
    let probes = listen(&pod().toml, "metrics_listen").port();
    assert_eq!(
        policy["spec"]["ingress"][0]["ports"][0]["port"].as_u64(),
        Some(probes.into())
    );
}
