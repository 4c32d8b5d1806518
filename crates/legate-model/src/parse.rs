//! YAML text → serde types, with the failing field's path and position.

use serde::de::DeserializeOwned;

use crate::ConfigError;
use crate::locate::{Locator, duplicate_key};

/// Deserialize any YAML document, reporting the first error with its field path, line and
/// column.
///
/// For callers whose document wraps a [`Mesh`](crate::Mesh) in a bigger structure (the
/// `legate` bootstrap file has a `mesh:` key); they then call
/// [`validate_at`](crate::validate_at) with the mesh's path.
pub fn parse_yaml<T: DeserializeOwned>(text: &str, source: &str) -> Result<T, ConfigError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let mut path = if path == "." { String::new() } else { path };
        let inner = e.into_inner();
        let location = inner.location();
        let mut position = match &location {
            Some(l) => (l.line(), l.column()),
            None => Locator::new(text).position(&path),
        };
        let message = bare_message(&inner, location.as_ref(), &path);
        // serde points at the mapping holding a repeated key; point at the repeat, and name
        // it in the path as an unknown field is.
        if let Some(key) = message
            .strip_prefix("duplicate field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            if let Some(at) = duplicate_key(text) {
                position = at;
            }
            path = if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            };
        }
        ConfigError {
            source: source.to_owned(),
            line: position.0,
            column: position.1,
            message,
            path,
        }
    })
}

/// The message of a mesh document that says nothing (see [`parse_mesh`](crate::parse_mesh)).
pub const EMPTY_DOCUMENT: &str = "empty document (no top-level key with a value): refused so \
     that a truncated file cannot remove everything; to serve nothing on purpose, write an \
     empty list such as `listeners: []`";

/// Whether a document has at least one top-level key with a non-null value. Only asked of
/// documents that already parsed as an empty [`Mesh`](crate::Mesh).
pub(crate) fn says_something(text: &str) -> bool {
    match serde_yaml_ng::from_str::<Option<serde_yaml_ng::Mapping>>(text) {
        Ok(Some(map)) => map.values().any(|v| !v.is_null()),
        Ok(None) => false,
        // Not a mapping at all: it did not parse as a mesh either, so this is not reached;
        // let the caller's own result stand.
        Err(_) => true,
    }
}

/// serde_yaml_ng's message without the parts [`ConfigError`] carries separately: it appends
/// the position, and prefixes its own record of the path (the same as `path`, or a parent of
/// it).
fn bare_message(
    e: &serde_yaml_ng::Error,
    location: Option<&serde_yaml_ng::Location>,
    path: &str,
) -> String {
    let mut message = e.to_string();
    if let Some(l) = location {
        let suffix = format!(" at line {} column {}", l.line(), l.column());
        if let Some(i) = message.find(&suffix) {
            // Syntax errors go on with ", while parsing a ..." context after the position.
            message.replace_range(i..i + suffix.len(), "");
        }
    }
    if let Some((head, rest)) = message.split_once(": ")
        && !head.is_empty()
        && !rest.is_empty()
        && path.starts_with(head)
    {
        message = rest.to_owned();
    }
    message
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::{Mesh, parse_mesh};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Bootstrap {
        admin: String,
        mesh: Mesh,
    }

    fn err(text: &str) -> ConfigError {
        match parse_mesh(text, "mesh.yaml") {
            Ok(m) => panic!("expected an error, parsed {m:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn unknown_field_names_path_and_position() {
        let e = err("clusters:\n  - name: a\n    endpoint: []\n");
        // The path ends with the unknown key itself.
        assert_eq!(e.path, "clusters[0].endpoint");
        assert_eq!((e.line, e.column), (3, 5));
        assert!(
            e.message
                .starts_with("unknown field `endpoint`, expected one of"),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("mesh.yaml:3:5: clusters[0].endpoint: unknown field `endpoint`")
        );
    }

    #[test]
    fn wrong_enum_names_the_variants() {
        let text = "\
clusters:
  - name: a
    lb_policy: rr
";
        let e = err(text);
        assert_eq!(
            e.to_string(),
            "mesh.yaml:3:16: clusters[0].lb_policy: unknown variant `rr`, expected one of \
             `round_robin`, `least_request`, `random`, `ring_hash`, `maglev`"
        );
    }

    #[test]
    fn wrong_type_and_bad_duration() {
        let e = err("clusters:\n  - name: a\n    endpoints:\n      - {address: x, weight: many}\n");
        assert_eq!(e.path, "clusters[0].endpoints[0].weight");
        assert_eq!((e.line, e.column), (4, 30));
        // The words `legatectl set-weights` uses for the same mistake.
        assert_eq!(
            e.message,
            "'many': expected a weight, a whole number from 0 to 4294967295"
        );

        let e = err("clusters:\n  - name: a\n    connect_timeout: 5 parsecs\n");
        assert_eq!(e.path, "clusters[0].connect_timeout");
        assert_eq!(e.line, 3);
        assert_eq!(
            e.message,
            "'5 parsecs': unknown unit 'parsecs' (use ms, s, m, h or d, e.g. 500ms, 2s or \
             1m30s)"
        );
    }

    #[test]
    fn duplicate_key_points_at_the_repeat() {
        let e = err("clusters:\n  - name: a\n    name: b\n");
        assert_eq!(
            e.to_string(),
            "mesh.yaml:3:5: clusters[0].name: duplicate field `name`"
        );
        let e = err("clusters: []\nclusters: []\n");
        assert_eq!(
            e.to_string(),
            "mesh.yaml:2:1: clusters: duplicate field `clusters`"
        );
    }

    #[test]
    fn empty_document_is_refused() {
        for text in ["", "\n\n", "# nothing yet\n", "{}", "---\n", "clusters:\n"] {
            let e = err(text);
            assert_eq!(
                e.to_string(),
                format!("mesh.yaml:1:1: {}", crate::EMPTY_DOCUMENT),
                "{text:?}"
            );
        }
    }

    #[test]
    fn an_explicit_empty_list_is_an_empty_mesh() {
        for text in [
            "listeners: []\n",
            "# nothing\nservices: []\n",
            "clusters: []\nproxy:\n",
        ] {
            assert_eq!(parse_mesh(text, "m.yaml"), Ok(Mesh::default()), "{text:?}");
        }
    }

    #[test]
    fn missing_field() {
        let e = err("listeners:\n  - name: l\n    address: 127.0.0.1:1\n");
        assert_eq!(e.path, "listeners[0]");
        assert_eq!(e.message, "missing field `route_config`");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn syntax_error_keeps_position_without_suffix() {
        let e = err("clusters:\n  - name: a\n   bad: [\n");
        assert_eq!((e.line, e.column), (3, 4));
        assert!(
            e.message
                .starts_with("did not find expected '-' indicator, while parsing"),
            "{e}"
        );
    }

    #[test]
    fn wrapped_mesh_gets_the_outer_path() {
        let text = "\
admin: 127.0.0.1:9901
mesh:
  clusters:
    - name: a
      lb_policy: rr
";
        let e = parse_yaml::<Bootstrap>(text, "proxy.yaml").expect_err("should fail");
        assert_eq!(e.path, "mesh.clusters[0].lb_policy");
        assert_eq!((e.line, e.column), (5, 18));
        let e = parse_yaml::<Bootstrap>("admin: x\nmesh: {}\nextra: 1\n", "proxy.yaml")
            .expect_err("should fail");
        assert_eq!(e.path, "extra");
        assert_eq!((e.line, e.column), (3, 1));
        assert!(e.message.starts_with("unknown field `extra`"), "{e}");
    }
}
