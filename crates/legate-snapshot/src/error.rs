//! Validation errors: each names the resource kind, the resource and the field path.

use std::fmt;

use crate::kind::ResourceKind;

/// One problem in one resource.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} '{}': {}: {}", kind.as_str(), name, field, message)]
pub struct ResourceError {
    pub kind: ResourceKind,
    /// The resource's name.
    pub name: String,
    /// Dotted field path inside the resource, e.g. `virtual_hosts[0].routes[2].route.cluster`.
    pub field: String,
    /// Lowercase, no trailing period.
    pub message: String,
}

impl ResourceError {
    pub fn new(
        kind: ResourceKind,
        name: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ResourceError {
            kind,
            name: name.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in a resource set; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSnapshot {
    pub errors: Vec<ResourceError>,
}

impl InvalidSnapshot {
    /// Errors that concern one resource kind (for a per-type NACK).
    pub fn for_kind(&self, kind: ResourceKind) -> impl Iterator<Item = &ResourceError> {
        self.errors.iter().filter(move |e| e.kind == kind)
    }
}

impl fmt::Display for InvalidSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidSnapshot {}
