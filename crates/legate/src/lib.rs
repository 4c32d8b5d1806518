//! The `legate` binary's library: bootstrap loading, the admin server, and the wiring that
//! starts a proxy (`app::build`), so integration tests start exactly what users run.

pub mod admin;
pub mod app;
pub mod bootstrap;
mod dump;
