//! `bearerd check` on every example config, and on config mistakes: each must give an
//! error naming the file, the line and the key.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use support::keys::{now, KeyKind, TestKey};

fn bearerd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bearerd"));
    for var in [
        "CRM_CLIENT_SECRET",
        "API_CLIENT_SECRET",
        "CALENDAR_CLIENT_SECRET",
        "CALENDAR_REFRESH_TOKEN",
        "GITHUB_TOKEN",
        "GITHUB_CLIENT_SECRET",
        "TOOLS_CLIENT_SECRET",
        "CI_CLIENT_SECRET",
        "BEARERD_ADMIN_TOKEN",
    ] {
        c.env(var, "example-value");
    }
    c.env("BEARERD_STORE_KEY", bearerd::store::generate_key());
    c.env("BEARERD_REDIS_URL", REDIS_URL);
    c.env_remove("BEARERD_CONFIG");
    c
}

const REDIS_URL: &str = "redis://:example-password@redis.example:6379/0";

/// The files the secretless examples name (keys, projected tokens, certificates), made
/// once per test run in a temporary directory: example path → the fixture's path.
fn example_files() -> &'static [(&'static str, String)] {
    static FILES: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bearerd-examples-{}", support::rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = TestKey::generate(KeyKind::Rsa);
        let jwt = key.mint(&serde_json::json!({
            "iss": "https://kubernetes.default.svc", "sub": "system:serviceaccount:apps:app",
            "aud": "idp", "iat": now(), "exp": now() + 3600,
        }));
        let tls_key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".to_string()])
            .unwrap()
            .self_signed(&tls_key)
            .unwrap();
        let sa = serde_json::json!({
            "type": "service_account", "private_key_id": "k1", "private_key": key.private_pem,
            "client_email": "app@project.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.googleapis.com/token",
        });
        let files = [
            ("/etc/bearerd/keys/client.pem", key.private_pem.clone()),
            ("/var/run/secrets/tokens/idp-token", jwt.clone()),
            ("/var/run/secrets/tokens/sts-token", jwt),
            ("/etc/bearerd/tls/client.crt", cert.pem()),
            ("/etc/bearerd/tls/client.key", tls_key.serialize_pem()),
            ("/etc/bearerd/keys/sa.json", sa.to_string()),
        ];
        files
            .into_iter()
            .enumerate()
            .map(|(i, (example, content))| {
                let path = dir.join(format!("{i}"));
                std::fs::write(&path, content).unwrap();
                (example, path.display().to_string())
            })
            .collect()
    })
}

/// An example's text with the files it names replaced by fixtures.
fn with_example_files(text: &str) -> String {
    example_files()
        .iter()
        .fold(text.to_string(), |t, (example, fixture)| {
            t.replace(example, fixture)
        })
}

#[test]
fn every_example_config_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let copies =
        std::env::temp_dir().join(format!("bearerd-example-copies-{}", support::rand_suffix()));
    std::fs::create_dir_all(&copies).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let path = copies.join(path.file_name().unwrap());
            std::fs::write(&path, with_example_files(&text)).unwrap();
            let out = bearerd().args(["check", "-c"]).arg(&path).output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.contains("ok"), "{stdout}");
            assert!(
                stdout.contains("credential"),
                "routes are printed: {stdout}"
            );
            assert!(
                !stdout.contains("example-value"),
                "check never prints a secret"
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} example configs");
}

const BASE: &str = r#"[server]
proxy_listen = "127.0.0.1:18080"
admin_listen = "127.0.0.1:19090"

[credentials.crm]
grant = "client_credentials"
token_url = "https://idp.example.com/token"
client_id = "billing"
client_secret = "s"

