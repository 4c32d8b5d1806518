//! The classic application-side circuit breaker (Nygard's *Release It!*, resilience4j's
//! time-based sliding window), one per cluster that configures it.
//!
//! - **Closed**: outcomes go into a rolling window of [`BUCKETS`] buckets of `window / 10`
//!   each. Once at least `minimum_requests` outcomes are in the window and the failed share
//!   reaches `failure_ratio_permille`, it trips to open.
//! - **Open**: every [`ClassicBreakerState::try_acquire`] is refused until `open_timeout` has
//!   passed since the trip; then it is half-open.
//! - **Half-open**: at most `half_open_max_requests` probes are admitted. When that many have
//!   succeeded it closes with an empty window; the first failed probe opens it again and
//!   restarts the timer. A probe dropped without an outcome (the request was cancelled)
//!   counts as neither and frees its slot.
//!
//! Every change of phase bumps a generation number, and a permit only counts for the
//! generation it was issued in: an answer to a request admitted while closed that arrives
//! after the trip says nothing about the upstream's recovery, so it is ignored.
//!
//! Admission in the closed state, the common case, is one atomic load (plus the `Arc`
//! clone of the permit); in the open state before the timeout it is one more load and a
//! clock read. Recording an outcome takes a short `Mutex` critical section (a handful of
//! integer operations) so the window and the phase change together.
//!
//! Time is [`tokio::time::Instant`], so paused-time tests can drive the public API; the
//! unit tests below pass explicit instants to the `*_at` variants instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use legate_snapshot::ClassicBreaker;
use tokio::time::Instant;

use crate::deadline;

/// Buckets in the rolling window; each covers a tenth of it.
const BUCKETS: usize = 10;

/// Phase tags in the low bits of [`ClassicBreakerState::phase`].
const TAG_CLOSED: u64 = 0;
const TAG_OPEN: u64 = 1;
const TAG_HALF_OPEN: u64 = 2;
const TAG_BITS: u32 = 2;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

/// What the breaker is doing, for metrics and the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum BreakerStatus {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerStatus {
    /// A label for metrics and JSON.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BreakerStatus::Closed => "closed",
            BreakerStatus::Open => "open",
            BreakerStatus::HalfOpen => "half_open",
        }
    }
}

/// The live breaker of one cluster; shared by every request to it.
#[derive(Debug)]
pub(crate) struct ClassicBreakerState {
    /// Zero of the nanosecond clock in `reopen_at`.
    origin: Instant,
    /// `generation << TAG_BITS | tag`, mirrored from `inner` on every change of phase so
    /// admission can skip the lock.
    phase: AtomicU64,
    /// While open: nanoseconds after `origin` when it turns half-open.
    reopen_at: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: ClassicBreaker,
    generation: u64,
    phase: Phase,
    window: Window,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Closed,
    Open {
        since: Instant,
    },
    HalfOpen {
        /// Probes admitted and not cancelled (in flight or succeeded).
        admitted: u32,
        succeeded: u32,
    },
}

impl Phase {
    fn tag(self) -> u64 {
        match self {
            Phase::Closed => TAG_CLOSED,
            Phase::Open { .. } => TAG_OPEN,
            Phase::HalfOpen { .. } => TAG_HALF_OPEN,
        }
    }
}

/// The right to send one request; hold it until the outcome is known, then
/// [`record`](Self::record) it. Dropping it unrecorded counts as neither success nor failure.
#[derive(Debug)]
#[must_use = "a permit must be held for the request and its outcome recorded"]
pub(crate) struct BreakerPermit {
    /// `None` once the outcome is recorded.
    breaker: Option<Arc<ClassicBreakerState>>,
    generation: u64,
    probe: bool,
}

