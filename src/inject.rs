//! `bearerd inject`: adds bearerd to the pod templates of Kubernetes manifests, as
//! `linkerd inject` does, and `--uninject` takes out exactly what it added.
//!
//! What a pod gets: the native sidecar (an init container with `restartPolicy: Always`,
//! first among the init containers), its config from a ConfigMap, the Secret as read-only
//! files, an in-memory store volume, optionally a projected service-account token, the
//! probes (startup `/readyz`, readiness and liveness `/healthz`), a hardened securityContext
//! and resources; each app container gets `BEARERD_URL_<UPSTREAM>` with its upstream's URL
//! through bearerd. Annotations record what was added, so `--uninject` removes that and
//! nothing else, and injecting twice changes nothing.

use serde_norway::{Mapping, Value};

const ANNOTATION: &str = "bearerd.dev/injected";
const ADDED: &str = "bearerd.dev/added";
const CONFIG_HASH: &str = "bearerd.dev/config-hash";

/// A short hash of the config's text for the pod template's annotation.
fn config_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}
/// The label the PodMonitor selects injected pods by.
pub const LABEL: &str = "bearerd.dev/injected";
pub const CONTAINER: &str = "bearerd";
const CONFIG_DIR: &str = "/etc/bearerd";
pub const SECRET_DIR: &str = "/var/run/secrets/bearerd";
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
const UID: u64 = 65532;

/// What `bearerd inject` adds, from its flags.
#[derive(Debug, Clone)]
pub struct InjectOptions {
    pub image: String,
    /// The ConfigMap holding `bearerd.toml`.
    pub config_map: String,
    /// The Secret mounted at /var/run/secrets/bearerd (none: no secret volume).
    pub secret: Option<String>,
    /// Audience of a projected service-account token at /var/run/secrets/tokens/token.
    pub token_audience: Option<String>,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
}

impl Default for InjectOptions {
    fn default() -> Self {
        InjectOptions {
            image: format!("ghcr.io/bearerd/bearerd:{}", env!("CARGO_PKG_VERSION")),
            config_map: "bearerd-config".into(),
            secret: Some("bearerd-secrets".into()),
            token_audience: None,
            cpu_request: "50m".into(),
            memory_request: "32Mi".into(),
            memory_limit: "128Mi".into(),
        }
    }
}

/// Why manifests could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("document {doc}: not YAML: {message}")]
    Yaml { doc: usize, message: String },
    #[error("document {doc} ({kind} {name}): {message}")]
    Manifest {
        doc: usize,
        kind: String,
        name: String,
        message: String,
    },
}

/// The env var an app reads for one upstream's URL through bearerd.
pub fn url_env_name(upstream: &str) -> String {
    let mut name = String::from("BEARERD_URL_");
    name.extend(upstream.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    name
}

/// What inject takes from the config the ConfigMap holds. The config is lowered in full
/// (every key, type and cross-reference), but its files are not read: the secrets, keys and
/// projected tokens it names exist in the pod, not where `inject` runs; the sidecar's check
/// step reads them when it starts.
pub struct PodConfig {
    /// Each upstream's URL through bearerd, as `BEARERD_URL_<UPSTREAM>`.
    pub urls: Vec<(String, String)>,
    /// The port of `metrics_listen`: the kubelet's probes and Prometheus reach it.
    pub probes_port: u16,
    /// A hash of the text, recorded on the pod template: a changed config changes the
    /// template, so `kubectl apply` rolls the pods.
    pub hash: String,
}

/// Why the config in the ConfigMap cannot drive an injection.
#[derive(Debug, thiserror::Error)]
pub enum PodConfigError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("the config needs `metrics_listen = \"0.0.0.0:14091\"` under [server]: the kubelet's probes and Prometheus reach bearerd there")]
    NoMetricsListen,
    #[error("metrics_listen {0} is loopback: the kubelet's probes come from outside the pod (use 0.0.0.0)")]
    LoopbackMetricsListen(std::net::SocketAddr),
}

/// What is wrong with one pod template, in words for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TemplateProblem(String);

