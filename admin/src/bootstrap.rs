//! Loading the configuration document from a file, reporting every problem with its path.

use std::path::Path;

use ringway_policy::{ConfigError, ConfigErrors};
use ringway_proxy::{ConfigSpec, Snapshot};

use crate::parse::{parse, DocError, Syntax};

/// Parses a YAML or JSON document (YAML, of which JSON is a subset, unless `syntax` says JSON),
/// with the admin API's guards: nesting depth bounded, YAML anchors and aliases refused. Serde
/// problems (unknown fields, wrong types) come back with their path.
pub fn parse_document_as(text: &str, syntax: Syntax) -> Result<ConfigSpec, ConfigErrors> {
    parse(text, syntax).map_err(|e| {
        let (path, message) = match e {
            DocError::Refused(m) => ("$".to_string(), m),
            DocError::Invalid { path, message } => (if path == "." { "$".to_string() } else { path }, message),
        };
        ConfigErrors(vec![ConfigError::new(path, message)])
    })
}

/// [`parse_document_as`] for YAML (or JSON written as YAML).
pub fn parse_document(text: &str) -> Result<ConfigSpec, ConfigErrors> {
    parse_document_as(text, Syntax::Yaml)
}

/// Reads, parses and compiles a configuration file (JSON when its name ends in `.json`).
pub fn load_file(
    path: &Path,
    revision: u64,
    secrets: &crate::secrets::SecretBox,
) -> Result<(ConfigSpec, Snapshot), ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![ConfigError::new("$", format!("cannot read {}: {e}", path.display()))]))?;
    let json = path.extension().is_some_and(|x| x.eq_ignore_ascii_case("json"));
    let mut spec = parse_document_as(&text, if json { Syntax::Json } else { Syntax::Yaml })?;
    // Keys and passwords in the file are sealed before anything is stored.
    crate::secrets::seal_document(&mut spec, &ConfigSpec::default(), secrets).map_err(|e| {
        let mut errors = ConfigErrors(e.problems);
        if errors.is_empty() {
            errors.push("consumers", e.message);
        }
        errors
    })?;
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
    fn anchors_and_deep_nesting_are_refused() {
        let e = parse_document("upstreams:\n  u: &x\n    targets: []\n  v: *x\n").unwrap_err();
        assert!(e.0[0].message.contains("anchors"), "{}", e.0[0].message);
        let deep = format!("upstreams: {}{}", "[".repeat(100), "]".repeat(100));
        let e = parse_document(&deep).unwrap_err();
        assert!(e.0[0].message.contains("deeper than"), "{}", e.0[0].message);
    }

    #[test]
    fn line_breaks_the_guard_cannot_follow_are_refused_in_files_too() {
        let e = parse_document("\u{FEFF}[&a [x], *a]\n").unwrap_err();
        assert!(e.0[0].message.contains("U+FEFF"), "{}", e.0[0].message);
        let e = parse_document("upstreams:\r  &u {}\r").unwrap_err();
        assert!(e.0[0].message.contains("carriage return"), "{}", e.0[0].message);
        assert!(parse_document("upstreams: {}\r\nroutes: {}\r\n").is_ok());
    }

    #[test]
    fn json_is_accepted() {
        let spec = parse_document(r#"{"upstreams": {"u": {"targets": [{"addr": "127.0.0.1:1"}]}}}"#).unwrap();
        assert_eq!(spec.upstreams["u"].targets[0].weight, 1);
    }
}
