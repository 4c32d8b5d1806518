//! The client's errors, one enum per layer: a resource in a response ([`ResourceError`]), a
//! whole update of one type ([`UpdateError`], whose text is the NACK message), the disk cache
//! restored into the state ([`RestoreError`]) and the data plane refusing a snapshot
//! ([`ApplyError`]). Callers branch on variants; the text is for people.

use std::fmt;

use legate_snapshot::{InvalidSnapshot, ResourceKind};

/// Why one resource of a response was refused. The text names the kind and, where it is
/// known, the resource, as a NACK message should.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// The `Any` holds another type than the response is for.
    #[error("type_url '{found}' in a response for {expected}")]
    WrongType {
        found: String,
        expected: &'static str,
    },
    /// The bytes are not a valid encoding of the kind.
    #[error("cannot decode {}: {source}", kind.as_str())]
    Decode {
        kind: ResourceKind,
        source: prost::DecodeError,
    },
    /// A `discovery.v3.Resource` envelope that does not decode.
    #[error("cannot decode resource wrapper: {0}")]
    Wrapper(prost::DecodeError),
    /// A `discovery.v3.Resource` envelope with nothing inside.
    #[error("resource wrapper '{0}' has no resource")]
    EmptyWrapper(String),
    /// A `discovery.v3.Resource` envelope inside another: one level is what the protocol
    /// uses, and each further level would cost a decode and a copy of the rest.
    #[error(
        "resource wrapper '{0}' wraps another resource wrapper: only one level of \
         envoy.service.discovery.v3.Resource is allowed"
    )]
    NestedWrapper(String),
    /// A delta resource without a body.
    #[error("{} '{name}': resource has no body", kind.as_str())]
    NoBody { kind: ResourceKind, name: String },
    /// A delta resource whose envelope names it differently from the message inside.
    #[error("{} '{outer}': resource is named '{inner}' inside", kind.as_str())]
    NamedInside {
        kind: ResourceKind,
        outer: String,
        inner: String,
    },
    /// The same name twice in one state-of-the-world response.
    #[error("{} '{name}': sent twice in one response", kind.as_str())]
    Duplicate { kind: ResourceKind, name: String },
    /// The resource does not validate on its own.
    #[error("{}", Joined(.0))]
    Invalid(Vec<legate_snapshot::ResourceError>),
}

/// Why an update of one type was refused; its text is the NACK's `error_detail.message`.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// Resources of the response were refused one by one.
    #[error("{}", Joined(.0))]
    Resources(Vec<ResourceError>),
    /// Resources take names the bootstrap's static resources already use.
    #[error("{}", Joined(.0))]
    StaticConflict(Vec<StaticConflict>),
    /// The whole set with the update in place does not validate.
    #[error(transparent)]
    Invalid(#[from] InvalidSnapshot),
    /// The data plane refused the snapshot (a listener could not bind, say).
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// A dynamic resource named like a static one.
#[derive(Debug, thiserror::Error)]
#[error("{} '{name}': conflicts with a static resource of the same name", kind.as_str())]
pub struct StaticConflict {
    pub kind: ResourceKind,
    pub name: String,
}

/// Why the disk cache could not be restored into the client's state.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("unknown type_url '{0}' in cache")]
    UnknownType(String),
    #[error("cached resource refused: {0}")]
    Resource(#[from] ResourceError),
    #[error(transparent)]
    Invalid(#[from] InvalidSnapshot),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// The data plane refused a snapshot; the cause is the data plane's own error.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ApplyError(Box<dyn std::error::Error + Send + Sync>);

impl ApplyError {
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApplyError(Box::new(error))
    }
}

/// Errors shown one after the other, separated by `; `.
struct Joined<'a, T>(&'a [T]);

impl<T: fmt::Display> fmt::Display for Joined<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_errors_read_as_nack_messages() {
        let e = UpdateError::Resources(vec![
            ResourceError::Duplicate {
                kind: ResourceKind::Cluster,
                name: "a".to_owned(),
            },
            ResourceError::EmptyWrapper("w".to_owned()),
        ]);
        assert_eq!(
            e.to_string(),
            "cluster 'a': sent twice in one response; resource wrapper 'w' has no resource"
        );
    }
}
