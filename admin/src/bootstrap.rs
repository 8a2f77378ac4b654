//! Loading the configuration document from a file, reporting every problem with its path.

use std::path::Path;

use ringway_policy::{ConfigError, ConfigErrors};
use ringway_proxy::{ConfigSpec, Snapshot};

/// Parses a YAML or JSON document. Serde problems (unknown fields, wrong types) come back with
/// their path.
pub fn parse_document(text: &str) -> Result<ConfigSpec, ConfigErrors> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { "$".to_string() } else { path };
        ConfigErrors(vec![ConfigError::new(path, e.into_inner().to_string())])
    })
}

/// Reads, parses and compiles a configuration file.
pub fn load_file(path: &Path, revision: u64) -> Result<(ConfigSpec, Snapshot), ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![ConfigError::new("$", format!("cannot read {}: {e}", path.display()))]))?;
    let spec = parse_document(&text)?;
    let snapshot = Snapshot::compile(&spec, revision)?;
    Ok((spec, snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let e = parse_document("upstreams:\n  u:\n    targets: []\n    colour: red\n").unwrap_err();
        assert_eq!(e.0[0].path, "upstreams.u.colour");
        assert!(e.0[0].message.contains("colour"), "{}", e.0[0].message);
        let e = parse_document("routes:\n  r:\n    paths: 5\n    upstream: u\n").unwrap_err();
        assert_eq!(e.0[0].path, "routes.r.paths");
    }

    #[test]
    fn json_is_accepted() {
        let spec = parse_document(r#"{"upstreams": {"u": {"targets": [{"addr": "127.0.0.1:1"}]}}}"#).unwrap();
        assert_eq!(spec.upstreams["u"].targets[0].weight, 1);
    }
}
