//! Values built from files and rebuilt when the files change: certificate files rotated by
//! cert-manager, a script or `legatectl certs` take effect on new connections without a
//! restart, while connections already open keep the configuration they were made with.
//!
//! Change detection hashes the files' contents (bounded by [`crate::pem::MAX_PEM_BYTES`])
//! every `interval`, so Kubernetes' symlink swaps, editors' rename-over and in-place writes
//! are all seen. A rebuild that fails (a half-written pair, a key that does not match) keeps
//! the previous value and is logged; the next change is tried again.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::TlsError;

/// The current value; cheap to load on every new connection.
pub type Current<T> = Arc<ArcSwap<T>>;

/// The fingerprint of the files' contents, or of the error reading one.
fn fingerprint(paths: &[PathBuf]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for p in paths {
        match crate::pem::read_file(p, "watched file") {
            Ok(bytes) => {
                hash.update((bytes.len() as u64).to_le_bytes());
                hash.update(&bytes);
            }
            Err(e) => hash.update(format!("error {e}").as_bytes()),
        }
    }
    hash.finalize().into()
}

/// Build the value once now (blocking: run it at start-up or in `spawn_blocking`), then
/// rebuild it in a background task whenever the contents of `paths` change. The task ends
/// when every clone of the returned [`Current`] is dropped.
pub fn watch<T, F>(
    paths: Vec<PathBuf>,
    interval: Duration,
    build: F,
) -> Result<Current<T>, TlsError>
where
    T: Send + Sync + 'static,
    F: Fn() -> Result<T, TlsError> + Send + Sync + 'static,
{
    watch_with("TLS files", paths, interval, build)
}

/// [`watch`] for any file-backed value with its own error type (an admin token file, say);
/// `what` names the files in log lines. Rebuild errors are logged with their `Display`, so an
/// error type for secrets must not print their contents.
pub fn watch_with<T, E, F>(
    what: &'static str,
    paths: Vec<PathBuf>,
    interval: Duration,
    build: F,
) -> Result<Current<T>, E>
where
    T: Send + Sync + 'static,
    E: std::fmt::Display + Send + 'static,
    F: Fn() -> Result<T, E> + Send + Sync + 'static,
{
    let mut seen = fingerprint(&paths);
    let current: Current<T> = Arc::new(ArcSwap::from_pointee(build()?));
    let weak: Weak<ArcSwap<T>> = Arc::downgrade(&current);
    let build = Arc::new(build);
    let paths = Arc::new(paths);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if weak.strong_count() == 0 {
                return;
            }
            let (paths2, build2) = (paths.clone(), build.clone());
            let result = tokio::task::spawn_blocking(move || {
                let now = fingerprint(&paths2);
                if now == seen {
                    return (now, None);
                }
                (now, Some(build2()))
            })
            .await;
            let Ok((now, rebuilt)) = result else { return };
            let Some(rebuilt) = rebuilt else { continue };
            let Some(target) = weak.upgrade() else { return };
            match rebuilt {
                Ok(value) => {
                    seen = now;
                    target.store(Arc::new(value));
                    tracing::info!(files = ?paths, "reloaded changed {what}");
                }
                // `seen` stays: the next tick retries, so a pair written in two steps lands
                // once both halves are in place.
                Err(error) => tracing::warn!(%error, files = ?paths, "changed {what} not applied"),
            }
        }
    });
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rebuilds_on_change_and_keeps_old_value_on_error() {
        let dir = std::env::temp_dir().join(format!("legate-tls-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("v.txt");
        std::fs::write(&path, "1").expect("write");
        let p2 = path.clone();
        let current = watch(vec![path.clone()], Duration::from_millis(20), move || {
            let text = std::fs::read_to_string(&p2).map_err(|source| TlsError::Read {
                what: "v".into(),
                path: p2.clone(),
                source,
            })?;
            text.trim().parse::<u32>().map_err(|e| TlsError::Pem {
                what: "v".into(),
                message: e.to_string(),
            })
        })
        .expect("initial build");
        assert_eq!(**current.load(), 1);
        let wait_for = |want: u32| {
            let current = current.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while **current.load() != want {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "never became {want}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        std::fs::write(&path, "2").expect("write");
        wait_for(2).await;
        std::fs::write(&path, "not a number").expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(**current.load(), 2, "a failed rebuild keeps the old value");
        std::fs::write(&path, "3").expect("write");
        wait_for(3).await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
