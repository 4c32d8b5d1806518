//! legate's metrics: a small registry whose hot path is plain atomics, rendered as
//! Prometheus text on demand.
//!
//! Families and their members are created when configuration changes (behind a mutex);
//! the request path only holds `Arc`s to members and bumps atomics, so recording a request
//! never takes a lock or looks anything up. Rendering walks the families in registration
//! order and their members in label order, which keeps the output stable for scrapers and
//! for `promtool check metrics`.
//!
//! [`cli`] holds what the three binaries share about presenting themselves: the logging
//! flags (`--log-level`, `--log-format`) with the subscriber they install, and the address
//! file they write once they listen.

pub mod cli;
pub mod load;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(&self, n: i64) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds, in seconds, of the latency histogram buckets (the `+Inf` bucket is implied).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of a latency [`Histogram`]: one per bound of [`LATENCY_BUCKETS`] and the overflow
/// bucket.
pub const LATENCY_BUCKET_COUNT: usize = LATENCY_BUCKETS.len() + 1;

/// Bucket bounds in nanoseconds, to compare without floating point on the hot path.
const LATENCY_BUCKETS_NANOS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A latency histogram with fixed buckets ([`LATENCY_BUCKETS`]).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts; index `LATENCY_BUCKETS.len()` is the overflow bucket.
    buckets: [AtomicU64; LATENCY_BUCKET_COUNT],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let idx = LATENCY_BUCKETS_NANOS.partition_point(|&b| b < nanos);
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations per bucket (not cumulative; the overflow bucket last) and the sum of the
    /// observed durations in nanoseconds, for readers that send differences (load reports).
    pub fn buckets(&self) -> ([u64; LATENCY_BUCKET_COUNT], u64) {
        (
            std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            self.sum_nanos.load(Ordering::Relaxed),
        )
    }

    /// Total number of observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, name: &str, labels: &str, out: &mut String) {
        let mut cumulative = 0u64;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}",
                sep = if labels.is_empty() { "" } else { "," }
            );
        }
        cumulative += self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let sep = if labels.is_empty() { "" } else { "," };
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

fn braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

/// What a family's members are.
pub trait Metric: Default + Send + Sync + 'static {
    /// Prometheus type name.
    const KIND: &'static str;
    /// Write this member's sample lines.
    fn render(&self, name: &str, labels: &str, out: &mut String);
}

impl Metric for Counter {
    const KIND: &'static str = "counter";
    fn render(&self, name: &str, labels: &str, out: &mut String) {
        let _ = writeln!(out, "{name}{} {}", braces(labels), self.get());
    }
}

impl Metric for Gauge {
    const KIND: &'static str = "gauge";
    fn render(&self, name: &str, labels: &str, out: &mut String) {
        let _ = writeln!(out, "{name}{} {}", braces(labels), self.get());
    }
}

impl Metric for Histogram {
    const KIND: &'static str = "histogram";
    fn render(&self, name: &str, labels: &str, out: &mut String) {
        Histogram::render(self, name, labels, out);
    }
}

/// A named metric with a fixed set of label names and one member per label-value tuple.
pub struct Family<M> {
    name: &'static str,
    help: &'static str,
    label_names: &'static [&'static str],
    members: Mutex<BTreeMap<Vec<String>, Arc<M>>>,
}

impl<M: Metric> Family<M> {
    /// The member for these label values, created on first use. Not for the request path:
    /// callers keep the returned `Arc`.
    pub fn get_or_create(&self, label_values: &[&str]) -> Arc<M> {
        debug_assert_eq!(label_values.len(), self.label_names.len());
        let key: Vec<String> = label_values.iter().map(|v| (*v).to_owned()).collect();
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        members.entry(key).or_default().clone()
    }

    /// Drop the member for these label values (it stops being rendered; holders keep theirs).
    pub fn remove(&self, label_values: &[&str]) {
        let key: Vec<String> = label_values.iter().map(|v| (*v).to_owned()).collect();
        self.members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
    }

    /// Drop every member whose label `label` has the value `value` (nothing when the family
    /// has no such label). Holders keep theirs; they are no longer rendered.
    pub fn remove_where(&self, label: &str, value: &str) {
        let Some(i) = self.label_names.iter().position(|n| *n == label) else {
            return;
        };
        self.members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|values, _| values[i] != value);
    }
}

trait Render: Send + Sync {
    fn render_family(&self, out: &mut String);
    fn remove_where(&self, label: &str, value: &str);
}

impl<M: Metric> Render for Family<M> {
    fn remove_where(&self, label: &str, value: &str) {
        Family::remove_where(self, label, value);
    }

    fn render_family(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, M::KIND);
        let members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let mut labels = String::new();
        for (values, member) in members.iter() {
            labels.clear();
            for (i, (k, v)) in self.label_names.iter().zip(values).enumerate() {
                if i > 0 {
                    labels.push(',');
                }
                let _ = write!(labels, "{k}=\"");
                escape_label_value(v, &mut labels);
                labels.push('"');
            }
            member.render(self.name, &labels, out);
        }
    }
}

fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// All metric families of one process.
#[derive(Default)]
pub struct Registry {
    families: Mutex<Vec<Arc<dyn Render>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl<M> std::fmt::Debug for Family<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family").field("name", &self.name).finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a family. `name` must be a valid Prometheus metric name and unique.
    pub fn family<M: Metric>(
        &self,
        name: &'static str,
        help: &'static str,
        label_names: &'static [&'static str],
    ) -> Arc<Family<M>> {
        let family = Arc::new(Family {
            name,
            help,
            label_names,
            members: Mutex::new(BTreeMap::new()),
        });
        self.families
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(family.clone());
        family
    }

    /// Drop, in every family that has the label `label`, the members whose value for it is
    /// `value`: what a component that went away (a cluster, a listener) leaves behind.
    pub fn remove_label_value(&self, label: &str, value: &str) {
        let families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        for f in families.iter() {
            f.remove_where(label, value);
        }
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        for f in families.iter() {
            f.render_family(&mut out);
        }
        out
    }
}

/// Response code class label for a status: `1xx` … `5xx`.
pub fn code_class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// Label values matching [`code_class`] indices.
pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One counter per response code class, for one label set.
#[derive(Debug, Clone)]
pub struct ByCodeClass([Arc<Counter>; 5]);

impl ByCodeClass {
    /// Members of `family` for each class, with `prefix` label values before the class.
    pub fn new(family: &Family<Counter>, prefix: &[&str]) -> Self {
        let mk = |class: &str| {
            let mut values: Vec<&str> = prefix.to_vec();
            values.push(class);
            family.get_or_create(&values)
        };
        ByCodeClass(CODE_CLASSES.map(mk))
    }

    pub fn record(&self, status: u16) {
        self.0[code_class(status)].inc();
    }

    pub fn get(&self, status: u16) -> u64 {
        self.0[code_class(status)].get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_histograms() {
        let r = Registry::new();
        let c = r.family::<Counter>("t_requests_total", "Requests.", &["cluster", "code_class"]);
        let g = r.family::<Gauge>("t_open", "Open.", &[]);
        let h = r.family::<Histogram>("t_seconds", "Latency.", &["cluster"]);
        c.get_or_create(&["a\"b", "2xx"]).add(3);
        g.get_or_create(&[]).set(-2);
        let m = h.get_or_create(&["x"]);
        m.observe(Duration::from_micros(300));
        m.observe(Duration::from_millis(2));
        m.observe(Duration::from_secs(20));
        let text = r.render();
        assert!(text.contains("t_requests_total{cluster=\"a\\\"b\",code_class=\"2xx\"} 3\n"));
        assert!(text.contains("t_open -2\n"));
        assert!(text.contains("t_seconds_bucket{cluster=\"x\",le=\"0.0005\"} 1\n"));
        assert!(text.contains("t_seconds_bucket{cluster=\"x\",le=\"0.0025\"} 2\n"));
        assert!(text.contains("t_seconds_bucket{cluster=\"x\",le=\"10\"} 2\n"));
        assert!(text.contains("t_seconds_bucket{cluster=\"x\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("t_seconds_count{cluster=\"x\"} 3\n"));
        assert!(text.contains("# TYPE t_seconds histogram\n"));
    }

    #[test]
    fn bucket_edges_are_inclusive() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(1));
        let mut out = String::new();
        h.render("m", "", &mut out);
        assert!(out.contains("m_bucket{le=\"0.0005\"} 0\n"), "{out}");
        assert!(out.contains("m_bucket{le=\"0.001\"} 1\n"), "{out}");
    }

    #[test]
    fn removing_a_label_value_drops_its_members_in_every_family() {
        let r = Registry::new();
        let requests = r.family::<Counter>("t_requests_total", "R.", &["cluster", "code_class"]);
        let hosts = r.family::<Gauge>("t_hosts", "H.", &["cluster"]);
        let other = r.family::<Counter>("t_other_total", "O.", &["listener"]);
        let kept = requests.get_or_create(&["keep", "2xx"]);
        let gone = requests.get_or_create(&["gone", "2xx"]);
        requests.get_or_create(&["gone", "5xx"]).inc();
        hosts.get_or_create(&["gone"]).set(3);
        other.get_or_create(&["gone"]).inc();
        kept.inc();
        r.remove_label_value("cluster", "gone");
        let text = r.render();
        assert!(!text.contains("cluster=\"gone\""), "{text}");
        assert!(text.contains("t_requests_total{cluster=\"keep\",code_class=\"2xx\"} 1\n"));
        // Another label with the same value is not touched.
        assert!(
            text.contains("t_other_total{listener=\"gone\"} 1\n"),
            "{text}"
        );
        // A holder keeps counting into its (no longer rendered) member; a new one starts over.
        gone.inc();
        assert_eq!(requests.get_or_create(&["gone", "2xx"]).get(), 0);
    }

    #[test]
    fn code_classes() {
        let r = Registry::new();
        let f = r.family::<Counter>("x_total", "X.", &["l", "code_class"]);
        let by = ByCodeClass::new(&f, &["one"]);
        by.record(204);
        by.record(503);
        by.record(599);
        assert_eq!(by.get(200), 1);
        assert_eq!(by.get(500), 2);
        assert_eq!(f.get_or_create(&["one", "5xx"]).get(), 2);
    }
}