impl ClassicBreakerState {
    pub(crate) fn new(cfg: &ClassicBreaker) -> Self {
        let origin = Instant::now();
        ClassicBreakerState {
            origin,
            phase: AtomicU64::new(TAG_CLOSED),
            reopen_at: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                cfg: cfg.clone(),
                generation: 0,
                phase: Phase::Closed,
                window: Window::new(cfg.window),
            }),
        }
    }

    /// Applies a new configuration and keeps the phase. A new `window` length empties the
    /// window (the buckets no longer line up); a new `open_timeout` counts from the trip.
    pub(crate) fn update(&self, cfg: &ClassicBreaker) {
        let mut inner = self.lock();
        if inner.cfg == *cfg {
            return;
        }
        if inner.cfg.window != cfg.window {
            inner.window = Window::new(cfg.window);
        }
        inner.cfg = cfg.clone();
        match inner.phase {
            Phase::Closed => {}
            Phase::Open { since } => self.store_reopen_at(deadline::after(since, cfg.open_timeout)),
            Phase::HalfOpen { succeeded, .. } => {
                if succeeded >= probes(cfg) {
                    self.close(&mut inner);
                }
            }
        }
    }

    /// Admits one request, or `None` while the breaker is open or every half-open probe
    /// slot is taken.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<BreakerPermit> {
        self.try_acquire_at(Instant::now())
    }

    fn try_acquire_at(self: &Arc<Self>, now: Instant) -> Option<BreakerPermit> {
        let word = self.phase.load(Ordering::Acquire);
        match word & TAG_MASK {
            TAG_CLOSED => return Some(self.permit(word >> TAG_BITS, false)),
            TAG_OPEN if self.nanos(now) < self.reopen_at.load(Ordering::Acquire) => return None,
            _ => {}
        }
        let mut inner = self.lock();
        if let Phase::Open { since } = inner.phase {
            if now < deadline::after(since, inner.cfg.open_timeout) {
                return None;
            }
            self.set_phase(
                &mut inner,
                Phase::HalfOpen {
                    admitted: 0,
                    succeeded: 0,
                },
            );
        }
        let generation = inner.generation;
        let max = probes(&inner.cfg);
        match &mut inner.phase {
            Phase::Closed => Some(self.permit(generation, false)),
            Phase::HalfOpen { admitted, .. } if *admitted < max => {
                *admitted += 1;
                Some(self.permit(generation, true))
            }
            Phase::HalfOpen { .. } | Phase::Open { .. } => None,
        }
    }

    /// The current phase; an open breaker whose timeout has passed reads as half-open even
    /// before the next request moves it there.
    pub(crate) fn state(&self) -> BreakerStatus {
        self.state_at(Instant::now())
    }

    fn state_at(&self, now: Instant) -> BreakerStatus {
        let word = self.phase.load(Ordering::Acquire);
        match word & TAG_MASK {
            TAG_CLOSED => BreakerStatus::Closed,
            TAG_OPEN if self.nanos(now) < self.reopen_at.load(Ordering::Acquire) => {
                BreakerStatus::Open
            }
            _ => BreakerStatus::HalfOpen,
        }
    }

    fn permit(self: &Arc<Self>, generation: u64, probe: bool) -> BreakerPermit {
        BreakerPermit {
            breaker: Some(self.clone()),
            generation,
            probe,
        }
    }

    fn on_outcome(&self, generation: u64, success: bool, now: Instant) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.generation != generation {
            return;
        }
        match &mut inner.phase {
            Phase::Closed => {
                let cfg = &inner.cfg;
                let (ratio, minimum) = (cfg.failure_ratio_permille, cfg.minimum_requests);
                let tripped = inner
                    .window
                    .record(self.nanos(now), success, ratio, minimum);
                if tripped {
                    self.open(inner, now);
                }
            }
            Phase::HalfOpen { succeeded, .. } => {
                if !success {
                    self.open(inner, now);
                    return;
                }
                *succeeded += 1;
                if *succeeded >= probes(&inner.cfg) {
                    self.close(inner);
                }
            }
            // Open always comes with a new generation; no permit of it exists.
            Phase::Open { .. } => {}
        }
    }

    fn on_cancel(&self, generation: u64) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if let Phase::HalfOpen { admitted, .. } = &mut inner.phase {
            *admitted = admitted.saturating_sub(1);
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        self.store_reopen_at(deadline::after(now, inner.cfg.open_timeout));
        self.set_phase(inner, Phase::Open { since: now });
    }

    fn close(&self, inner: &mut Inner) {
        inner.window = Window::new(inner.cfg.window);
        self.set_phase(inner, Phase::Closed);
    }

    /// Moves to `phase` in a new generation and publishes it for the lock-free paths.
    fn set_phase(&self, inner: &mut Inner, phase: Phase) {
        inner.generation += 1;
        inner.phase = phase;
        self.phase.store(
            inner.generation << TAG_BITS | phase.tag(),
            Ordering::Release,
        );
    }

    fn store_reopen_at(&self, at: Instant) {
        self.reopen_at.store(self.nanos(at), Ordering::Release);
    }

    /// Nanoseconds from `origin` to `t` (0 before it); u64 nanoseconds last 584 years.
    fn nanos(&self, t: Instant) -> u64 {
        duration_nanos(t.saturating_duration_since(self.origin))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The critical sections cannot panic half-way; a poisoned lock holds consistent data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl BreakerPermit {
    /// Records the request's outcome: `false` for a 5xx answer or a local-origin failure
    /// (connect failure, reset, timeout).
    pub(crate) fn record(self, success: bool) {
        self.record_at(success, Instant::now());
    }

    fn record_at(mut self, success: bool, now: Instant) {
        if let Some(breaker) = self.breaker.take() {
            breaker.on_outcome(self.generation, success, now);
        }
    }

    /// Whether this permit is one of the half-open probes.
    #[cfg(test)]
    pub(crate) fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        // Only probes hold a slot; a cancelled closed-state request changes nothing.
        if let Some(breaker) = self.breaker.take()
            && self.probe
        {
            breaker.on_cancel(self.generation);
        }
    }
}