impl PodConfig {
    /// The pod's view of the config `text`; `source` names it in errors.
    pub fn from_text(source: &std::path::Path, text: &str) -> Result<PodConfig, PodConfigError> {
        let config = crate::config::Config::lower(source, text)?;
        let metrics = config
            .server
            .metrics_listen
            .ok_or(PodConfigError::NoMetricsListen)?;
        // metrics_listen must listen on the pod's IP.
        if metrics.ip().is_loopback() {
            return Err(PodConfigError::LoopbackMetricsListen(metrics));
        }
        let proxy = config.server.proxy_listen;
        let urls = config
            .upstreams
            .iter()
            .map(|u| {
                let url = match &u.route {
                    crate::config::RouteConfig::Prefix(p) => format!("http://{proxy}{p}"),
                    crate::config::RouteConfig::Listen(a) => format!("http://{a}"),
                };
                (url_env_name(&u.name), url)
            })
            .collect();
        Ok(PodConfig {
            urls,
            probes_port: metrics.port(),
            hash: config_hash(text),
        })
    }
}

fn v(s: &str) -> Value {
    Value::String(s.to_string())
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    Value::Mapping(pairs.into_iter().map(|(k, val)| (v(k), val)).collect())
}

/// Where a workload of this kind keeps its pod template (spec and metadata), or none for
/// a kind that has no pods.
fn pod_template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            Some(&["spec", "template"])
        }
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

fn get_mut<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |cur, key| cur.get_mut(*key))
}

/// The mapping at `key`, created when absent.
/// `value` must be a mapping ([`check_shape`] made sure); a key left empty (`labels:`)
/// counts as absent.
fn entry<'a>(value: &'a mut Value, key: &str) -> &'a mut Value {
    let m = value.as_mapping_mut().expect("a mapping");
    if !m.get(key).is_some_and(Value::is_mapping) {
        m.insert(v(key), Value::Mapping(Mapping::new()));
    }
    m.get_mut(key).expect("just inserted")
}

/// Refuses a pod template whose fields inject touches have the wrong type, so nothing
/// below can meet one (a field left empty, `labels:`, is fine).
fn check_shape(template: &Value) -> Result<(), TemplateProblem> {
    fn kind_ok(v: Option<&Value>, want: fn(&Value) -> bool) -> bool {
        v.is_none_or(|v| v.is_null() || want(v))
    }
    let map = |v: Option<&Value>| kind_ok(v, Value::is_mapping);
    let list_of_maps = |v: Option<&Value>| {
        kind_ok(v, Value::is_sequence)
            && v.and_then(Value::as_sequence)
                .is_none_or(|items| items.iter().all(Value::is_mapping))
    };
    let metadata = template.get("metadata");
    let spec = template.get("spec");
    let fields = [
        ("metadata", map(metadata)),
        (
            "metadata.labels",
            map(metadata.and_then(|m| m.get("labels"))),
        ),
        (
            "metadata.annotations",
            map(metadata.and_then(|m| m.get("annotations"))),
        ),
        ("spec", map(spec)),
        (
            "spec.containers",
            list_of_maps(spec.and_then(|s| s.get("containers"))),
        ),
        (
            "spec.initContainers",
            list_of_maps(spec.and_then(|s| s.get("initContainers"))),
        ),
        (
            "spec.volumes",
            list_of_maps(spec.and_then(|s| s.get("volumes"))),
        ),
        (
            "spec.securityContext",
            map(spec.and_then(|s| s.get("securityContext"))),
        ),
    ];
    if let Some((field, _)) = fields.iter().find(|(_, ok)| !ok) {
        return Err(TemplateProblem(format!("{field} has the wrong type")));
    }
    let containers = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_sequence);
    if containers.is_none_or(Vec::is_empty) {
        return Err(TemplateProblem("the pod has no containers".into()));
    }
    for c in containers.into_iter().flatten() {
        if !list_of_maps(c.get("env")) {
            return Err(TemplateProblem("a container's env is not a list".into()));
        }
    }
    Ok(())
}

/// The sequence at `key`, created when absent.
fn seq<'a>(value: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    let m = value.as_mapping_mut().expect("a mapping");
    if !m.get(key).is_some_and(Value::is_sequence) {
        m.insert(v(key), Value::Sequence(Vec::new()));
    }
    m.get_mut(key)
        .and_then(Value::as_sequence_mut)
        .expect("just inserted")
}