[upstreams.crm]
url = "https://crm.example.com/api"
path_prefix = "/crm"
credential = "crm"
"#;

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "bearerd-check-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs check on `text` and asserts it passes; its output.
fn assert_passes(name: &str, text: &str) -> std::process::Output {
    let path = write(name, text);
    let out = bearerd().args(["check", "-c"]).arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs check on `text` and asserts the error names `file:line:` and every `needle`.
fn assert_error(text: &str, line: usize, needles: &[&str]) {
    let path = write("bad.toml", text);
    let out = bearerd().args(["check", "-c"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let location = format!("{}:{line}:", path.display());
    assert!(
        stderr.contains(&location),
        "expected {location} in: {stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "expected {n:?} in: {stderr}");
    }
}

const PER_SUBJECT: &str = r#"[credentials.gmail]
grant = "refresh_token"
token_url = "https://idp.example.com/token"
client_id = "app"
client_secret = "s"
subject_header = "x-bearerd-subject"

[upstreams.gmail]
url = "https://gmail.example.com/api"
path_prefix = "/gmail"
credential = "gmail"
"#;

#[test]
fn per_subject_keys_are_checked_with_their_line() {
    let with = |line: &str| PER_SUBJECT.replacen("subject_header = \"x-bearerd-subject\"", line, 1);
    assert_error(
        &with("subject_header = \"bad header\""),
        6,
        &["subject_header", "not a valid HTTP header name"],
    );
    assert_error(
        &with("subject_header = \"Authorization\""),
        6,
        &["subject_header", "meaning of its own"],
    );
    assert_error(
        &with("subject_header = \"x-s\"\nrefresh_token = \"rt\""),
        7,
        &["refresh_token", "per subject"],
    );
    assert_error(
        &with("redirect_uri = \"https://app/cb\""),
        6,
        &["redirect_uri", "set subject_header"],
    );
    assert_error(
        &with("subject_header = \"x-s\"\nmax_subjects_in_memory = 0"),
        7,
        &["max_subjects_in_memory", "at least 1"],
    );
    assert_error(
        &with("subject_header = \"x-s\"\nconnect_lifetime = \"2h\""),
        7,
        &["connect_lifetime", "at most 1h"],
    );
    assert_error(
        &PER_SUBJECT.replace(
            "grant = \"refresh_token\"",
            "grant = \"client_credentials\"",
        ),
        6,
        &["subject_header"],
    );
    // On behalf of: a header is only a source for token_exchange's subject_token.
    let obo = PER_SUBJECT
        .replace("grant = \"refresh_token\"", "grant = \"token_exchange\"")
        .replace(
            "subject_header = \"x-bearerd-subject\"",
            "subject_token = { header = \"x-user-token\" }",
        );
    assert_passes("obo.toml", &obo);
    let token_line = "subject_token = { header = \"x-user-token\" }";
    // An actor token is a file, checked like the plain exchange's.
    assert_error(
        &obo.replace(
            token_line,
            &format!("{token_line}\nactor_token = {{ file = \"/nonexistent/actor.jwt\" }}"),
        ),
        7,
        &["actor_token", "/nonexistent/actor.jwt"],
    );
    assert_error(
        &obo.replace(
            token_line,
            &format!("{token_line}\nactor_token = {{ env = \"AGENT_TOKEN\" }}"),
        ),
        7,
        &["actor_token", "file"],
    );
    assert_error(
        &obo.replace(token_line, "subject_token = { header = \"Host\" }"),
        6,
        &["subject_token", "meaning of its own"],
    );
    assert_error(
        &PER_SUBJECT.replace(
            "client_secret = \"s\"",
            "client_secret = { header = \"x-secret\" }",
        ),
        5,
        &["client_secret", "subject_token"],
    );
}

const REGISTERING: &str = r#"[credentials.mcp]
grant = "refresh_token"
issuer = "https://as.example.com"
registration = "auto"

[upstreams.mcp]
url = "https://mcp.example.com/mcp"
path_prefix = "/mcp"
credential = "mcp"
"#;

/// `registration = "auto"` and its companion: a registered client is never also named or
/// authenticated in the config, and only one person's credential registers.
#[test]
fn registration_keys_are_checked_with_their_line() {
    assert_passes("registering.toml", REGISTERING);
    let doc = "client_metadata_url = \"https://app.example.com/bearerd-client.json\"";
    let path = write(
        "documents.toml",
        &REGISTERING.replace(
            "registration = \"auto\"",
            &format!("registration = \"auto\"\n{doc}"),
        ),
    );
    let out = bearerd()
        .args(["client-metadata", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let document: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        document["client_id"],
        "https://app.example.com/bearerd-client.json"
    );
    assert_eq!(document["token_endpoint_auth_method"], "none");
    assert_eq!(document["application_type"], "native");
    assert_eq!(document["redirect_uris"][0], "http://127.0.0.1/callback");
    // Without a document, there is nothing to print.
    let out = bearerd()
        .args(["client-metadata", "-c"])
        .arg(write("plain.toml", REGISTERING))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("client_metadata_url"));

    let with = |extra: &str| {
        REGISTERING.replace(
            "registration = \"auto\"",
            &format!("registration = \"auto\"\n{extra}"),
        )
    };
    assert_error(
        &with("client_id = \"app\""),
        5,
        &[
            "credentials.mcp.client_id",
            "registration = \"auto\" registers the client",
        ],
    );
    assert_error(
        &with("client_secret = \"s\""),
        5,
        &["credentials.mcp.client_secret", "remove client_secret"],
    );
    assert_error(
        &with("client_metadata_url = \"http://app.example.com/c.json\""),
        5,
        &["client_metadata_url", "https, with a path"],
    );
    assert_error(
        &with("subject_header = \"x-user\""),
        4,
        &["credentials.mcp.registration", "per-subject"],
    );
    assert_error(
        &REGISTERING.replace("\"auto\"", "\"dynamic\""),
        4,
        &["registration must be \"auto\""],
    );
    assert_error(
        &REGISTERING.replace("registration = \"auto\"", doc),
        4,
        &["client_metadata_url", "needs registration = \"auto\""],
    );
    // A person consents to more scopes at a login: step_up_scopes is for machine grants.
    assert_error(
        &with("step_up_scopes = [\"mcp:write\"]"),
        5,
        &["credentials.mcp.step_up_scopes", "machine grants"],
    );
    // Only a grant a person logs in to registers.
    assert_error(
        &REGISTERING.replace(
            "grant = \"refresh_token\"",
            "grant = \"client_credentials\"",
        ),
        4,
        &["registration", "unknown field"],
    );
}

const ASSERTED: &str = r#"[credentials.mcp]
grant = "jwt_bearer"
token_url = "https://as.example.com/token"
client_id = "app"
assertion = { file = "/var/run/secrets/tokens/token" }

[upstreams.mcp]
url = "https://mcp.example.com/mcp"
path_prefix = "/mcp"
credential = "mcp"
"#;

/// jwt_bearer's `assertion` sources: a platform's file, or an ID-JAG from an enterprise
/// IdP; never together, and never with the keys of an assertion bearerd signs.
#[test]
fn assertion_sources_are_checked_with_their_line() {
    assert_passes("asserted.toml", ASSERTED);
    let file_line = "assertion = { file = \"/var/run/secrets/tokens/token\" }";
    let id_token = write("id-token", "eyJ.x.y");
    let jag = format!("assertion = {{ id_jag = {{ token_url = \"https://idp.example.com/token\", client_id = \"c\", subject_token = {{ file = {:?} }} }} }}", id_token.display().to_string());
    let jag = jag.as_str();
    assert_passes("id-jag.toml", &ASSERTED.replace(file_line, jag));
    assert_error(
        &ASSERTED.replace(file_line, "assertion = { }"),
        5,
        &["credentials.mcp.assertion", "one of them"],
    );
    assert_error(
        &ASSERTED.replace(
            file_line,
            &format!("{file_line}\nassertion_subject = \"x\""),
        ),
        6,
        &["assertion_subject", "bearerd signs"],
    );
    assert_error(
        &ASSERTED.replace(
            file_line,
            &jag.replace("client_id = \"c\"", "client_id = \"c\", colour = 1"),
        ),
        5,
        &["colour"],
    );
    assert_error(
        &ASSERTED.replace(
            file_line,
            &jag.replace(
                "https://idp.example.com/token",
                "http://idp.example.com/token",
            ),
        ),
        5,
        &["credentials.mcp.assertion.id_jag.token_url"],
    );
}

#[test]
fn dpop_is_checked_with_its_line() {
    let on = |line: &str| {
        BASE.replace(
            "client_secret = \"s\"",
            &format!("client_secret = \"s\"\n{line}"),
        )
    };
    assert_passes("dpop.toml", &on("dpop = true"));
    assert_error(&on("dpop = \"yes\""), 10, &["credentials.crm.dpop"]);
    // A static token has no token endpoint to bind it: the key is not one of its keys.
    let static_token = on("dpop = true")
        .replace("grant = \"client_credentials\"", "grant = \"static\"")
        .replace("token_url = \"https://idp.example.com/token\"\n", "")
        .replace("client_id = \"billing\"\n", "")
        .replace(
            "client_secret = \"s\"",
            "token = { env = \"BEARERD_TEST_TOKEN\" }",
        );
    assert_error(&static_token, 8, &["dpop", "unknown field"]);
}

#[test]
fn the_base_config_is_valid() {
    let out = assert_passes("good.toml", BASE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("http://127.0.0.1:18080/crm/"), "{stdout}");
    assert!(stdout.contains("https://crm.example.com/api/"), "{stdout}");
}

#[test]
fn unknown_key() {
    let text = BASE.replace(
        "client_id = \"billing\"",
        "client_id = \"billing\"\nscope = [\"x\"]",
    );
    assert_error(&text, 9, &["scope", "unknown field"]);
}

#[test]
fn missing_credential() {
    let text = BASE.replace("credential = \"crm\"", "credential = \"crn\"");
    assert_error(
        &text,
        14,
        &["upstreams.crm.credential", "no credential named \"crn\""],
    );
}

#[test]
fn a_tools_credential_is_checked_with_its_line() {
    let tools = format!("{BASE}\n[upstreams.crm.tools]\n\"create_issue\" = \"crm\"\n");
    assert_passes("tools.toml", &tools);
    assert_error(
        &tools.replace(
            "\"create_issue\" = \"crm\"",
            "\"create_issue\" = \"crm-write\"",
        ),
        17,
        &[
            "upstreams.crm.tools.create_issue",
            "no credential named \"crm-write\"",
        ],
    );
    assert_error(
        &tools.replace("\"create_issue\"", "\"bad\\ntool\""),
        17,
        &["cannot be an Mcp-Name header value"],
    );
}

#[test]
fn bad_url() {
    let text = BASE.replace("https://crm.example.com/api", "crm.example.com/api");
    assert_error(&text, 12, &["upstreams.crm.url", "invalid URL"]);
    let text = BASE.replace("https://crm.example.com/api", "ftp://crm.example.com/api");
    assert_error(&text, 12, &["upstreams.crm.url", "http or https"]);
}

#[test]
fn duplicate_prefix() {
    let text = format!("{BASE}\n[upstreams.other]\nurl = \"https://other.example.com/\"\npath_prefix = \"/crm/\"\ncredential = \"crm\"\n");
    assert_error(
        &text,
        18,
        &[
            "upstreams.other.path_prefix",
            "already used by upstream \"crm\"",
        ],
    );
}

#[test]
fn duplicate_port() {
    let text = format!("{BASE}\n[upstreams.other]\nurl = \"https://other.example.com/\"\nlisten = \"127.0.0.1:18080\"\ncredential = \"crm\"\n");
    assert_error(
        &text,
        18,
        &["upstreams.other.listen", "server.proxy_listen"],
    );
}

#[test]
fn max_request_header_bytes_out_of_range() {
    let text = BASE.replace(
        "admin_listen = \"127.0.0.1:19090\"",
        "admin_listen = \"127.0.0.1:19090\"\nmax_request_header_bytes = 100",
    );
    assert_error(
        &text,
        4,
        &[
            "server.max_request_header_bytes",
            "between 1024 and 1048576",
        ],
    );
}

#[test]
fn bad_duration() {
    let text = BASE.replace(
        "client_secret = \"s\"",
        "client_secret = \"s\"\nrefresh_margin = \"sixty\"",
    );
    assert_error(
        &text,
        10,
        &["credentials.crm.refresh_margin", "invalid duration"],
    );
}

#[test]
fn wrong_type() {
    let text = BASE.replace(
        "client_secret = \"s\"",
        "client_secret = \"s\"\nrefresh_ratio = \"high\"",
    );
    assert_error(&text, 10, &["credentials.crm.refresh_ratio"]);
}

#[test]
fn missing_secret_env_var() {
    let text = BASE.replace(
        "client_secret = \"s\"",
        "client_secret = { env = \"BEARERD_TEST_UNSET_VAR\" }",
    );
    assert_error(
        &text,
        9,
        &[
            "credentials.crm.client_secret",
            "BEARERD_TEST_UNSET_VAR is not set",
        ],
    );
}

#[test]
fn missing_secret_file() {
    let text = BASE.replace(
        "client_secret = \"s\"",
        "client_secret = { file = \"/nonexistent/secret\" }",
    );
    assert_error(
        &text,
        9,
        &["credentials.crm.client_secret", "/nonexistent/secret"],
    );
}

#[test]
fn toml_syntax_error() {
    let text = BASE.replace("path_prefix = \"/crm\"", "path_prefix = \"/crm");
    assert_error(&text, 13, &[]);
}

#[test]
fn unknown_grant() {
    let text = BASE.replace("grant = \"client_credentials\"", "grant = \"password\"");
    assert_error(&text, 6, &["credentials.crm.grant", "unknown grant"]);
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = bearerd()
        .args(["check", "-c", "/nonexistent/bearerd.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/bearerd.toml") && stderr.contains("cannot read config"),
        "{stderr}"
    );
}

/// Each grant kind has a strict set of keys: a key of another grant is refused at its line,
/// and the error says whose key it is.
#[test]
fn a_key_of_another_grant_is_refused_for_every_grant_kind() {
    let crm = "[credentials.crm]\n";
    let cases: [(&str, &str, &str); 6] = [
        // The reported case: all three used to pass `check` silently.
        (
            "grant = \"static\"\ntoken = \"t\"\nscopes = [\"x\"]\nissuer = \"https://idp.example.com\"\nca_file = \"/nonexistent\"\n",
            "scopes",
            "client_credentials | refresh_token",
        ),
        (
            "grant = \"static\"\ntoken = \"t\"\nrefresh_ratio = 0.5\n",
            "refresh_ratio",
            "client_credentials | refresh_token",
        ),
        (
            "grant = \"client_credentials\"\ntoken_url = \"https://idp.example.com/token\"\nclient_id = \"c\"\nrefresh_token = \"r\"\n",
            "refresh_token",
            "refresh_token, not \"client_credentials\"",
        ),
        (
            "grant = \"client_credentials\"\ntoken_url = \"https://idp.example.com/token\"\nclient_id = \"c\"\ntoken = \"t\"\n",
            "token",
            "static",
        ),
        (
            "grant = \"client_credentials\"\ntoken_url = \"https://idp.example.com/token\"\nclient_id = \"c\"\nredirect_port = 8765\n",
            "redirect_port",
            "refresh_token",
        ),
        (
            "grant = \"refresh_token\"\ntoken_url = \"https://idp.example.com/token\"\nclient_id = \"c\"\ntoken = { file = \"/nonexistent\" }\n",
            "token",
            "static",
        ),
    ];
    for (table, key, owner) in cases {
        let text = BASE.replace(
            "[credentials.crm]\ngrant = \"client_credentials\"\ntoken_url = \"https://idp.example.com/token\"\nclient_id = \"billing\"\nclient_secret = \"s\"\n",
            &format!("{crm}{table}"),
        );
        assert_ne!(text, BASE);
        let line = text
            .lines()
            .position(|l| l.starts_with(&format!("{key} =")))
            .unwrap()
            + 1;
        assert_error(
            &text,
            line,
            &[&format!("credentials.crm.{key}"), "unknown field", owner],
        );
    }
}

#[test]
fn a_misspelt_credential_key_gets_a_suggestion() {
    let text = BASE.replace(
        "client_id = \"billing\"",
        "client_id = \"billing\"\nscops = [\"x\"]",
    );
    assert_error(
        &text,
        9,
        &["credentials.crm.scops", "did you mean `scopes`?"],
    );
}

/// A store key that is missing, empty or the wrong length says what the key is for and how
/// to make one.
#[test]
fn a_bad_store_key_says_how_to_make_one() {
    let text = BASE.replace(
        "[credentials.crm]",
        "[store]\nbackend = \"file\"\npath = \"/tmp/bearerd-check-unused.store\"\nkey = { env = \"BEARERD_STORE_KEY\" }\n\n[credentials.crm]",
    );
    let short = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([7u8; 16])
    };
    for (value, problem) in [
        (None, "BEARERD_STORE_KEY is not set"),
        (Some(String::new()), "BEARERD_STORE_KEY is empty"),
        (Some(short), "must be 32 bytes, got 16"),
        (Some("not a key!".into()), "neither base64 nor hex"),
    ] {
        let path = write("store.toml", &text);
        let mut cmd = bearerd();
        match &value {
            Some(v) => cmd.env("BEARERD_STORE_KEY", v),
            None => cmd.env_remove("BEARERD_STORE_KEY"),
        };
        let out = cmd.args(["check", "-c"]).arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        for needle in [
            &format!("{}:8:", path.display()),
            "store.key",
            problem,
            "seals every token the store keeps at rest",
            "bearerd keygen",
            "export BEARERD_STORE_KEY=",
        ] {
            assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
        }
    }
}

/// The example configs with every `{ env = … }` secret written inline, so that mutations
/// reach every check rather than stopping at the first unset variable.
fn examples_inline() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let key = bearerd::store::generate_key();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = with_example_files(&std::fs::read_to_string(&path).unwrap());
            let text = text
                .replace("{ env = \"BEARERD_STORE_KEY\" }", &format!("{key:?}"))
                .replace("{ env = \"BEARERD_REDIS_URL\" }", &format!("{REDIS_URL:?}"));
            let inline = regex_free_replace_env(&text);
            out.push((path.file_name().unwrap().to_string_lossy().into(), inline));
        }
    }
    out.sort();
    out
}