/// The probes a half-open breaker admits; validation guarantees at least 1.
fn probes(cfg: &ClassicBreaker) -> u32 {
    cfg.half_open_max_requests.max(1)
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    ok: u64,
    failed: u64,
}

/// Outcomes over the last `window`, in [`BUCKETS`] buckets: an outcome leaves the window
/// between 0.9 and 1 window after it was recorded.
#[derive(Debug)]
struct Window {
    bucket_nanos: u64,
    /// Absolute number (time / `bucket_nanos`) of the newest bucket; it lives in slot
    /// `head % BUCKETS`, the nine before it in the slots behind.
    head: u64,
    buckets: [Counts; BUCKETS],
    total: Counts,
}

impl Window {
    fn new(window: Duration) -> Window {
        Window {
            // `BUCKETS` is a small constant: the cast is exact.
            bucket_nanos: (duration_nanos(window) / BUCKETS as u64).max(1),
            head: 0,
            buckets: [Counts::default(); BUCKETS],
            total: Counts::default(),
        }
    }

    /// Adds one outcome at `now_nanos`; true when the window now calls for a trip.
    fn record(&mut self, now_nanos: u64, success: bool, ratio_permille: u32, minimum: u32) -> bool {
        self.advance(now_nanos / self.bucket_nanos);
        // `head % BUCKETS` is below `BUCKETS`: the cast is exact.
        let bucket = &mut self.buckets[(self.head % BUCKETS as u64) as usize];
        if success {
            bucket.ok += 1;
            self.total.ok += 1;
        } else {
            bucket.failed += 1;
            self.total.failed += 1;
        }
        let Counts { ok, failed } = self.total;
        let total = ok + failed;
        failed > 0
            && total >= u64::from(minimum)
            && failed * 1000 >= u64::from(ratio_permille) * total
    }

    /// Empties the buckets that fell out of the window by bucket number `now`. A `now`
    /// behind `head` (a thread that read the clock before another took the lock) counts in
    /// the newest bucket.
    fn advance(&mut self, now: u64) {
        if now <= self.head {
            return;
        }
        let stale = (now - self.head).min(BUCKETS as u64);
        for i in 1..=stale {
            // Below `BUCKETS` after `%`: the cast is exact.
            let slot = ((self.head + i) % BUCKETS as u64) as usize;
            let Counts { ok, failed } = std::mem::take(&mut self.buckets[slot]);
            self.total.ok -= ok;
            self.total.failed -= failed;
        }
        self.head = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);
    const OPEN: Duration = Duration::from_secs(30);

