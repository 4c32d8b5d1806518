//! Errors pointing into the YAML a mesh was written in.

use std::fmt;

use crate::locate::Locator;

/// One problem in a configuration file, with where it is.
///
/// Displays as `{source}:{line}:{column}: {path}: {message}`, the shape editors and terminals
/// turn into a link, e.g.
/// ``proxy.yaml:14:9: mesh.clusters[0].lb_policy: unknown variant `rr`, expected one of ...``.
/// When the problem concerns the document as a whole (a YAML syntax error) the path is empty
/// and is left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the text came from, usually a file name.
    pub source: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Field path in the document, e.g. `clusters[0].endpoints[1].address`; empty for the
    /// document itself.
    pub path: String,
    /// Lowercase, no trailing period.
    pub message: String,
}

impl ConfigError {
    /// An error about the field at `path` in `text`, located at that field (or, when the
    /// field is not written in the text, at its nearest written ancestor).
    ///
    /// For callers that check their own documents: the `legate` binary validates the rest of
    /// its bootstrap file with this, so all its errors look alike.
    pub fn locate(
        text: &str,
        source: &str,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let path = path.into();
        let (line, column) = Locator::new(text).position(&path);
        ConfigError {
            source: source.to_owned(),
            line,
            column,
            path,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.source, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

// Not derived with thiserror: it would take the field named `source` for the error's cause.
impl std::error::Error for ConfigError {}

/// A semantic problem in a [`Mesh`](crate::Mesh) value, before it is placed in a text.
///
/// [`Mesh::check`](crate::Mesh::check) returns these for meshes built in code (the control
/// plane's admin API); [`validate`](crate::validate) turns them into [`ConfigError`]s with
/// line and column.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct Problem {
    /// Field path relative to the mesh, e.g. `route_configs[0].virtual_hosts[1].domains`.
    pub path: String,
    /// Lowercase, no trailing period.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_and_without_path() {
        let e = ConfigError {
            source: "proxy.yaml".into(),
            line: 14,
            column: 9,
            path: "mesh.clusters[0].lb_policy".into(),
            message: "unknown variant `rr`".into(),
        };
        assert_eq!(
            e.to_string(),
            "proxy.yaml:14:9: mesh.clusters[0].lb_policy: unknown variant `rr`"
        );
        let e = ConfigError {
            path: String::new(),
            ..e
        };
        assert_eq!(e.to_string(), "proxy.yaml:14:9: unknown variant `rr`");
    }

    #[test]
    fn locate_points_at_the_field() {
        let text = "a:\n  b:\n    - x: 1\n      y: two\n";
        let e = ConfigError::locate(text, "f.yaml", "a.b[0].y", "not a number");
        assert_eq!((e.line, e.column), (4, 10));
        assert_eq!(e.to_string(), "f.yaml:4:10: a.b[0].y: not a number");
    }
}