/// `{ env = "NAME" }` → `"example-value"`.
fn regex_free_replace_env(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("{ env = \"") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let end = after.find('}').unwrap() + 1;
        out.push_str("\"example-value\"");
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    /// Replace the value of a `key = value` line.
    Retype(usize, String),
    InsertLine(usize, String),
    InsertChar(usize, char),
}

fn mutation() -> impl proptest::strategy::Strategy<Value = Mutation> {
    use proptest::prelude::*;
    let value = prop_oneof![
        Just("1".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999".to_string()),
        Just("0.5".to_string()),
        Just("true".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("[]".to_string()),
        Just("[1, \"a\"]".to_string()),
        Just("{}".to_string()),
        Just("{ file = \"/nonexistent\" }".to_string()),
        Just("{ env = \"BEARERD_TEST_UNSET_VAR\" }".to_string()),
        Just("\"\"".to_string()),
        Just("\"5x\"".to_string()),
        Just("\"http://\"".to_string()),
        "\"[ -~&&[^\"\\\\]]{0,12}\"",
        "[ -~]{0,8}",
    ];
    let key = prop::sample::select(vec![
        "grant",
        "token_url",
        "client_id",
        "scopes",
        "token",
        "issuer",
        "url",
        "listen",
        "path_prefix",
        "credential",
        "backend",
        "refresh_ratio",
        "threads",
        "bogus",
    ]);
    let line = prop_oneof![
        (key, value.clone()).prop_map(|(k, v)| format!("{k} = {v}")),
        Just("[credentials.x]".to_string()),
        Just("[upstreams.crm]".to_string()),
        Just("[[server]]".to_string()),
        "[ -~]{0,20}",
    ];
    let at = 0usize..64;
    prop_oneof![
        at.clone().prop_map(Mutation::DeleteLine),
        at.clone().prop_map(Mutation::DuplicateLine),
        (at.clone(), at.clone()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (at.clone(), value).prop_map(|(a, v)| Mutation::Retype(a, v)),
        (at.clone(), line).prop_map(|(a, l)| Mutation::InsertLine(a, l)),
        (0usize..4096, prop::char::range(' ', '~')).prop_map(|(a, c)| Mutation::InsertChar(a, c)),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let n = lines.len().max(1);
    match m {
        Mutation::DeleteLine(i) if !lines.is_empty() => {
            lines.remove(i % n);
        }
        Mutation::DuplicateLine(i) if !lines.is_empty() => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
        }
        Mutation::SwapLines(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
        Mutation::Retype(i, v) => {
            // The i-th `key = value` line (counting around), its value replaced.
            let assignments: Vec<usize> = (0..lines.len())
                .filter(|&j| lines[j].contains(" = ") && !lines[j].trim_start().starts_with('#'))
                .collect();
            if let Some(&j) = assignments.get(i % assignments.len().max(1)) {
                let k = lines[j].split(" = ").next().unwrap().to_string();
                lines[j] = format!("{k} = {v}");
            }
        }
        Mutation::InsertLine(i, l) => lines.insert(i % (lines.len() + 1), l.clone()),
        Mutation::InsertChar(i, c) => {
            let mut s = lines.join("\n");
            let mut at = i % (s.len() + 1);
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            s.insert(at, *c);
            return s;
        }
        _ => {}
    }
    lines.join("\n") + "\n"
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(1000),
        ..Default::default()
    })]

    /// Mutated example configs (lines deleted, duplicated, swapped, retyped, inserted,
    /// characters inserted) never panic the loader, and every rejection names a line.
    #[test]
    fn mutated_example_configs_never_panic_and_every_rejection_names_a_line(
        which in 0usize..64,
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let examples = examples_inline();
        let (name, text) = &examples[which % examples.len()];
        let mut mutated = text.clone();
        for m in &mutations {
            mutated = apply(&mutated, m);
        }
        if let Err(e) = bearerd::config::Config::parse(Path::new(name), &mutated) {
            let lines = mutated.lines().count().max(1);
            proptest::prop_assert!(e.line >= 1 && e.line <= lines + 1, "line {} of {}: {e}\n{mutated}", e.line, lines);
            proptest::prop_assert!(e.column >= 1, "{e}");
            let location = format!("{name}:{}:{}: ", e.line, e.column);
            proptest::prop_assert!(e.to_string().starts_with(&location), "{e}");
            proptest::prop_assert!(!e.message.trim().is_empty(), "{e}\n{mutated}");
        }
    }
}

#[test]
fn every_example_config_parses_with_inline_secrets() {
    // The property above starts from these: each must be valid before it is mutated.
    let examples = examples_inline();
    assert!(examples.len() >= 4);
    for (name, text) in examples {
        if let Err(e) = bearerd::config::Config::parse(Path::new(&name), &text) {
            panic!("{e}");
        }
    }
}

/// A Redis store's URL is checked at load; the error never quotes it (it may hold a
/// password), and keys of other backends are refused.
#[test]
fn redis_store_mistakes_are_located_and_never_print_the_url() {
    let with_store = |store: &str| {
        BASE.replace(
            "[credentials.crm]",
            &format!("[store]\n{store}\n\n[credentials.crm]"),
        )
    };
    let key = "key = { env = \"BEARERD_STORE_KEY\" }";
    for (store, line, needles) in [
        (
            format!("backend = \"redis\"\nurl = \"https://user:hunter2@redis.example/0\"\n{key}"),
            7,
            vec!["store.url", "redis:// or rediss://"],
        ),
        (
            format!(
                "backend = \"redis\"\nurl = \"redis://user:hunter2@redis.example/zero\"\n{key}"
            ),
            7,
            vec!["store.url", "database number"],
        ),
        (
            "backend = \"redis\"\nurl = \"redis://redis.example\"".to_string(),
            6,
            vec!["store.backend", "bearerd keygen"],
        ),
        (
            format!("backend = \"redis\"\n{key}"),
            6,
            vec!["store.backend", "BEARERD_REDIS_URL"],
        ),
        (
            format!(
                "backend = \"redis\"\nurl = \"redis://redis.example\"\n{key}\nprefix = \"a b\""
            ),
            9,
            vec!["store.prefix"],
        ),
        (
            format!("backend = \"file\"\npath = \"/tmp/x.store\"\n{key}\nprefix = \"app\""),
            9,
            vec!["store.prefix", "redis"],
        ),
    ] {
        let text = with_store(&store);
        assert_error(&text, line, &needles);
        let path = write("redis.toml", &text);
        let out = bearerd().args(["check", "-c"]).arg(&path).output().unwrap();
        assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
    }
}

/// The TLS keys of a Redis store (`ca_file`, `client_cert`, `client_key`): only with a
/// `rediss://` url and only on the redis backend, the certificate with its key, files only,
/// each file readable and the pair matching; each mistake is located, and a right set passes.
#[test]
fn redis_tls_mistakes_are_located() {
    let dir = write("anchor", "").parent().unwrap().join("pki");
    let pki = support::pki::TestPki::generate(&dir);
    let other = support::pki::TestPki::generate(&dir.join("other"));
    let with_store = |store: &str| {
        BASE.replace(
            "[credentials.crm]",
            &format!("[store]\n{store}\n\n[credentials.crm]"),
        )
    };
    let head = |scheme: &str| {
        format!(
            "backend = \"redis\"\nurl = \"{scheme}://redis.example:6380/0\"\nkey = {{ env = \"BEARERD_STORE_KEY\" }}"
        )
    };
    let file = |p: &Path| format!("{{ file = {:?} }}", p.display().to_string());
    let ca = format!("ca_file = {:?}", pki.ca.display().to_string());
    let cert = format!("client_cert = {}", file(&pki.client_cert));
    let key = format!("client_key = {}", file(&pki.client_key));

    let valid = with_store(&format!("{}\n{ca}\n{cert}\n{key}", head("rediss")));
    assert_passes("ok.toml", &valid);

    for (store, line, needles) in [
        (
            format!("{}\n{ca}", head("redis")),
            9,
            vec!["store.ca_file", "rediss://"],
        ),
        (
            format!("{}\n{cert}\n{key}", head("redis")),
            9,
            vec!["store.client_cert", "rediss://"],
        ),
        (
            format!("{}\n{cert}", head("rediss")),
            9,
            vec!["store.client_cert", "client_key"],
        ),
        (
            format!("{}\n{key}", head("rediss")),
            9,
            vec!["store.client_key", "client_cert"],
        ),
        (
            format!(
                "{}\nclient_cert = {{ env = \"REDIS_CERT\" }}\n{key}",
                head("rediss")
            ),
            9,
            vec!["store.client_cert", "PEM file"],
        ),
        (
            format!(
                "{}\nca_file = {:?}",
                head("rediss"),
                dir.join("missing.crt").display().to_string()
            ),
            9,
            vec!["store.ca_file", "cannot read CA file"],
        ),
        (
            format!(
                "{}\nca_file = {:?}",
                head("rediss"),
                pki.client_key.display().to_string()
            ),
            9,
            vec!["store.ca_file", "no PEM certificate"],
        ),
        (
            format!(
                "{}\n{cert}\nclient_key = {}",
                head("rediss"),
                file(&other.client_key)
            ),
            9,
            vec!["store.client_cert", "does not match"],
        ),
        (
            format!(
                "{}\n{cert}\nclient_key = {}",
                head("rediss"),
                file(&pki.client_cert)
            ),
            10,
            vec!["store.client_key"],
        ),
        (
            format!("backend = \"memory\"\n{ca}"),
            7,
            vec!["store.ca_file", "redis"],
        ),
        (
            head("rediss").replace("/0\"", "/0#insecure\""),
            7,
            vec!["store.url", "#fragment", "ca_file"],
        ),
    ] {
        assert_error(&with_store(&store), line, &needles);
    }
}

/// The trust boundary's exceptions: each entry is checked with its line, and `check`
/// prints a warning line for each relaxation in force.
#[test]
fn allowed_hosts_and_origins_are_checked_and_warned_about() {
    let with = |lines: &str| {
        BASE.replace(
            "admin_listen = \"127.0.0.1:19090\"",
            &format!("admin_listen = \"127.0.0.1:19090\"\n{lines}"),
        )
    };
    assert_error(
        &with("allowed_origins = [\"*\"]"),
        4,
        &["server.allowed_origins", "\"*\" is not an origin"],
    );
    assert_error(
        &with("allowed_origins = [\"https://console.example.com/app\"]"),
        4,
        &["server.allowed_origins", "no path"],
    );
    assert_error(
        &with("allowed_hosts = [\"bearerd.local:14080\"]"),
        4,
        &["server.allowed_hosts", "bare host name"],
    );
    assert_error(
        &with("allowed_hosts = [\"*.example.com\"]"),
        4,
        &["server.allowed_hosts", "wildcards"],
    );
    let quiet = assert_passes("quiet.toml", BASE);
    assert!(!String::from_utf8_lossy(&quiet.stdout).contains("warning:"));
    let out = assert_passes(
        "relaxed.toml",
        &with("allowed_hosts = [\"Bearerd.Local\"]\nallowed_origins = [\"https://Console.Example.com:8443\"]"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 2, "{stdout}");
    assert!(
        warnings[0].contains("server.allowed_hosts") && warnings[0].contains("bearerd.local"),
        "{stdout}"
    );
    assert!(
        warnings[1].contains("server.allowed_origins")
            && warnings[1].contains("https://console.example.com:8443"),
        "{stdout}"
    );
}

/// `discover = true` needs the credential to pin its authorization server (issue 20,
/// hole 3), and a pin is an https issuer (http only on loopback) or a host.
#[test]
fn discovery_from_an_upstream_must_be_pinned() {
    let unpinned = r#"[credentials.tools]
grant = "client_credentials"
client_id = "agent"
client_secret = "s"

[upstreams.tools]
url = "https://mcp.example.com/"
path_prefix = "/tools"
credential = "tools"
discover = true
"#;
    assert_error(
        unpinned,
        10,
        &[
            "upstreams.tools.discover",
            "allowed_authorization_servers",
            "issuer",
        ],
    );
    let pinned = |pin: &str| {
        unpinned.replace(
            "client_secret = \"s\"\n",
            &format!("client_secret = \"s\"\nallowed_authorization_servers = [{pin}]\n"),
        )
    };
    assert_passes(
        "pinned.toml",
        &pinned("\"auth.example.com\", \"https://login.example.com/t1\""),
    );
    assert_error(
        &pinned("\"http://auth.example.com\""),
        5,
        &["allowed_authorization_servers", "must use https"],
    );
    assert_error(
        &pinned("\"*.example.com\""),
        5,
        &["allowed_authorization_servers", "wildcards"],
    );
}

/// Plaintext and open listeners no longer pass silently (issue 20, hole 4): a listener
/// that spends credentials off loopback needs `allow_remote_clients`, and plain http to
/// another host needs `insecure_http` on its table; each is then a warning line.
#[test]
fn open_listeners_and_plain_http_need_saying_so() {
    let open = BASE.replace("127.0.0.1:18080", "0.0.0.0:18080");
    assert_error(
        &open,
        2,
        &[
            "server.proxy_listen",
            "not a loopback address",
            "allow_remote_clients",
        ],
    );
    let allowed = open.replace("[server]\n", "[server]\nallow_remote_clients = true\n");
    let out = assert_passes("open.toml", &allowed);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("warning: server.allow_remote_clients"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let listener = format!(
        "{BASE}\n[upstreams.direct]\nurl = \"https://api.example.com/\"\nlisten = \"0.0.0.0:19191\"\ncredential = \"crm\"\n"
    );
    let line = listener
        .lines()
        .position(|l| l.starts_with("listen = \"0.0"))
        .unwrap()
        + 1;
    assert_error(
        &listener,
        line,
        &["upstreams.direct.listen", "not a loopback address"],
    );

    let plain = BASE.replace(
        "https://idp.example.com/token",
        "http://idp.example.com/token",
    );
    assert!(plain != BASE, "the base config has that token_url");
    let line = plain
        .lines()
        .position(|l| l.contains("http://idp."))
        .unwrap()
        + 1;
    assert_error(
        &plain,
        line,
        &["token_url", "plain http to another host", "insecure_http"],
    );
    let insecure = plain.replace(
        "token_url = \"http://idp.example.com/token\"",
        "token_url = \"http://idp.example.com/token\"\ninsecure_http = true",
    );
    let out = assert_passes("insecure.toml", &insecure);
    assert!(String::from_utf8_lossy(&out.stdout).contains("insecure_http"));
    // The device endpoint takes the client's secret too.
    let device = BASE.replace(
        "grant = \"client_credentials\"",
        "grant = \"refresh_token\"\ndevice_authorization_url = \"http://idp.example.com/device\"",
    );
    let line = device
        .lines()
        .position(|l| l.starts_with("device_authorization_url"))
        .unwrap()
        + 1;
    assert_error(&device, line, &["device_authorization_url", "plain http"]);
    // On this machine, plain http is fine.
    assert_passes(
        "loopback.toml",
        &BASE.replace("https://idp.example.com/token", "http://127.0.0.1:9/token"),
    );
}

/// The on-behalf-of limits are checked with their line, and belong to on-behalf-of
/// exchanges only.
#[test]
fn on_behalf_of_limits_are_checked() {
    let obo = r#"[credentials.crm]
grant = "token_exchange"
token_url = "https://sts.example.com/token"
client_id = "agent"
client_secret = "s"
subject_token = { header = "x-user-token" }
new_subjects_per_second = 0

[upstreams.crm]
url = "https://crm.example.com/"
path_prefix = "/crm"
credential = "crm"
"#;
    assert_error(obo, 7, &["new_subjects_per_second", "at least 1"]);
    let ok = obo.replace(
        "new_subjects_per_second = 0",
        "new_subjects_per_second = 5\nopaque_token_lifetime = \"10m\"",
    );
    assert_passes("obo.toml", &ok);
    let not_obo = ok.replace(
        "subject_token = { header = \"x-user-token\" }",
        "subject_token = { file = \"/var/run/secrets/t\" }",
    );
    assert_error(
        &not_obo,
        7,
        &["new_subjects_per_second", "belongs to on-behalf-of"],
    );
}

/// `subject_from = { jwt = … }` (issue 20, hole 11): errors name the file, line and key.
#[test]
fn a_subject_from_a_jwt_is_checked_like_the_rest() {
    let per_user = |subject: &str| {
        BASE.replace(
            "grant = \"client_credentials\"",
            &format!("grant = \"refresh_token\"\n{subject}"),
        )
    };
    let line_of =
        |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let good = per_user(
        "subject_from = { jwt = { issuer = \"https://login.example.com\", audience = \"api://crm\" } }",
    );
    assert_passes("jwt.toml", &good);
    let both = per_user(
        "subject_header = \"x-user\"\nsubject_from = { jwt = { issuer = \"https://login.example.com\", audience = \"api://crm\" } }",
    );
    assert_error(
        &both,
        line_of(&both, "subject_from"),
        &["credentials.crm.subject_from", "keep one"],
    );
    let plain = per_user(
        "subject_from = { jwt = { issuer = \"http://login.example.com\", audience = \"api://crm\" } }",
    );
    assert_error(
        &plain,
        line_of(&plain, "subject_from"),
        &[
            "credentials.crm.subject_from.jwt.issuer",
            "plain http to another host",
        ],
    );
    let no_audience = per_user(
        "subject_from = { jwt = { issuer = \"https://login.example.com\", audience = \" \" } }",
    );
    assert_error(
        &no_audience,
        line_of(&no_audience, "subject_from"),
        &[
            "credentials.crm.subject_from.jwt.audience",
            "may not be empty",
        ],
    );
    let reserved = per_user(
        "subject_from = { jwt = { header = \"cookie\", issuer = \"https://login.example.com\", audience = \"api://crm\" } }",
    );
    assert_error(
        &reserved,
        line_of(&reserved, "subject_from"),
        &["credentials.crm.subject_from.jwt.header", "cookie"],
    );
}

/// Every grant lowers its schedule first: of two errors, a bad schedule value is the one
/// reported (a move of the grants' lowering into files of their own once changed this
/// for two grants).
#[test]
fn a_bad_schedule_is_reported_first_for_every_grant() {
    for grant in [
        "client_credentials",
        "refresh_token",
        "token_exchange",
        "jwt_bearer",
    ] {
        // Nothing else the grant needs is there either.
        let text = format!(
            "[credentials.a]\ngrant = \"{grant}\"\ntoken_url = \"https://idp.example.com/token\"\nrefresh_ratio = 2.0\n\n[upstreams.a]\nurl = \"https://api.example.com/\"\npath_prefix = \"/a\"\ncredential = \"a\"\n"
        );
        assert_error(&text, 4, &["credentials.a.refresh_ratio"]);
    }
}

#[test]
fn events_are_checked_with_their_line() {
    // BASE ends on line 14; the webhook's keys are on lines 19 to 21.
    let hook = |url: &str, on: &str, secret: &str| {
        format!("{BASE}\n[events]\naudit_file = \"/tmp/bearerd-audit.jsonl\"\n[[events.webhook]]\nurl = \"{url}\"\non = {on}\nsecret = \"{secret}\"\n")
    };
    let (url, on, secret) = (
        "https://hooks.example.com/bearerd",
        r#"["failed", "requires_reauth_is_not_a_kind"]"#,
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    );
    assert_passes(
        "events.toml",
        &hook(url, r#"["failed", "drill_started"]"#, secret),
    );
    assert_error(
        &hook(url, on, secret),
        20,
        &[
            "events.webhook.0.on",
            "unknown event \"requires_reauth_is_not_a_kind\"",
            "drill_ended",
        ],
    );
    assert_error(
        &hook("http://hooks.example.com/bearerd", "[]", secret),
        19,
        &["events.webhook.0.url", "plain http"],
    );
    assert_error(
        &hook(url, "[]", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        21,
        &["events.webhook.0.secret", "whsec_"],
    );
    let extra_key = hook(url, "[]", secret) + "retries = 3\n";
    assert_error(&extra_key, 22, &["retries", "unknown field"]);
}

#[test]
fn telemetry_is_checked_with_its_line() {
    // BASE ends on line 14; `[telemetry]` is line 16, its keys 17 and 18.
    let telemetry = |endpoint: &str, name: &str| {
        format!("{BASE}\n[telemetry]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"{name}\"\n")
    };
    assert_passes(
        "telemetry.toml",
        &telemetry(
            "http://otel-collector.observability:4318",
            "checkout-bearerd",
        ),
    );
    assert_error(
        &telemetry("otel-collector:4318", "bearerd"),
        17,
        &["telemetry.otlp_endpoint"],
    );
    assert_error(
        &telemetry("http://127.0.0.1:4318", ""),
        18,
        &["telemetry.service_name", "printable"],
    );
    let extra_key = telemetry("http://127.0.0.1:4318", "bearerd") + "sample_ratio = 0.5\n";
    assert_error(&extra_key, 19, &["sample_ratio", "unknown field"]);
}

/// Sentinel, Cluster and `min_replicas_acked` mistakes are located (file, line, key) and never
/// print a url: two of `url`, `sentinels` and `cluster_nodes` together, sentinels without
/// `master_name` (or the name without sentinels), an empty list, an entry that is not a redis
/// url, a count out of range; a right Sentinel store (entries as secret references too) and
/// a right Cluster store pass.
#[test]
fn redis_sentinel_and_cluster_mistakes_are_located() {
    let with_store = |store: &str| {
        BASE.replace(
            "[credentials.crm]",
            &format!("[store]\nbackend = \"redis\"\nkey = {{ env = \"BEARERD_STORE_KEY\" }}\n{store}\n\n[credentials.crm]"),
        )
    };
    let sentinels =
        "sentinels = [\"redis://:hunter2@sentinel-0:26379\", { env = \"BEARERD_SENTINEL_1\" }]";
    std::env::set_var("BEARERD_SENTINEL_1", "redis://:hunter2@sentinel-1:26379");
    std::env::set_var("BEARERD_STORE_KEY", bearerd::store::generate_key());
    // `[store]` is line 5: backend 6, key 7, then the lines given.
    assert_passes(
        "sentinel.toml",
        &with_store(&format!(
            "{sentinels}\nmaster_name = \"mymaster\"\nmin_replicas_acked = 1"
        )),
    );
    assert_passes(
        "cluster.toml",
        &with_store("cluster_nodes = [\"redis://:pw@node-0:7000\", \"redis://:pw@node-1:7000\"]"),
    );
    // Sentinels without a password in front of a master with one.
    std::env::set_var("BEARERD_MASTER_PW", "hunter2");
    assert_passes(
        "open-sentinels.toml",
        &with_store("sentinels = [\"redis://sentinel-0:26379\"]\nmaster_name = \"m\"\nmaster_username = \"bearerd\"\nmaster_password = { env = \"BEARERD_MASTER_PW\" }"),
    );
    for (store, line, needles) in [
        (
            format!("url = \"redis://redis.example\"\n{sentinels}\nmaster_name = \"m\""),
            9,
            vec!["store.sentinels", "not both"],
        ),
        (
            sentinels.to_string(),
            8,
            vec!["store.sentinels", "master_name"],
        ),
        (
            "url = \"redis://redis.example\"\nmaster_name = \"m\"".to_string(),
            9,
            vec!["store.master_name", "only applies with `sentinels`"],
        ),
        (
            "sentinels = []\nmaster_name = \"m\"".to_string(),
            8,
            vec!["store.sentinels", "at least one"],
        ),
        (
            "sentinels = [\"https://:hunter2@sentinel-0:26379\"]\nmaster_name = \"m\"".to_string(),
            8,
            vec!["store.sentinels", "redis:// or rediss://"],
        ),
        (
            format!("{sentinels}\nmaster_name = \"my master\""),
            9,
            vec!["store.master_name", "one word"],
        ),
        (
            format!("{sentinels}\nmaster_name = \"m\"\nmin_replicas_acked = 99"),
            10,
            vec!["store.min_replicas_acked", "0 (do not wait) to 16"],
        ),
        (
            "url = \"redis://redis.example\"\ncluster_nodes = [\"redis://:hunter2@node-0:7000\"]"
                .to_string(),
            9,
            vec![
                "store.cluster_nodes",
                "one of `url`, `sentinels` or `cluster_nodes`",
            ],
        ),
        (
            "cluster_nodes = []".to_string(),
            8,
            vec!["store.cluster_nodes", "at least one"],
        ),
        (
            "cluster_nodes = [\"redis://:hunter2@node-0:7000\"]\nmaster_name = \"m\"".to_string(),
            9,
            vec!["store.master_name", "only applies with `sentinels`"],
        ),
        (
            "cluster_nodes = [\"tcp://:hunter2@node-0:7000\"]".to_string(),
            8,
            vec!["store.cluster_nodes", "redis:// or rediss://"],
        ),
        (
            "url = \"redis://redis.example\"\nmaster_password = \"hunter2\"".to_string(),
            9,
            vec!["store.master_password", "only applies with `sentinels`"],
        ),
        (
            "cluster_nodes = [\"redis://node-0:7000\"]\nmaster_username = \"u\"".to_string(),
            9,
            vec!["store.master_username", "only applies with `sentinels`"],
        ),
        (
            format!("{sentinels}\nmaster_name = \"m\"\nmaster_username = \"bearerd\""),
            10,
            vec!["store.master_username", "needs `master_password"],
        ),
        (
            format!("{sentinels}\nmaster_name = \"m\"\nmaster_password = {{ env = \"BEARERD_NO_SUCH_PW\" }}"),
            10,
            vec!["store.master_password", "BEARERD_NO_SUCH_PW"],
        ),
    ] {
        let text = with_store(&store);
        assert_error(&text, line, &needles);
        let path = write("sentinel.toml", &text);
        let out = bearerd().args(["check", "-c"]).arg(&path).output().unwrap();
        assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
    }
}