fn names(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| i.get("name")?.as_str().map(str::to_string))
        .collect()
}

/// A name for one of bearerd's volumes that the pod does not use yet.
fn free_name(taken: &[String], wanted: &str) -> String {
    (0..)
        .map(|i| {
            if i == 0 {
                wanted.to_string()
            } else {
                format!("{wanted}-{i}")
            }
        })
        .find(|n| !taken.contains(n))
        .expect("an unbounded range")
}

/// Adds bearerd to one pod template (`template` holds `metadata` and `spec`).
fn inject_pod(
    template: &mut Value,
    opts: &InjectOptions,
    config: &PodConfig,
) -> Result<(), TemplateProblem> {
    if !template.is_mapping() {
        return Err(TemplateProblem("the pod template is not a mapping".into()));
    }
    check_shape(template)?;
    let spec = entry(template, "spec");
    let taken_names: Vec<String> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| {
            names(
                spec.get(*k)
                    .and_then(Value::as_sequence)
                    .map_or(&[], Vec::as_slice),
            )
        })
        .collect();
    if taken_names.iter().any(|n| n == CONTAINER) {
        return Err(TemplateProblem(format!(
            "the pod already has a container named {CONTAINER:?} that inject did not add"
        )));
    }
    let added = SidecarVolumes::for_pod(spec, opts);
    // The Secret's files and the store belong to the pod's fsGroup: bearerd runs in that
    // group (its own, 65532, when the pod sets none and inject adds it).
    let group = spec
        .get("securityContext")
        .and_then(|s| s.get("fsGroup"))
        .and_then(Value::as_u64)
        .unwrap_or(UID);
    let sidecar = sidecar_container(opts, config, group, added.mounts);
    seq(spec, "initContainers").insert(0, sidecar);
    seq(spec, "volumes").extend(added.volumes);
    let added_env = add_url_env(spec, config);
    let security = entry(spec, "securityContext");
    let fs_group_added = security.get("fsGroup").is_none();
    if fs_group_added {
        entry(spec, "securityContext")
            .as_mapping_mut()
            .expect("a mapping")
            .insert(v("fsGroup"), Value::Number(UID.into()));
    }
    // What was added, for --uninject.
    let record = format!(
        "volumes={};env={};fsGroup={}",
        added.names.join(","),
        added_env.join(","),
        fs_group_added
    );
    let metadata = entry(template, "metadata");
    entry(metadata, "annotations")
        .as_mapping_mut()
        .expect("a mapping")
        .extend([
            (v(ANNOTATION), v(env!("CARGO_PKG_VERSION"))),
            (v(ADDED), v(&record)),
            (v("bearerd.dev/config-map"), v(&opts.config_map)),
            (v(CONFIG_HASH), v(&config.hash)),
        ]);
    entry(metadata, "labels")
        .as_mapping_mut()
        .expect("a mapping")
        .insert(v(LABEL), v("true"));
    Ok(())
}

/// The sidecar's volumes (config, secrets, store, projected token), named so as not to
/// clash with the pod's own, and the mounts that go with them.
struct SidecarVolumes {
    volumes: Vec<Value>,
    mounts: Vec<Value>,
    names: Vec<String>,
}

