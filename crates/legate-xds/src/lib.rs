//! legate's xDS v3 client. Work in progress.

pub mod cache;
