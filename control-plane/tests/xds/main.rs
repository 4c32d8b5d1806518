//! The xDS server over real gRPC: a tonic client against legate-cp on 127.0.0.1:0.

mod delta;
mod fleet;
mod secrets;
mod sotw;
pub mod support;