impl SidecarVolumes {
    fn for_pod(spec: &Value, opts: &InjectOptions) -> SidecarVolumes {
        let mut added_volumes = Vec::new();
        let mut mounts = Vec::new();
        let taken = names(
            spec.get("volumes")
                .and_then(Value::as_sequence)
                .map_or(&[], Vec::as_slice),
        );
        let mut add_volume = |wanted: &str, source: Value, mount: Value| {
            let name = free_name(&taken_plus(&taken, &added_volumes), wanted);
            let mut volume = map(vec![("name", v(&name))]);
            if let (Value::Mapping(vm), Value::Mapping(sm)) = (&mut volume, source) {
                vm.extend(sm);
            }
            let mut mount = mount;
            if let Value::Mapping(mm) = &mut mount {
                mm.insert(v("name"), v(&name));
            }
            added_volumes.push(name);
            mounts.push(mount);
            volume
        };
        let mut volumes = vec![add_volume(
            "bearerd-config",
            map(vec![(
                "configMap",
                map(vec![("name", v(&opts.config_map))]),
            )]),
            map(vec![
                ("mountPath", v(CONFIG_DIR)),
                ("readOnly", Value::Bool(true)),
            ]),
        )];
        if let Some(secret) = &opts.secret {
            volumes.push(add_volume(
                "bearerd-secrets",
                map(vec![(
                    "secret",
                    map(vec![
                        ("secretName", v(secret)),
                        // Read-only for owner and group (the pod's fsGroup); only bearerd mounts it.
                        ("defaultMode", Value::Number(0o440.into())),
                    ]),
                )]),
                map(vec![
                    ("mountPath", v(SECRET_DIR)),
                    ("readOnly", Value::Bool(true)),
                ]),
            ));
        }
        volumes.push(add_volume(
            "bearerd-store",
            map(vec![(
                "emptyDir",
                map(vec![("medium", v("Memory")), ("sizeLimit", v("1Mi"))]),
            )]),
            map(vec![("mountPath", v("/var/lib/bearerd"))]),
        ));
        if let Some(audience) = &opts.token_audience {
            volumes.push(add_volume(
                "bearerd-tokens",
                map(vec![(
                    "projected",
                    map(vec![(
                        "sources",
                        Value::Sequence(vec![map(vec![(
                            "serviceAccountToken",
                            map(vec![
                                ("path", v("token")),
                                ("audience", v(audience)),
                                ("expirationSeconds", Value::Number(3600.into())),
                            ]),
                        )])]),
                    )]),
                )]),
                map(vec![
                    ("mountPath", v(TOKEN_DIR)),
                    ("readOnly", Value::Bool(true)),
                ]),
            ));
        }
        SidecarVolumes {
            volumes,
            mounts,
            names: added_volumes,
        }
    }
}

/// The native sidecar (an init container that keeps running): its probes, resources and
/// a locked-down security context.
fn sidecar_container(
    opts: &InjectOptions,
    config: &PodConfig,
    group: u64,
    mounts: Vec<Value>,
) -> Value {
    let probe = |path: &str, period: u64, failures: u64| {
        map(vec![
            (
                "httpGet",
                map(vec![("path", v(path)), ("port", v("bearerd-admin"))]),
            ),
            ("periodSeconds", Value::Number(period.into())),
            ("failureThreshold", Value::Number(failures.into())),
        ])
    };
    map(vec![
        ("name", v(CONTAINER)),
        ("image", v(&opts.image)),
        ("restartPolicy", v("Always")),
        (
            "args",
            Value::Sequence(vec![
                v("run"),
                v("-c"),
                v(&format!("{CONFIG_DIR}/bearerd.toml")),
            ]),
        ),
        (
            "ports",
            Value::Sequence(vec![map(vec![
                ("name", v("bearerd-admin")),
                ("containerPort", Value::Number(config.probes_port.into())),
            ])]),
        ),
        // The app starts once a token is held; after that the identity provider decides
        // neither readiness nor liveness (deploy/README.md, Probes).
        ("startupProbe", probe("/readyz", 1, 600)),
        ("readinessProbe", probe("/healthz", 5, 3)),
        ("livenessProbe", probe("/healthz", 10, 3)),
        (
            "resources",
            map(vec![
                (
                    "requests",
                    map(vec![
                        ("cpu", v(&opts.cpu_request)),
                        ("memory", v(&opts.memory_request)),
                    ]),
                ),
                ("limits", map(vec![("memory", v(&opts.memory_limit))])),
            ]),
        ),
        (
            "securityContext",
            map(vec![
                ("runAsNonRoot", Value::Bool(true)),
                ("runAsUser", Value::Number(UID.into())),
                ("runAsGroup", Value::Number(group.into())),
                ("readOnlyRootFilesystem", Value::Bool(true)),
                ("allowPrivilegeEscalation", Value::Bool(false)),
                (
                    "capabilities",
                    map(vec![("drop", Value::Sequence(vec![v("ALL")]))]),
                ),
                ("seccompProfile", map(vec![("type", v("RuntimeDefault"))])),
            ]),
        ),
        ("volumeMounts", Value::Sequence(mounts)),
    ])
}