    fn cfg(ratio_permille: u32, minimum_requests: u32, half_open: u32) -> ClassicBreaker {
        ClassicBreaker {
            failure_ratio_permille: ratio_permille,
            window: WINDOW,
            minimum_requests,
            open_timeout: OPEN,
            half_open_max_requests: half_open,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Runs one request to completion at `now`.
    fn outcome(b: &Arc<ClassicBreakerState>, now: Instant, success: bool) {
        b.try_acquire_at(now)
            .expect("admitted while closed")
            .record_at(success, now);
    }

    /// A new breaker and its clock's zero, so bucket edges fall at whole tenths of
    /// `WINDOW` from the returned instant.
    fn breaker(c: &ClassicBreaker) -> (Arc<ClassicBreakerState>, Instant) {
        let b = Arc::new(ClassicBreakerState::new(c));
        let t0 = b.origin;
        (b, t0)
    }

    /// A breaker tripped at the returned instant.
    fn tripped(c: &ClassicBreaker) -> (Arc<ClassicBreakerState>, Instant) {
        let (b, t) = breaker(c);
        for _ in 0..c.minimum_requests {
            outcome(&b, t, false);
        }
        assert_eq!(b.state_at(t), BreakerStatus::Open);
        (b, t)
    }

    /// Feeds `outcomes` ('s' success, 'f' failure) at one instant and returns after how many
    /// the breaker opened, if it did.
    fn trips_after(ratio_permille: u32, minimum: u32, outcomes: &str) -> Option<usize> {
        let (b, t) = breaker(&cfg(ratio_permille, minimum, 1));
        for (i, o) in outcomes.chars().enumerate() {
            outcome(&b, t, o == 's');
            if b.state_at(t) == BreakerStatus::Open {
                return Some(i + 1);
            }
        }
        None
    }

    #[test]
    fn trips_exactly_at_the_ratio_once_the_minimum_is_reached() {
        #[track_caller]
        fn check(ratio: u32, minimum: u32, outcomes: &str, expected: Option<usize>) {
            assert_eq!(
                trips_after(ratio, minimum, outcomes),
                expected,
                "ratio {ratio}‰, minimum {minimum}, outcomes {outcomes}"
            );
        }
        // 2 of 4 is 500‰.
        check(500, 4, "sfsf", Some(4));
        check(500, 4, "sfss", None);
        // 1 of 3 is 333‰, just below 334‰.
        check(333, 3, "fss", Some(3));
        check(334, 3, "fss", None);
        check(334, 3, "fssf", Some(4));
        // Below the minimum it never trips, however bad.
        check(1, 5, "ffff", None);
        check(1, 5, "fffff", Some(5));
        // Reaching the minimum with a success still trips when the ratio holds.
        check(500, 4, "fffs", Some(4));
        // Only successes never trip.
        check(1, 1, "ssssssss", None);
        check(1000, 1, "sf", None);
        check(1000, 1, "f", Some(1));
    }

    #[test]
    fn old_outcomes_fall_out_of_the_window() {
        // Just inside the window three failures still count: a fourth trips.
        let (b, t0) = breaker(&cfg(500, 4, 1));
        for _ in 0..3 {
            outcome(&b, t0, false);
        }
        outcome(&b, t0 + WINDOW - ms(1), false);
        assert_eq!(b.state_at(t0 + WINDOW - ms(1)), BreakerStatus::Open);

        // One window later they are gone: three more failures are below the minimum.
        let (b, t0) = breaker(&cfg(500, 4, 1));
        for _ in 0..3 {
            outcome(&b, t0, false);
        }
        let later = t0 + WINDOW;
        for _ in 0..3 {
            outcome(&b, later, false);
        }
        assert_eq!(b.state_at(later), BreakerStatus::Closed);
        // Half a window on, the newer three are still there and a fourth trips.
        outcome(&b, later + WINDOW / 2, false);
        assert_eq!(b.state_at(later + WINDOW / 2), BreakerStatus::Open);
    }

    #[test]
    fn buckets_expire_one_by_one_and_all_after_a_long_gap() {
        // One failure per tenth of the window, with a success beside each: a 50% ratio
        // whose failures leave one bucket at a time.
        let (b, t0) = breaker(&cfg(500, 21, 1));
        let tenth = WINDOW / 10;
        for i in 0..10 {
            outcome(&b, t0 + tenth * i, false);
            outcome(&b, t0 + tenth * i, true);
        }
        assert_eq!(
            b.state_at(t0),
            BreakerStatus::Closed,
            "20 outcomes, minimum 21"
        );
        // At 10 tenths the first bucket left: 18 + this failure is 19, still closed.
        outcome(&b, t0 + tenth * 10, false);
        assert_eq!(b.state_at(t0), BreakerStatus::Closed);
        outcome(&b, t0 + tenth * 10, false);
        outcome(&b, t0 + tenth * 10, false);
        assert_eq!(
            b.state_at(t0),
            BreakerStatus::Open,
            "21 outcomes, 12 failed"
        );

        let (b, t0) = breaker(&cfg(500, 2, 1));
        for i in 0..10 {
            outcome(&b, t0 + tenth * i, true);
            outcome(&b, t0 + tenth * i, true);
            outcome(&b, t0 + tenth * i, false);
        }
        assert_eq!(b.state_at(t0), BreakerStatus::Closed, "10 of 30 failed");
        outcome(&b, t0 + WINDOW * 7, false);
        assert_eq!(b.state_at(t0), BreakerStatus::Closed, "alone in the window");
        outcome(&b, t0 + WINDOW * 7, false);
        assert_eq!(b.state_at(t0), BreakerStatus::Open);
    }

    #[test]
    fn open_refuses_until_the_timeout_then_turns_half_open() {
        let (b, t) = tripped(&cfg(500, 3, 2));
        assert!(b.try_acquire_at(t).is_none());
        assert!(
            b.try_acquire_at(t + OPEN - Duration::from_nanos(1))
                .is_none()
        );
        assert_eq!(
            b.state_at(t + OPEN - Duration::from_nanos(1)),
            BreakerStatus::Open
        );
        assert_eq!(b.state_at(t + OPEN), BreakerStatus::HalfOpen);
        let probe = b
            .try_acquire_at(t + OPEN)
            .expect("a probe after the timeout");
        assert!(probe.is_probe());
    }

    #[test]
    fn half_open_admits_exactly_the_probe_count() {
        let (b, t) = tripped(&cfg(500, 3, 3));
        let at = t + OPEN;
        let probes: Vec<_> = (0..3)
            .map(|i| b.try_acquire_at(at).unwrap_or_else(|| panic!("probe {i}")))
            .collect();
        assert!(b.try_acquire_at(at).is_none(), "a fourth probe");
        assert!(b.try_acquire_at(at + OPEN).is_none(), "still three");
        // A success frees no slot: the probes are counted in total, not only in flight.
        let mut probes = probes.into_iter();
        probes.next().expect("probe").record_at(true, at);
        assert!(b.try_acquire_at(at).is_none());
        assert_eq!(b.state_at(at), BreakerStatus::HalfOpen);
    }

    #[test]
    fn all_probes_succeeding_closes_with_an_empty_window() {
        let (b, t) = tripped(&cfg(500, 3, 2));
        let at = t + OPEN;
        let first = b.try_acquire_at(at).expect("probe 1");
        let second = b.try_acquire_at(at).expect("probe 2");
        first.record_at(true, at);
        assert_eq!(b.state_at(at), BreakerStatus::HalfOpen);
        second.record_at(true, at);
        assert_eq!(b.state_at(at), BreakerStatus::Closed);
        // The failures that tripped it are forgotten: two more stay below the minimum.
        outcome(&b, at, false);
        outcome(&b, at, false);
        assert_eq!(b.state_at(at), BreakerStatus::Closed);
        outcome(&b, at, false);
        assert_eq!(b.state_at(at), BreakerStatus::Open);
    }

    #[test]
    fn a_failed_probe_opens_again_and_restarts_the_timer() {
        let (b, t) = tripped(&cfg(500, 3, 3));
        let at = t + OPEN + ms(500);
        let ok = b.try_acquire_at(at).expect("probe 1");
        let bad = b.try_acquire_at(at).expect("probe 2");
        let late = b.try_acquire_at(at).expect("probe 3");
        ok.record_at(true, at);
        bad.record_at(false, at);
        assert_eq!(b.state_at(at), BreakerStatus::Open);
        // The last probe's answer belongs to the old half-open phase.
        late.record_at(true, at);
        assert_eq!(b.state_at(at), BreakerStatus::Open);
        assert!(b.try_acquire_at(at + OPEN - ms(1)).is_none());
        assert!(b.try_acquire_at(at + OPEN).is_some());
    }

    #[test]
    fn a_dropped_probe_frees_its_slot() {
        let (b, t) = tripped(&cfg(500, 3, 2));
        let at = t + OPEN;
        let first = b.try_acquire_at(at).expect("probe 1");
        let second = b.try_acquire_at(at).expect("probe 2");
        assert!(b.try_acquire_at(at).is_none());
        drop(second);
        let third = b.try_acquire_at(at).expect("the freed slot");
        first.record_at(true, at);
        assert_eq!(
            b.state_at(at),
            BreakerStatus::HalfOpen,
            "a cancel is no success"
        );
        third.record_at(true, at);
        assert_eq!(b.state_at(at), BreakerStatus::Closed);
    }

    #[test]
    fn dropped_requests_while_closed_count_as_nothing() {
        let (b, t) = breaker(&cfg(500, 2, 1));
        for _ in 0..10 {
            drop(b.try_acquire_at(t).expect("closed"));
        }
        outcome(&b, t, false);
        assert_eq!(
            b.state_at(t),
            BreakerStatus::Closed,
            "one outcome, minimum two"
        );
    }

    #[test]
    fn answers_from_before_the_trip_do_not_count_later() {
        let (b, t) = breaker(&cfg(500, 2, 1));
        let slow_failure = b.try_acquire_at(t).expect("closed");
        let slow_success = b.try_acquire_at(t).expect("closed");
        outcome(&b, t, false);
        outcome(&b, t, false);
        assert_eq!(b.state_at(t), BreakerStatus::Open);
        let at = t + OPEN;
        let probe = b.try_acquire_at(at).expect("probe");
        slow_failure.record_at(false, at);
        slow_success.record_at(true, at);
        assert_eq!(b.state_at(at), BreakerStatus::HalfOpen);
        probe.record_at(true, at);
        assert_eq!(b.state_at(at), BreakerStatus::Closed);
    }

    #[test]
    fn update_keeps_the_phase() {
        let c = cfg(500, 3, 2);
        let (b, t) = tripped(&c);
        let longer = ClassicBreaker {
            open_timeout: OPEN * 2,
            ..c.clone()
        };
        b.update(&longer);
        assert!(
            b.try_acquire_at(t + OPEN).is_none(),
            "the new timeout applies"
        );
        assert_eq!(b.state_at(t + OPEN * 2), BreakerStatus::HalfOpen);

        // Closed: the window survives a change of ratio.
        let (b, t) = breaker(&c);
        outcome(&b, t, false);
        outcome(&b, t, true);
        b.update(&ClassicBreaker {
            failure_ratio_permille: 400,
            ..c.clone()
        });
        outcome(&b, t, true);
        assert_eq!(b.state_at(t), BreakerStatus::Closed, "1 of 3 is below 400‰");
        outcome(&b, t, false);
        assert_eq!(b.state_at(t), BreakerStatus::Open, "2 of 4");

        // Half-open: fewer probes needed than already succeeded closes it.
        let (b, t) = tripped(&cfg(500, 3, 3));
        b.try_acquire_at(t + OPEN)
            .expect("probe")
            .record_at(true, t + OPEN);
        b.update(&cfg(500, 3, 1));
        assert_eq!(b.state_at(t + OPEN), BreakerStatus::Closed);
    }

    #[test]
    fn the_clock_reading_api() {
        let c = ClassicBreaker {
            open_timeout: Duration::from_secs(3600),
            ..cfg(500, 2, 1)
        };
        let b = Arc::new(ClassicBreakerState::new(&c));
        b.try_acquire().expect("closed").record(true);
        assert_eq!(b.state(), BreakerStatus::Closed);
        b.try_acquire().expect("closed").record(false);
        assert_eq!(b.state(), BreakerStatus::Open);
        assert!(b.try_acquire().is_none());
    }

    #[test]
    fn status_labels() {
        assert_eq!(BreakerStatus::Closed.as_str(), "closed");
        assert_eq!(BreakerStatus::Open.as_str(), "open");
        assert_eq!(BreakerStatus::HalfOpen.as_str(), "half_open");
    }
}
