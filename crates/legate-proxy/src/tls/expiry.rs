//! `legate_tls_certificate_expiry_seconds`: for every certificate legate presents (client
//! certificates of clusters, server certificates of listener chains), the seconds until its
//! `not_after`. Negative once expired.
//!
//! A certificate is recorded when its configuration is built (file rotations included) and
//! forgotten when its cluster or listener goes away; a background task moves every gauge on
//! as time passes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use legate_telemetry::{Family, Gauge};

/// How often the gauges are brought up to date.
const REFRESH: Duration = Duration::from_secs(5);

/// Labels: `owner` (`cluster` or `listener`), `name` (the cluster, or `listener/chain`) and
/// `role` (`client` or `server`).
type Key = (&'static str, String, &'static str);

/// The certificates legate holds and their gauges.
#[derive(Debug)]
pub(crate) struct Expiry {
    family: Arc<Family<Gauge>>,
    held: Mutex<BTreeMap<Key, (Arc<Gauge>, i64)>>,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Expiry {
    pub(crate) fn new(family: Arc<Family<Gauge>>) -> Arc<Self> {
        let expiry = Arc::new(Expiry {
            family,
            held: Mutex::new(BTreeMap::new()),
        });
        // Only when a runtime is there (the data plane always is; unit tests may not be).
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(refresh(Arc::downgrade(&expiry)));
        }
        expiry
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Key, (Arc<Gauge>, i64)>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A certificate with this `not_after` (seconds since the epoch) is in use.
    pub(crate) fn record(
        &self,
        owner: &'static str,
        name: &str,
        role: &'static str,
        not_after: i64,
    ) {
        let gauge = self.family.get_or_create(&[owner, name, role]);
        gauge.set(not_after.saturating_sub(now_unix()));
        self.lock()
            .insert((owner, name.to_owned(), role), (gauge, not_after));
    }

    /// Forget every certificate of `owner` whose name is not kept.
    pub(crate) fn retain(&self, owner: &'static str, keep: impl Fn(&str) -> bool) {
        let mut held = self.lock();
        let gone: Vec<Key> = held
            .keys()
            .filter(|(o, name, _)| *o == owner && !keep(name))
            .cloned()
            .collect();
        for key in gone {
            held.remove(&key);
            self.family.remove(&[key.0, &key.1, key.2]);
        }
    }

    fn refresh_now(&self) {
        let now = now_unix();
        for (gauge, not_after) in self.lock().values() {
            gauge.set(not_after.saturating_sub(now));
        }
    }
}

async fn refresh(expiry: Weak<Expiry>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        match expiry.upgrade() {
            Some(e) => e.refresh_now(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_telemetry::Registry;

    #[test]
    fn records_and_forgets() {
        let registry = Registry::new();
        let family = registry.family::<Gauge>("x", "x", &["owner", "name", "role"]);
        let e = Expiry::new(family.clone());
        e.record("cluster", "a", "client", now_unix() + 100);
        e.record("cluster", "b", "client", now_unix() - 10);
        let a = family.get_or_create(&["cluster", "a", "client"]).get();
        assert!((95..=100).contains(&a), "{a}");
        assert!(family.get_or_create(&["cluster", "b", "client"]).get() <= -10);
        e.retain("cluster", |n| n == "a");
        let text = registry.render();
        assert!(text.contains("name=\"a\""), "{text}");
        assert!(!text.contains("name=\"b\""), "{text}");
        assert_eq!(e.lock().len(), 1);
    }
}