/// Each app container gets `BEARERD_URL_<UPSTREAM>` (unless it sets its own); answers what
/// was added, per container, for --uninject.
fn add_url_env(spec: &mut Value, config: &PodConfig) -> Vec<String> {
    // Per container: an app's own value of the same name is neither replaced nor, by
    // --uninject, removed.
    let mut added_env = Vec::new();
    for container in seq(spec, "containers").iter_mut() {
        let container_name = container
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let env = seq(container, "env");
        let present = names(env);
        let mut added = Vec::new();
        for (name, url) in &config.urls {
            if !present.contains(name) {
                env.push(map(vec![("name", v(name)), ("value", v(url))]));
                added.push(name.clone());
            }
        }
        if !added.is_empty() {
            added_env.push(format!("{container_name}:{}", added.join("+")));
        }
    }
    added_env
}

fn taken_plus(taken: &[String], added: &[String]) -> Vec<String> {
    taken.iter().chain(added).cloned().collect()
}

/// Takes out of one pod template what `inject_pod` recorded adding.
fn uninject_pod(template: &mut Value) {
    let Some(record) = InjectionRecord::of(template) else {
        return;
    };
    if let Some(spec) = template.get_mut("spec") {
        remove_from_spec(spec, record);
    }
    if let Some(metadata) = template.get_mut("metadata") {
        for (key, gone) in [
            (
                "annotations",
                &[ANNOTATION, ADDED, "bearerd.dev/config-map", CONFIG_HASH][..],
            ),
            ("labels", &[LABEL][..]),
        ] {
            if let Some(m) = metadata.get_mut(key).and_then(Value::as_mapping_mut) {
                for g in gone {
                    m.remove(*g);
                }
            }
            if metadata
                .get(key)
                .and_then(Value::as_mapping)
                .is_some_and(Mapping::is_empty)
            {
                metadata.as_mapping_mut().map(|m| m.remove(key));
            }
        }
        if metadata.as_mapping().is_some_and(Mapping::is_empty) {
            template.as_mapping_mut().map(|m| m.remove("metadata"));
        }
    }
}

/// What inject added to a pod template, as its annotation records it.
struct InjectionRecord {
    volumes: Vec<String>,
    /// container name → the env vars inject added to it.
    env: Vec<(String, Vec<String>)>,
    fs_group_added: bool,
}

