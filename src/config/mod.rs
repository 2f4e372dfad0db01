//! Configuration: the TOML schema (`raw`), lowered (`lower`) into the validated model
//! (`model`) the rest of bearerd uses, then the files and variables it names read (`check`).
//! Lowering is pure (text in, model out); between them the two steps catch every mistake,
//! with file, line and key.
//!
//! Config knows no grant kind and no store backend: each is a file of the `grant` or the
//! `store` room, whose registries are handed to [`Config::lower_with`] as [`Kinds`]
//! (`crate::kinds` writes `Config::load`, `parse` and `lower` with this build's).
//! `lowering` is what a kind's own lowering uses of config.

mod check;
mod client_auth;
mod error;
mod grant;
mod kinds;
mod lower;
pub mod lowering;
mod model;
mod pending;
mod raw;
mod store;
pub(crate) mod table;
mod urls;

use std::path::Path;

pub use client_auth::{ClientAuthKind, ClientAuthMethod, ClientAuthSettings, Needed};
pub use error::{ConfigError, SourceMap};
pub use grant::{GrantConfig, GrantSettings, GrantTables, LowerGrant, LoweredGrant};
pub use kinds::{Kinds, StrictTable};
pub use pending::{Material, MaterialCheck, Place};
pub use store::{LowerStore, StoreTables, DEFAULT_BACKEND};
pub use urls::secure_or_loopback;
// What the config names but `material` reads: re-exported so the model reads as one.
pub use crate::material::{
    load_ca_file, parse_ca_pem, parse_store_key, same_secret, ClientIdentity, KeySource,
    RawSecretRef, SecretRef, SigningAlg, SigningConfig,
};
pub use model::*;

impl Config {
    /// Reads and validates a config file, with the grant kinds `G`.
    pub fn load_with<K: Kinds>(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: None,
            message: format!("cannot read config: {e}"),
        })?;
        Config::parse_with::<K>(path, &text)
    }

    /// Validates config text and everything it names (both steps); `source` names it in
    /// errors.
    pub fn parse_with<K: Kinds>(source: &Path, text: &str) -> Result<Config, ConfigError> {
        let config = Config::lower_with::<K>(source, text)?;
        config.check_material()?;
        Ok(config)
    }

    /// Validates config text alone: reads no file and no environment variable. What the
    /// text names outside itself is left for [`Config::check_material`].
    pub fn lower_with<K: Kinds>(source: &Path, text: &str) -> Result<Config, ConfigError> {
        let map = SourceMap::new(source, text).with_client_auths(K::CLIENT_AUTHS);
        let raw = raw::parse::<K>(text).map_err(|e| lower::schema_error::<K>(&map, &e))?;
        let mut config = lower::lower::<K>(source, &map, raw)?;
        config.material = map.take_checks();
        config.text = SourceText(std::sync::Arc::from(text));
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("t.toml"), text)
    }

    const GOOD: &str = r#"
[credentials.crm]
grant = "client_credentials"
token_url = "http://127.0.0.1:1/token"
client_id = "billing"
client_secret = "s3cret"

[upstreams.crm]
url = "http://127.0.0.1:2/api/"
path_prefix = "/crm"
credential = "crm"
"#;

    #[test]
    fn lowers_a_good_config() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.upstreams[0].base_path, "/api");
        assert_eq!(c.upstreams[0].authority, "127.0.0.1:2");
        assert_eq!(c.upstreams[0].route, RouteConfig::Prefix("/crm".into()));
        assert_eq!(c.credentials[0].policy.ratio, 0.8);
    }

    /// Lowering reads nothing: a config naming files and variables that do not exist here
    /// lowers, and the check step then names the first of them at its line.
    #[test]
    fn lowering_reads_no_file_and_the_check_step_reads_them_all() {
        let text = GOOD
            .replace(
                "client_secret = \"s3cret\"",
                "client_secret = { env = \"BEARERD_TEST_UNSET_VARIABLE\" }\nca_file = \"/nonexistent/ca.pem\"",
            )
            .replace(
                "credential = \"crm\"",
                "credential = \"crm\"\nca_file = \"/nonexistent/upstream-ca.pem\"",
            )
            .replace("http://127.0.0.1:2/api/", "https://127.0.0.1:2/api/");
        let lowered = Config::lower(Path::new("t.toml"), &text).unwrap();
        let keys: Vec<&str> = lowered.material.iter().map(|c| c.at.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "credentials.crm.client_secret",
                "credentials.crm.ca_file",
                "upstreams.crm.ca_file"
            ]
        );
        let e = lowered.check_material().unwrap_err();
        assert_eq!(e.key.as_deref(), Some("credentials.crm.client_secret"));
        assert!(e.to_string().starts_with("t.toml:6:"), "{e}");
        assert!(e.message.contains("BEARERD_TEST_UNSET_VARIABLE"), "{e}");
        // `parse` runs both steps.
        assert_eq!(parse(&text).unwrap_err().to_string(), e.to_string());

        let without_secret =
            text.replace("{ env = \"BEARERD_TEST_UNSET_VARIABLE\" }", "\"s3cret\"");
        let e = parse(&without_secret).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("credentials.crm.ca_file"), "{e}");
        assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = GOOD.replace(
            "client_id = \"billing\"",
            "client_id = \"billing\"\nclient_secrte = \"x\"",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(e.to_string().contains("client_secrte"), "{e}");
        assert!(e.to_string().starts_with("t.toml:6:"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = GOOD.replace(
            "grant = \"client_credentials\"",
            "grant = \"client_credentials\"\nrefresh_ratio = \"high\"",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("credentials.crm.refresh_ratio"),
            "{e}"
        );
        assert_eq!(e.line, 4);
    }
}
