//! Configuration: the TOML schema (`raw`), lowered (`lower`) into the validated model
//! (`model`) the rest of bearerd uses. Lowering is where every mistake is caught, with file,
//! line and key.

mod error;
mod lower;
mod model;
mod raw;

use std::path::Path;

pub use error::ConfigError;
use error::SourceMap;
// What the config names but `material` reads: re-exported so the model reads as one.
pub use crate::material::{
    load_ca_file, parse_ca_pem, parse_store_key, same_secret, ClientIdentity, KeySource,
    RawSecretRef, SecretRef, SigningAlg, SigningConfig,
};
pub use model::*;

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: None,
            message: format!("cannot read config: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Validates config text; `source` names it in errors.
    pub fn parse(source: &Path, text: &str) -> Result<Config, ConfigError> {
        let map = SourceMap::new(source, text);
        let raw = raw::parse(text).map_err(|e| lower::schema_error(&map, &e))?;
        lower::lower(source, &map, raw)
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