impl InjectionRecord {
    fn of(template: &Value) -> Option<InjectionRecord> {
        let record = template
            .get("metadata")
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get(ADDED))
            .and_then(Value::as_str)
            .map(str::to_string);
        let record = record?;
        let field = |key: &str| -> Vec<String> {
            record
                .split(';')
                .find_map(|part| part.strip_prefix(&format!("{key}=")))
                .map(|list| {
                    list.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let volumes = field("volumes");
        // container name → the env vars inject added to it.
        let env: Vec<(String, Vec<String>)> = field("env")
            .iter()
            .filter_map(|entry| {
                let (container, names) = entry.split_once(':')?;
                Some((
                    container.to_string(),
                    names.split('+').map(str::to_string).collect(),
                ))
            })
            .collect();
        let fs_group_added = field("fsGroup") == ["true"];
        Some(InjectionRecord {
            volumes,
            env,
            fs_group_added,
        })
    }
}

/// Takes the sidecar, its volumes, the env vars and the fsGroup inject added out of `spec`.
fn remove_from_spec(spec: &mut Value, record: InjectionRecord) {
    let InjectionRecord {
        volumes,
        env,
        fs_group_added,
    } = record;
    let drop_named = |items: &mut Vec<Value>, gone: &[String]| {
        items.retain(|i| {
            !i.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| gone.iter().any(|g| g == n))
        });
    };
    for (key, gone) in [
        ("initContainers", vec![CONTAINER.to_string()]),
        ("volumes", volumes),
    ] {
        if let Some(items) = spec.get_mut(key).and_then(Value::as_sequence_mut) {
            drop_named(items, &gone);
        }
        if spec
            .get(key)
            .and_then(Value::as_sequence)
            .is_some_and(Vec::is_empty)
        {
            spec.as_mapping_mut().map(|m| m.remove(key));
        }
    }
    if let Some(containers) = spec.get_mut("containers").and_then(Value::as_sequence_mut) {
        for c in containers {
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            let Some((_, added)) = env.iter().find(|(n, _)| n == name) else {
                continue;
            };
            if let Some(items) = c.get_mut("env").and_then(Value::as_sequence_mut) {
                drop_named(items, added);
            }
            if c.get("env")
                .and_then(Value::as_sequence)
                .is_some_and(Vec::is_empty)
            {
                c.as_mapping_mut().map(|m| m.remove("env"));
            }
        }
    }
    if fs_group_added {
        if let Some(sc) = spec
            .get_mut("securityContext")
            .and_then(Value::as_mapping_mut)
        {
            sc.remove("fsGroup");
        }
        if spec
            .get("securityContext")
            .and_then(Value::as_mapping)
            .is_some_and(Mapping::is_empty)
        {
            spec.as_mapping_mut().map(|m| m.remove("securityContext"));
        }
    }
}

/// Injects bearerd in every pod template of a multi-document YAML text, for the pod
/// `config`; with none, removes what inject added (`--uninject`). Other documents pass
/// through unchanged.
pub fn inject_manifests(
    text: &str,
    opts: &InjectOptions,
    config: Option<&PodConfig>,
) -> Result<String, InjectError> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let doc_no = i + 1;
        let mut value = Value::deserialize(doc).map_err(|e| InjectError::Yaml {
            doc: doc_no,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        inject_object(&mut value, opts, config).map_err(|(kind, name, message)| {
            InjectError::Manifest {
                doc: doc_no,
                kind,
                name,
                message,
            }
        })?;
        normalize_for_kubernetes(&mut value, None, text).map_err(|p| InjectError::Manifest {
            doc: doc_no,
            kind: kind_of(&value),
            name: name_of(&value),
            message: p.0,
        })?;
        // JSON documents: every string quoted, so Kubernetes (a YAML 1.1 reader) reads each
        // value as this tool (YAML 1.2) did.
        let mut json = serde_json::to_string_pretty(&value).map_err(|e| InjectError::Yaml {
            doc: doc_no,
            message: e.to_string(),
        })?;
        json.push('\n');
        out.push(json);
    }
    Ok(out.join("---\n"))
}

/// Injects (or removes) bearerd in one object: a workload's pod template, or each item
/// of a `kind: List` (as `kubectl get -o yaml` writes). Errors name the object.
fn inject_object(
    value: &mut Value,
    opts: &InjectOptions,
    config: Option<&PodConfig>,
) -> Result<(), (String, String, String)> {
    let (kind, name) = (kind_of(value), name_of(value));
    if kind == "List" {
        if let Some(items) = value.get_mut("items").and_then(Value::as_sequence_mut) {
            for item in items {
                inject_object(item, opts, config)?;
            }
        }
        return Ok(());
    }
    let Some(path) = pod_template_path(&kind) else {
        return Ok(());
    };
    let Some(template) = get_mut(value, path) else {
        let message = format!("no pod template at {}", path.join("."));
        return Err((kind, name, message));
    };
    // Injecting again starts from the clean manifest: the result is the same.
    uninject_pod(template);
    if let Some(config) = config {
        inject_pod(template, opts, config).map_err(|p| (kind, name, p.0))?;
    }
    Ok(())
}

fn kind_of(value: &Value) -> String {
    value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn name_of(value: &Value) -> String {
    value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// Words YAML 1.1 (Kubernetes) reads as booleans and YAML 1.2 (this tool) as text.
const YAML11_BOOLEANS: [&str; 16] = [
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

fn yaml11_octal(s: &str) -> Option<u64> {
    (s.len() > 1 && s.starts_with('0') && s.bytes().all(|b| (b'0'..=b'7').contains(&b)))
        .then(|| u64::from_str_radix(s, 8).ok())
        .flatten()
}

/// Makes each value mean to Kubernetes what it meant in the input. A file mode written
/// `0440` is octal to Kubernetes: it becomes the number. A plain `yes`, `on` or `0755`
/// elsewhere is refused, since the two readings differ; quoted in the input, it stays text.
fn normalize_for_kubernetes(
    value: &mut Value,
    key: Option<&str>,
    text: &str,
) -> Result<(), TemplateProblem> {
    match value {
        Value::String(s) => {
            if matches!(key, Some("defaultMode" | "mode")) {
                if let Some(n) = yaml11_octal(s) {
                    *value = Value::Number(n.into());
                    return Ok(());
                }
            }
            let ambiguous = YAML11_BOOLEANS.contains(&s.as_str()) || yaml11_octal(s).is_some();
            let quoted = text.contains(&format!("\"{s}\"")) || text.contains(&format!("'{s}'"));
            if ambiguous && !quoted {
                return Err(TemplateProblem(format!(
                    "{} is {s}, which Kubernetes reads as a boolean or an octal number and this tool as text: quote it, or write true, false or a decimal number",
                    key.unwrap_or("a value")
                )));
            }
            Ok(())
        }
        Value::Mapping(m) => {
            for (k, v) in m.iter_mut() {
                normalize_for_kubernetes(v, k.as_str(), text)?;
            }
            Ok(())
        }
        Value::Sequence(items) => {
            for item in items {
                normalize_for_kubernetes(item, key, text)?;
            }
            Ok(())
        }
        Value::Tagged(t) => normalize_for_kubernetes(&mut t.value, key, text),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with one upstream, `crm`, and the probes on the pod's IP.
    fn config() -> PodConfig {
        PodConfig::from_text(
            std::path::Path::new("bearerd.toml"),
            "[server]\nmetrics_listen = \"0.0.0.0:14091\"\n[upstreams.crm]\nurl = \"https://crm.test/\"\npath_prefix = \"/crm\"\ncredential = \"c\"\n[credentials.c]\ngrant = \"static\"\ntoken = { file = \"/var/run/secrets/crm/token\" }\n",
        )
        .unwrap()
    }

    /// inject lowers the whole config (a mistake is an error at its line), but reads none
    /// of the pod's files.
    #[test]
    fn the_config_is_lowered_in_full_without_its_files() {
        let c = config();
        assert_eq!(
            c.urls,
            [(
                "BEARERD_URL_CRM".to_string(),
                "http://127.0.0.1:14080/crm".to_string()
            )]
        );
        assert_eq!(c.probes_port, 14091);
        let typo = "[server]\nmetrics_listen = \"0.0.0.0:14091\"\n[upstreams.crm]\nurl = \"https://crm.test/\"\npath_prefix = \"/crm\"\ncredentail = \"c\"\n";
        let e = PodConfig::from_text(std::path::Path::new("bearerd.toml"), typo)
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("bearerd.toml:6:"), "{e}");
        let loopback = typo
            .replace("credentail = \"c\"", "credential = \"c\"\n[credentials.c]\ngrant = \"static\"\ntoken = { env = \"UNSET_HERE\" }")
            .replace("0.0.0.0:14091", "127.0.0.1:14091");
        let e = PodConfig::from_text(std::path::Path::new("bearerd.toml"), &loopback)
            .err()
            .unwrap();
        assert!(matches!(e, PodConfigError::LoopbackMetricsListen(_)), "{e}");
    }

    #[test]
    fn bad_manifests_are_errors_that_name_the_document() {
        let opts = InjectOptions::default();
        let e =
            inject_manifests("kind: Service\n---\n: : [\n", &opts, Some(&config())).unwrap_err();
        assert!(e.to_string().starts_with("document 2"), "{e}");
        let no_template =
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1}\n";
        let e = inject_manifests(no_template, &opts, Some(&config())).unwrap_err();
        assert!(e.to_string().contains("Deployment d"), "{e}");
        let no_containers = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {}\n";
        let e = inject_manifests(no_containers, &opts, Some(&config())).unwrap_err();
        assert!(e.to_string().contains("no containers"), "{e}");
        assert_eq!(url_env_name("crm-v2.eu"), "BEARERD_URL_CRM_V2_EU");
        let own = "kind: Pod\nmetadata: {name: p}\nspec:\n  initContainers: [{name: bearerd, image: x}]\n  containers: [{name: a, image: a}]\n";
        let e = inject_manifests(own, &opts, Some(&config())).unwrap_err();
        assert!(
            e.to_string().contains("already has a container named"),
            "{e}"
        );
    }

    fn pod(containers: &str, extra: &str) -> String {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels:\n  annotations:\nspec:\n  containers:\n{containers}{extra}")
    }

    fn parse(text: &str) -> Vec<Value> {
        use serde::Deserialize;
        serde_norway::Deserializer::from_str(text)
            .map(|d| Value::deserialize(d).unwrap())
            .collect()
    }

    #[test]
    fn values_mean_to_kubernetes_what_they_meant_in_the_input() {
        let opts = InjectOptions::default();
        // Empty labels and annotations (as Helm leaves them) are fine; a file mode in octal
        // stays the number Kubernetes meant.
        let text = pod(
            "  - name: a\n    image: a\n    env:\n    - {name: FLAG, value: \"yes\"}\n",
            "  volumes:\n  - name: s\n    secret: {secretName: s, defaultMode: 0400}\n",
        );
        let out = inject_manifests(&text, &opts, Some(&config())).unwrap();
        let doc = &parse(&out)[0];
        assert_eq!(
            doc["spec"]["volumes"][0]["secret"]["defaultMode"],
            Value::Number(256.into())
        );
        assert_eq!(
            doc["spec"]["containers"][0]["env"][0]["value"],
            Value::String("yes".into())
        );
        assert!(
            out.contains("\"yes\""),
            "quoted for a YAML 1.1 reader: {out}"
        );
        // Unquoted, `yes` is a boolean to Kubernetes: refused rather than changed.
        let plain = pod(
            "  - name: a\n    image: a\n    env:\n    - {name: FLAG, value: yes}\n",
            "",
        );
        let e = inject_manifests(&plain, &opts, Some(&config())).unwrap_err();
        assert!(e.to_string().contains("quote it"), "{e}");
    }

    #[test]
    fn the_items_of_a_list_are_injected() {
        let opts = InjectOptions::default();
        let list = format!(
            "apiVersion: v1\nkind: List\nitems:\n- {}",
            pod("  - name: a\n    image: a\n", "").replace('\n', "\n  ")
        );
        let out = inject_manifests(&list, &opts, Some(&config())).unwrap();
        let doc = &parse(&out)[0];
        assert_eq!(
            doc["items"][0]["spec"]["initContainers"][0]["name"],
            Value::String("bearerd".into())
        );
        let back = inject_manifests(&out, &opts, None).unwrap();
        assert!(parse(&back)[0]["items"][0]["spec"]
            .get("initContainers")
            .is_none());
    }

    #[test]
    fn an_apps_own_value_of_the_same_name_survives_inject_and_uninject() {
        let opts = InjectOptions::default();
        let text = pod(
            "  - name: a\n    image: a\n    env:\n    - {name: BEARERD_URL_CRM, value: \"http://elsewhere\"}\n  - name: b\n    image: b\n",
            "",
        );
        let injected = inject_manifests(&text, &opts, Some(&config())).unwrap();
        let doc = &parse(&injected)[0];
        let containers = doc["spec"]["containers"].as_sequence().unwrap();
        assert_eq!(containers[0]["env"].as_sequence().unwrap().len(), 1);
        assert_eq!(
            containers[0]["env"][0]["value"],
            Value::String("http://elsewhere".into())
        );
        assert_eq!(
            containers[1]["env"][0]["value"],
            Value::String("http://127.0.0.1:14080/crm".into())
        );
        let back = inject_manifests(&injected, &opts, None).unwrap();
        let back = &parse(&back)[0];
        assert_eq!(
            back["spec"]["containers"][0]["env"][0]["value"],
            Value::String("http://elsewhere".into())
        );
        assert!(back["spec"]["containers"][1].get("env").is_none());
        assert!(back["spec"].get("initContainers").is_none());
    }
}
