//! `bearerd check` on every example config, and on config mistakes: each must give an
//! error naming the file, the line and the key.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bearerd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bearerd"));
    for var in [
        "CRM_CLIENT_SECRET",
        "API_CLIENT_SECRET",
        "CALENDAR_CLIENT_SECRET",
        "CALENDAR_REFRESH_TOKEN",
        "GITHUB_TOKEN",
        "TOOLS_CLIENT_SECRET",
        "BEARERD_ADMIN_TOKEN",
    ] {
        c.env(var, "example-value");
    }
    c.env("BEARERD_STORE_KEY", bearerd::store::generate_key());
    c.env_remove("BEARERD_CONFIG");
    c
}

#[test]
fn every_example_config_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
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

#[test]
fn the_base_config_is_valid() {
    let path = write("good.toml", BASE);
    let out = bearerd().args(["check", "-c"]).arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
