//! Hot reload: an edit of the config file is applied whole (a new credential serves, an
//! upstream moves under load with no failed request, an unchanged credential asks for no
//! token), or not at all (a broken edit, or one only a restart can apply).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bearerd::reload::ReloadOutcome;

use super::support::{self, Harness, Options};

async fn reloadable() -> Harness {
    let h = Harness::start(Options {
        from_file: true,
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    h
}

fn edit(h: &Harness, text: &str) {
    std::fs::write(h.config_path.as_ref().unwrap(), text).unwrap();
}

fn reloads(metrics: &str, result: &str) -> f64 {
    support::metric(
        metrics,
        &format!("bearerd_config_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap()
}

/// Waits (up to 20 s) for the file watch to have ended `n` reloads with `result`.
async fn reloaded(h: &Harness, result: &str, n: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while reloads(&h.metrics().await, result) < n {
        assert!(std::time::Instant::now() < deadline, "no {result} reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_credential_added_to_the_file_serves_without_a_restart() {
    let h = reloadable().await;
    assert_eq!(h.get("/reports/x").await.status(), 404);
    let added = format!(
        "{}\n[credentials.reports]\ngrant = \"client_credentials\"\ntoken_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\nscopes = [\"reports.read\"]\n\n[upstreams.reports]\nurl = \"http://{}/reports-api\"\npath_prefix = \"/reports\"\ncredential = \"reports\"\n",
        h.config_text,
        h.tokens.token_url(),
        support::token_server::CLIENT_ID,
        support::token_server::CLIENT_SECRET,
        h.upstream.addr,
    );
    // The file watch takes it up; nothing is restarted.
    edit(&h, &added);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while h.get("/reports/x").await.status() != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new route never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = h.upstream.state.seen();
    assert_eq!(seen.last().unwrap().target, "/reports-api/x");
    let m = h.metrics().await;
    assert_eq!(reloads(&m, "applied"), 1.0, "{m}");
    let s: serde_json::Value = h.admin_get("/status").await.json().await.unwrap();
    assert_eq!(s["credentials"]["reports"]["state"], "valid", "{s}");
    assert_eq!(s["upstreams"]["reports"]["credential"], "reports", "{s}");
    // The event says what changed.
    let events = h.admin_get("/events").await;
    let mut body = events.bytes_stream();
    let mut text = String::new();
    use futures::StreamExt;
    while !text.contains("config_reloaded") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("the ring replays the reload")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("credentials added: reports"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_moves_under_load_with_no_failed_request_and_no_token_request() {
    let h = Arc::new(reloadable().await);
    let tokens_before = h.tokens.state.requests();
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (h, failures, served, stop) = (
            Arc::clone(&h),
            Arc::clone(&failures),
            Arc::clone(&served),
            Arc::clone(&stop),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match h.client.get(h.url("/api/items")).send().await {
                    Ok(r) if r.status().is_success() => served.fetch_add(1, Ordering::SeqCst),
                    _ => failures.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let moved = h.config_text.replace("/base\"", "/moved\"");
    assert_ne!(moved, h.config_text);
    edit(&h, &moved);
    reloaded(&h, "applied", 1.0).await;
    let at_reload = served.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "a request failed across the reload"
    );
    assert!(
        served.load(Ordering::SeqCst) > at_reload,
        "requests went on after it"
    );
    let seen = h.upstream.state.seen();
    assert_eq!(seen.last().unwrap().target, "/moved/items");
    assert!(seen.iter().any(|r| r.target == "/base/items"));
    // The credential did not change: it kept its token, and asked for none.
    assert_eq!(h.tokens.state.requests(), tokens_before);
    // The same text again changes nothing.
    assert_eq!(h.sidecar().reload().await, ReloadOutcome::Unchanged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_edit_or_one_that_needs_a_restart_keeps_the_old_config_serving() {
    let h = reloadable().await;
    let before = h.tokens.state.requests();
    // A typo: refused with its line, and nothing of it applies.
    let broken = h.config_text.replace(
        "path_prefix = \"/api\"",
        "path_prefix = \"/api2\"\nurll = \"x\"",
    );
    edit(&h, &broken);
    reloaded(&h, "refused", 1.0).await;
    // The handle (as SIGHUP) tries it again, and says why.
    match h.sidecar().reload().await {
        ReloadOutcome::Refused(why) => {
            assert!(
                why.contains("bearerd.toml:") && why.contains("urll"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.get("/api/x").await.status(), 200);
    assert_eq!(h.get("/api2/x").await.status(), 404);
    // A new listener address needs a restart: reported, and nothing of the edit applies
    // (not even the route it also changed).
    let port = support::free_addr().port();
    let relisten = h
        .config_text
        .replace("path_prefix = \"/api\"", "path_prefix = \"/api2\"")
        .lines()
        .map(|l| match l.starts_with("admin_listen") {
            true => format!("admin_listen = \"127.0.0.1:{port}\""),
            false => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    edit(&h, &relisten);
    reloaded(&h, "restart_required", 1.0).await;
    match h.sidecar().reload().await {
        ReloadOutcome::RestartRequired(why) => assert!(why.contains("admin_listen"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.get("/api/x").await.status(), 200);
    assert_eq!(h.get("/api2/x").await.status(), 404);
    // So does turning tracing on: the exporter starts with the process.
    let traced = format!(
        "{}\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n",
        h.config_text
    );
    edit(&h, &traced);
    match h.sidecar().reload().await {
        ReloadOutcome::RestartRequired(why) => assert!(why.contains("[telemetry]"), "{why}"),
        other => panic!("{other:?}"),
    }
    let m = h.metrics().await;
    assert_eq!(reloads(&m, "applied"), 0.0, "{m}");
    assert_eq!(h.tokens.state.requests(), before);
    // A credential whose binding changes (its scopes) starts fresh: a new token request.
    let rescoped = h.config_text.replace(
        "scopes = [\"demo.read\"]",
        "scopes = [\"demo.read\", \"demo.write\"]",
    );
    edit(&h, &rescoped);
    reloaded(&h, "applied", 1.0).await;
    assert_eq!(h.get("/api/x").await.status(), 200);
    assert_eq!(h.tokens.state.requests(), before + 1);
    let form = h.tokens.state.last_form();
    assert!(
        form.iter()
            .any(|(k, v)| k == "scope" && v.contains("demo.write")),
        "{form:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_configmap_symlink_swap_is_taken_up() {
    let h = reloadable().await;
    // A mounted ConfigMap: bearerd.toml -> ..data/bearerd.toml, ..data -> ..v1.
    let path = h.config_path.clone().unwrap();
    let dir = path.parent().unwrap().to_path_buf();
    let version = |name: &str, text: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("bearerd.toml"), text).unwrap();
    };
    version("..v1", &h.config_text);
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("..data/bearerd.toml", &path).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.get("/api/x").await.status(), 200);
    // The kubelet's update: a new version directory, and ..data swapped by a rename.
    version(
        "..v2",
        &h.config_text
            .replace("path_prefix = \"/api\"", "path_prefix = \"/v2\""),
    );
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while h.get("/v2/x").await.status() != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the swap was never taken up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(h.get("/api/x").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_the_running_binary_and_does_not_stop_it() {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(60)).await;
    let h = Harness::start_with(tokens, upstream, Options::default()).await;
    // The same config for `bearerd run`, on listeners of its own.
    let (proxy, admin) = support::free_addr_pair();
    let text: String = h
        .config_text
        .lines()
        .map(|l| match l {
            l if l.starts_with("proxy_listen") => format!("proxy_listen = \"{proxy}\""),
            l if l.starts_with("admin_listen") => format!("admin_listen = \"{admin}\""),
            l => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = std::env::temp_dir().join(format!("bearerd-hup-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bearerd.toml");
    std::fs::write(&path, &text).unwrap();
    /// Stops the binary however the test ends.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Running(
        std::process::Command::new(env!("CARGO_BIN_EXE_bearerd"))
            .args(["run", "-c"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id().to_string();
    let metrics = || {
        let c = h.client.clone();
        async move {
            match c.get(format!("http://{admin}/metrics")).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        }
    };
    let wait_for = |result: &'static str, n: f64| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let m = metrics().await;
            let seen = support::metric(
                &m,
                &format!("bearerd_config_reloads_total{{result=\"{result}\"}}"),
            );
            if seen >= Some(n) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {result} reload: {m}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    wait_for("refused", 0.0).await;
    // A broken edit: the file watch refuses it once, and takes it up no more.
    std::fs::write(
        &path,
        text.replace("credential = \"api\"", "credential = \"nope\""),
    )
    .unwrap();
    wait_for("refused", 1.0).await;
    let hup = || {
        // The shell's own `kill`: a minimal image may have no kill binary.
        let status = std::process::Command::new("sh")
            .args(["-c", &format!("kill -HUP {pid}")])
            .status()
            .unwrap();
        assert!(status.success());
    };
    // SIGHUP tries it again (an operator fixed a file it names, say), and does not stop it.
    hup();
    wait_for("refused", 2.0).await;
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "SIGHUP stopped bearerd"
    );
    std::fs::write(
        &path,
        text.replace("path_prefix = \"/api\"", "path_prefix = \"/hup\""),
    )
    .unwrap();
    hup();
    wait_for("applied", 1.0).await;
    let r = h
        .client
        .get(format!("http://{proxy}/hup/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
