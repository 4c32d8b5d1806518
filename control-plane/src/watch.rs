//! Noticing changes to the mesh files and the certificate files a mesh names.
//!
//! [`Watcher`] asks the kernel (inotify on Linux, through the `notify` crate) to report
//! changes in the directories that hold them, and only wakes the state's owner
//! ([`crate::app`]): it does not say what changed. The owner then reads the files and
//! compares a digest of the bytes it read, never file times or sizes, so a change that
//! notifications miss is still found on the owner's slow periodic re-check, and an event
//! about an editor's lock file (a directory entry that is not a mesh file) costs one read and
//! changes nothing.
//!
//! Directories are watched rather than files: editors and `kubectl`-mounted ConfigMaps
//! replace a file by renaming another over it, which a watch on the old file would not see.
//!
//! [`Settle`] is the debounce: changed contents are applied only once a read gives the same
//! digest as a read at least the settle interval earlier. A file written in parts, or caught
//! truncated in the middle of a save, is therefore not applied while it is changing.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::Notify;

/// Wakes the owner when anything changes in the watched directories.
pub struct Watcher {
    inner: Option<notify::RecommendedWatcher>,
    dirs: BTreeSet<PathBuf>,
}

impl Watcher {
    /// A watcher that wakes `wake` on every change; inactive (the owner then polls) when the
    /// platform's notifications cannot be had, e.g. out of inotify instances.
    pub fn new(wake: Arc<Notify>) -> Watcher {
        let handler = move |event: notify::Result<notify::Event>| {
            if let Err(error) = &event {
                // An overflowed queue among them: the owner reads everything again anyway.
                tracing::warn!(%error, "file change notification error; re-reading the files");
            }
            wake.notify_one();
        };
        let inner = match notify::recommended_watcher(handler) {
            Ok(w) => Some(w),
            Err(error) => {
                tracing::warn!(%error, "cannot watch files for changes; polling them instead");
                None
            }
        };
        Watcher {
            inner,
            dirs: BTreeSet::new(),
        }
    }

    /// Whether change notifications are coming.
    pub fn is_active(&self) -> bool {
        self.inner.is_some()
    }

    /// Watch exactly `dirs` (each not recursively) from now on.
    pub fn watch_dirs(&mut self, dirs: BTreeSet<PathBuf>) {
        let Some(inner) = &mut self.inner else {
            return;
        };
        for gone in self.dirs.difference(&dirs) {
            let _ = inner.unwatch(gone);
        }
        let mut watched = BTreeSet::new();
        for dir in dirs {
            if self.dirs.contains(&dir) {
                watched.insert(dir);
                continue;
            }
            match inner.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir);
                }
                // A certificate directory that does not exist yet; the periodic re-check
                // still reads it, and the next configuration change tries again.
                Err(error) => tracing::warn!(
                    %error,
                    dir = %dir.display(),
                    "cannot watch a directory for changes"
                ),
            }
        }
        self.dirs = watched;
    }
}

/// What to do with the files just read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The same as what was last decided on.
    Unchanged,
    /// Changed, not yet stable: read again at this time.
    Wait(Instant),
    /// Changed, and the same for the settle interval: apply (or refuse) it now.
    Apply,
}

/// The debounce of mesh file changes: contents are stable once the same digest has been read
/// for `interval`.
#[derive(Debug)]
pub struct Settle {
    interval: Duration,
    /// The digest of changed contents and when it was first read.
    pending: Option<([u8; 32], Instant)>,
}

impl Settle {
    pub fn new(interval: Duration) -> Settle {
        Settle {
            interval,
            pending: None,
        }
    }

    /// Decide about contents with `digest` read at `now`, given the digest last decided on.
    pub fn observe(&mut self, digest: [u8; 32], decided: [u8; 32], now: Instant) -> Verdict {
        if digest == decided {
            self.pending = None;
            return Verdict::Unchanged;
        }
        match self.pending {
            Some((pending, since)) if pending == digest => {
                let stable_at = since + self.interval;
                if now >= stable_at {
                    self.pending = None;
                    Verdict::Apply
                } else {
                    Verdict::Wait(stable_at)
                }
            }
            _ => {
                self.pending = Some((digest, now));
                Verdict::Wait(now + self.interval)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn contents_apply_only_once_unchanged_for_the_interval() {
        let (a, b, c) = ([1; 32], [2; 32], [3; 32]);
        let t0 = Instant::now();
        let mut settle = Settle::new(S);
        assert_eq!(settle.observe(a, a, t0), Verdict::Unchanged);
        // b first seen: wait a full interval from now.
        assert_eq!(settle.observe(b, a, t0), Verdict::Wait(t0 + S));
        assert_eq!(settle.observe(b, a, t0 + S / 2), Verdict::Wait(t0 + S));
        // It changed again before settling (the second half of a slow write): start over.
        let t1 = t0 + S * 9 / 10;
        assert_eq!(settle.observe(c, a, t1), Verdict::Wait(t1 + S));
        assert_eq!(settle.observe(c, a, t0 + S), Verdict::Wait(t1 + S));
        assert_eq!(settle.observe(c, a, t1 + S), Verdict::Apply);
        // Once decided, the same contents are unchanged.
        assert_eq!(settle.observe(c, c, t1 + S * 2), Verdict::Unchanged);
    }

    #[test]
    fn going_back_to_the_decided_contents_cancels_the_pending_change() {
        let (a, b) = ([1; 32], [2; 32]);
        let t0 = Instant::now();
        let mut settle = Settle::new(S);
        assert_eq!(settle.observe(b, a, t0), Verdict::Wait(t0 + S));
        assert_eq!(settle.observe(a, a, t0 + S / 2), Verdict::Unchanged);
        // b again later is a new change, timed from then.
        let t1 = t0 + S * 2;
        assert_eq!(settle.observe(b, a, t1), Verdict::Wait(t1 + S));
    }

    #[test]
    fn a_zero_interval_still_takes_two_reads() {
        let (a, b) = ([1; 32], [2; 32]);
        let t0 = Instant::now();
        let mut settle = Settle::new(Duration::ZERO);
        assert_eq!(settle.observe(b, a, t0), Verdict::Wait(t0));
        assert_eq!(settle.observe(b, a, t0), Verdict::Apply);
    }
}
