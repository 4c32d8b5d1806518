//! Route selection on the validated model.
