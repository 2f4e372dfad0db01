//! What the CLI prints: tables and details read from the admin API's typed bodies.

use bearerd::api::{
    CredentialStatus, CredentialView, LastError, PerSubjectStatus, Status, SubjectStatus,
};

fn seconds(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s >= 3600.0 => format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        ),
        Some(s) if s >= 60.0 => format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64),
        Some(s) => format!("{s:.1}s"),
    }
}

fn yes_no(v: bool) -> String {
    if v { "yes" } else { "no" }.to_string()
}

pub fn last_error(e: Option<&LastError>) -> String {
    match e {
        Some(e) => format!("{}: {}", e.kind, e.message),
        None => "-".into(),
    }
}

fn dash_if_empty(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// One row per credential.
pub fn status_table(status: &Status) -> String {
    let mut rows = vec![[
        "CREDENTIAL",
        "STATE",
        "CLIENT AUTH",
        "EXPIRES IN",
        "AGE",
        "NEXT REFRESH",
        "SCOPES",
        "REFRESH TOKEN",
        "LAST ERROR",
    ]
    .map(String::from)];
    for (name, c) in &status.credentials {
        rows.push(match c {
            CredentialView::PerSubject(c) => per_subject_row(name, c),
            CredentialView::Single(c) => [
                name.clone(),
                c.state.as_str().to_string(),
                c.client_auth.clone().unwrap_or_else(|| "-".into()),
                seconds(c.expires_in_s),
                seconds(c.token_age_s),
                seconds(c.next_refresh_in_s),
                dash_if_empty(c.scopes.join(",")),
                yes_no(c.has_refresh_token),
                last_error(c.last_error.as_ref()),
            ],
        });
    }
    let mut out = render_table(&rows);
    // Where the tokens are kept, and whether that store answers (a shared one may not).
    let store = &status.store;
    if store.up {
        out.push_str(&format!("\nstore: {}, up\n", store.backend));
    } else {
        out.push_str(&format!(
            "\nstore: {}, DOWN ({})\n",
            store.backend,
            store.last_error.as_deref().unwrap_or("no answer")
        ));
    }
    for r in &status.relaxations {
        out.push_str(&format!("warning: {r}\n"));
    }
    out
}

/// A per-subject credential's row: the counts of its subjects per state.
fn per_subject_row(name: &str, c: &PerSubjectStatus) -> [String; 9] {
    let counts: Vec<String> = c
        .subjects
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(state, n)| format!("{n} {}", state.as_str()))
        .collect();
    let dash = || "-".to_string();
    [
        name.to_string(),
        "per-subject".into(),
        c.client_auth.clone().unwrap_or_else(dash),
        dash(),
        dash(),
        dash(),
        dash(),
        dash(),
        if counts.is_empty() {
            "no subjects in memory".into()
        } else {
            format!("subjects in memory: {}", counts.join(", "))
        },
    ]
}

/// Columns padded to their widest cell, two spaces apart.
fn render_table<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// One row per subject (`bearerd status NAME --subjects`).
pub fn subjects_table(subjects: &[SubjectStatus]) -> String {
    let mut rows =
        vec![["SUBJECT", "STATE", "EXPIRES IN", "IN MEMORY", "LAST ERROR"].map(String::from)];
    for s in subjects {
        rows.push([
            s.subject.clone(),
            s.status.state.as_str().to_string(),
            seconds(s.status.expires_in_s),
            yes_no(s.in_memory),
            last_error(s.status.last_error.as_ref()),
        ]);
    }
    let mut out = render_table(&rows);
    out.push_str(&format!("\n{} subjects\n", subjects.len()));
    out
}

/// Everything `/status` says about one credential, one field a line.
pub fn credential_detail(name: &str, c: &CredentialStatus) -> String {
    let mut out = format!("credential     {name}\n");
    let fields = [
        ("state", c.state.as_str().to_string()),
        ("grant", c.grant.clone()),
        (
            "client auth",
            c.client_auth.clone().unwrap_or_else(|| "-".into()),
        ),
        ("expires in", seconds(c.expires_in_s)),
        ("token age", seconds(c.token_age_s)),
        ("next refresh", seconds(c.next_refresh_in_s)),
        ("generation", c.generation.to_string()),
        ("refreshes", c.refreshes.to_string()),
        ("failures", c.consecutive_failures.to_string()),
        ("scopes", c.scopes.join(" ")),
        ("refresh token", yes_no(c.has_refresh_token)),
        ("last error", last_error(c.last_error.as_ref())),
        (
            "last error at",
            c.last_error.as_ref().map_or("-", |e| &e.at).to_string(),
        ),
    ];
    for (k, v) in fields {
        out.push_str(&format!("{k:<15}{v}\n"));
    }
    out
}

/// `bearerd inspect`: one line per claim that is there.
pub fn claims(c: &bearerd::api::TokenClaims) -> String {
    let mut out = format!(
        "{}: {} token ({}), generation {}, sha256 {}…\n",
        c.credential, c.format, c.scheme, c.generation, c.sha256_prefix
    );
    let rows = [
        ("issuer", c.issuer.clone()),
        (
            "audience",
            (!c.audience.is_empty()).then(|| c.audience.join(", ")),
        ),
        ("scopes", (!c.scopes.is_empty()).then(|| c.scopes.join(" "))),
        ("subject", c.subject_tag.clone()),
        ("client_id", c.client_id.clone()),
        ("issued_at", c.issued_at.clone()),
        (
            "expires_at",
            c.expires_at.clone().map(|e| match c.expires_in_s {
                Some(s) => format!("{e} (in {s}s)"),
                None => e,
            }),
        ),
    ];
    for (k, v) in rows {
        if let Some(v) = v {
            out.push_str(&format!("  {k:<11} {v}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bearerd::api::StoreHealth;

    #[test]
    fn the_status_table_says_where_tokens_are_kept_and_whether_that_store_answers() {
        let status = |up: bool, last_error: Option<&str>| Status {
            credentials: Default::default(),
            upstreams: Default::default(),
            store: StoreHealth {
                backend: "redis".into(),
                up,
                last_error: last_error.map(str::to_string),
            },
            relaxations: Vec::new(),
        };
        let up = status_table(&status(true, None));
        assert!(up.ends_with("store: redis, up\n"), "{up}");
        let down = status_table(&status(false, Some("connection refused")));
        assert!(
            down.ends_with("store: redis, DOWN (connection refused)\n"),
            "{down}"
        );
    }
}
