//! Canary rollouts: shift a service's traffic from one version to another in steps, judge
//! each step on the fleet's own load reports, promote or roll back.
//!
//! The controller has no task of its own: the configuration state's owner
//! ([`crate::app`]) holds the [`Rollouts`] and drives them, so a rollout's weight changes
//! are applied in order with file changes and admin calls, through the same code path as
//! `set-weights` (recorded as op `rollout`). The owner calls [`Rollouts::tick`] when a load
//! report arrives (judging is event-driven, not at the end of an interval), when a node ACKs
//! or a stream opens or ends, and at the next deadline a rollout asks for
//! ([`Rollouts::next_deadline`]).
//!
//! A step goes through three phases: its weights are set (`to` gets the step's percentage,
//! `from` the rest, other versions 0), then every connected node serving the service must
//! ACK the route configuration that carries them, then it is judged on the load reported
//! since that moment ([`crate::load_report::LoadStore::service_since`]) by [`judge`]. A
//! failure rolls back at once; passing needs the whole interval with enough requests; too
//! few requests hold the rollout (`holding`), which never promotes on silence.
//!
//! Rollouts (definition, state, step, decisions) are persisted in the data directory
//! ([`ROLLOUTS_FILE`], written atomically like the overlay) after every change, and loaded at
//! start: a restarted legate-cp sets the weights of the step it was on again and judges that
//! step afresh.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::app::ChangeError;
use crate::load_report::{ServiceLoad, VersionLoad};
use crate::store::{self, StoreError, rfc3339, unix_ms};

/// The file in the data directory that holds the rollouts.
pub const ROLLOUTS_FILE: &str = "rollouts.json";
/// The format of [`ROLLOUTS_FILE`] this release reads and writes.
pub const ROLLOUTS_FORMAT: u32 = 1;
/// Decisions kept per rollout; older ones are dropped.
pub const MAX_DECISIONS: usize = 200;
pub use legate_model::rollout::{MAX_INTERVAL, MAX_STEPS, parse_percent};
/// How long a step whose weights could not be set waits before trying again.
const RETRY: Duration = Duration::from_secs(1);
/// The op recorded with the weight changes a rollout makes (the source `get service` shows).
pub const OP: &str = "rollout";

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Setting a step's weights, waiting for ACKs, or judging the step.
    Progressing,
    /// Stopped by an operator at a step; its weights stay.
    Paused,
    /// The step's interval is over without a conclusive judgement (too few requests, or
    /// both versions failing alike); judged again on every report.
    Holding,
    /// `to` serves 100 %.
    Promoted,
    /// A check failed: `from` serves 100 % again.
    RolledBack,
    /// An operator aborted it: `from` serves 100 % again.
    Aborted,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Progressing => "progressing",
            RolloutState::Paused => "paused",
            RolloutState::Holding => "holding",
            RolloutState::Promoted => "promoted",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
        }
    }

    /// Progressing or holding: the controller is in charge of the weights, and manual
    /// weight changes are refused.
    pub fn in_charge(self) -> bool {
        matches!(self, RolloutState::Progressing | RolloutState::Holding)
    }

    /// Not finished: a new rollout of the service is refused.
    pub fn is_active(self) -> bool {
        self.in_charge() || self == RolloutState::Paused
    }
}

/// What a decision concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
    /// An operator's action: start, pause, resume, abort, promote.
    Manual,
}

/// One version's load over a step, as judged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Completed attempts (succeeded and errored).
    pub requests: u64,
    pub errors: u64,
    pub error_percent: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub nodes_reporting: usize,
}

impl From<&VersionLoad> for Figures {
    fn from(v: &VersionLoad) -> Self {
        Figures {
            requests: v.load.succeeded.saturating_add(v.load.errored),
            errors: v.load.errored,
            error_percent: v.error_percent,
            p50_ms: v.p50_ms,
            p99_ms: v.p99_ms,
            nodes_reporting: v.nodes_reporting,
        }
    }
}

/// A rollout as asked for, validated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub service: String,
    pub from: String,
    pub to: String,
    /// Percent of traffic to `to` at each step, ascending, the last 100.
    pub steps: Vec<u32>,
    pub interval_ms: u64,
    /// Error percentage of `to` above which a step fails.
    pub max_error_percent: f64,
    /// p99 latency of `to` above which a step fails; unset: latency is not judged.
    pub max_p99_ms: Option<f64>,
    /// Completed requests to `to` a judgement needs.
    pub min_requests: u64,
}

impl Definition {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// Whether the values make a rollout (also checked on one read back from the data
    /// directory).
    pub fn check(&self) -> Result<(), String> {
        if self.from == self.to {
            return Err(format!(
                "from and to are the same version `{}`: nothing to roll out",
                self.to
            ));
        }
        if let Some(m) = legate_model::rollout::steps_problem(&self.steps) {
            return Err(format!("steps: {m}"));
        }
        if let Some(m) = legate_model::rollout::interval_problem(self.interval()) {
            return Err(format!("interval: {m}"));
        }
        if !(self.max_error_percent.is_finite() && (0.0..=100.0).contains(&self.max_error_percent))
        {
            return Err("max_error_rate: must be a percentage from 0% to 100%".to_owned());
        }
        if let Some(p99) = self.max_p99_ms
            && !(p99.is_finite() && p99 > 0.0)
        {
            return Err("max_p99: must be a duration above 0".to_owned());
        }
        if self.min_requests == 0 {
            return Err(
                "min_requests: must be at least 1 (a rollout never promotes on silence)".to_owned(),
            );
        }
        Ok(())
    }

    /// The weights of step `index`: `to` gets its percentage, `from` the rest, every other
    /// version of `versions` 0.
    pub fn step_weights(&self, index: usize, versions: &[String]) -> Vec<(String, u32)> {
        let to = self.steps.get(index).copied().unwrap_or(100).min(100);
        self.weights(to, versions)
    }

    /// `to` at `percent`, `from` at the rest, the others at 0.
    pub fn weights(&self, percent: u32, versions: &[String]) -> Vec<(String, u32)> {
        versions
            .iter()
            .map(|v| {
                let w = if *v == self.to {
                    percent
                } else if *v == self.from {
                    100 - percent
                } else {
                    0
                };
                (v.clone(), w)
            })
            .collect()
    }
}

/// A rollout as the admin API asks for it: `{"to":"v2","from":"v1","steps":[5,25,50,100],
/// "interval":"30s","max_error_rate":"1%","max_p99":"250ms","min_requests":100}`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    pub to: String,
    #[serde(default)]
    pub from: Option<String>,
    pub steps: Vec<u32>,
    /// A duration (`30s`).
    pub interval: String,
    /// A percentage: `1%`, `0.5%` (a bare number is read as a percentage too).
    pub max_error_rate: Rate,
    /// A duration (`250ms`); unset: latency is not judged.
    #[serde(default)]
    pub max_p99: Option<String>,
    pub min_requests: u64,
}

/// A percentage written `1%` or `1`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rate(pub String);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(f64),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Text(s) => Rate(s),
            Raw::Number(n) => Rate(n.to_string()),
        })
    }
}

impl From<&legate_model::ServiceRollout> for StartRequest {
    fn from(r: &legate_model::ServiceRollout) -> Self {
        StartRequest {
            to: r.to.clone(),
            from: r.from.clone(),
            steps: r.steps.clone(),
            interval: r
                .interval
                .map(legate_model::units::format_duration)
                .unwrap_or_default(),
            max_error_rate: Rate(r.max_error_rate.clone()),
            max_p99: r.max_p99.map(legate_model::units::format_duration),
            min_requests: r.min_requests,
        }
    }
}

impl StartRequest {
    /// The definition for `service`, whose versions and weights are `weights` now: `from`
    /// defaults to the version with the highest weight (the first by name on a tie).
    pub fn definition(
        self,
        service: &str,
        weights: &[(String, u32)],
    ) -> Result<Definition, String> {
        let known = |v: &str| weights.iter().any(|(name, _)| name == v);
        let names = || {
            weights
                .iter()
                .map(|(n, _)| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !known(&self.to) {
            return Err(format!(
                "to: service `{service}` has no version `{}` (it has {})",
                self.to,
                names()
            ));
        }
        let from = match self.from {
            Some(from) if known(&from) => from,
            Some(from) => {
                return Err(format!(
                    "from: service `{service}` has no version `{from}` (it has {})",
                    names()
                ));
            }
            None => weights
                .iter()
                .filter(|(n, _)| *n != self.to)
                .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
                .map(|(n, _)| n.clone())
                .ok_or_else(|| {
                    format!("service `{service}` has no other version to roll out from")
                })?,
        };
        let interval =
            legate_model::parse_duration(&self.interval).map_err(|e| format!("interval: {e}"))?;
        let max_error_percent =
            parse_percent(&self.max_error_rate.0).map_err(|e| format!("max_error_rate: {e}"))?;
        let max_p99_ms = match &self.max_p99 {
            Some(p) => Some(
                legate_model::parse_duration(p)
                    .map_err(|e| format!("max_p99: {e}"))?
                    .as_secs_f64()
                    * 1000.0,
            ),
            None => None,
        };
        let definition = Definition {
            service: service.to_owned(),
            from,
            to: self.to,
            steps: self.steps,
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            max_error_percent,
            max_p99_ms,
            min_requests: self.min_requests,
        };
        definition.check()?;
        Ok(definition)
    }
}

/// What [`judge`] concluded about a step so far.
#[derive(Clone, Debug, PartialEq)]
pub enum Judgement {
    /// Not yet: the interval is not over, and nothing failed.
    Wait,
    Pass(String),
    Fail(String),
    Inconclusive(String),
}

fn percent(p: Option<f64>) -> String {
    p.map_or_else(|| "-".to_owned(), |p| format!("{p:.2}%"))
}

fn ms(p: Option<f64>) -> String {
    p.map_or_else(|| "-".to_owned(), |p| format!("{p:.1} ms"))
}

/// Judge a step on the load since its weights were ACKed (`elapsed` ago).
///
/// The rules, in order:
/// 1. With fewer than `min_requests` completed requests to `to`, nothing is concluded:
///    until the interval is over that is a wait, after it the step is inconclusive.
/// 2. `to`'s error percentage above `max_error_percent` fails the step, unless `from` has
///    at least `min_requests` too and fails at least as often: then the failure is not
///    the new version's (a shared dependency is down), and the step is inconclusive once
///    the interval is over (it neither fails nor promotes).
/// 3. The same for `to`'s p99 above `max_p99_ms`, compared with `from`'s p99. A version
///    without latency buckets (Envoy reports none) is judged on errors alone.
/// 4. Otherwise the step passes once the interval is over.
pub fn judge(def: &Definition, from: &Figures, to: &Figures, elapsed: Duration) -> Judgement {
    let over = elapsed >= def.interval();
    if to.requests < def.min_requests {
        return if over {
            Judgement::Inconclusive(format!(
                "too few requests to {}: {} of the {} needed since the step started",
                def.to, to.requests, def.min_requests
            ))
        } else {
            Judgement::Wait
        };
    }
    let from_counts = from.requests >= def.min_requests;
    if let Some(e) = to.error_percent
        && e > def.max_error_percent
    {
        if from_counts && from.error_percent.is_some_and(|f| f >= e) {
            return if over {
                Judgement::Inconclusive(format!(
                    "{} fails {} of requests (over {}), but {} fails as often ({}): not the new \
                     version's failure",
                    def.to,
                    percent(Some(e)),
                    percent(Some(def.max_error_percent)),
                    def.from,
                    percent(from.error_percent)
                ))
            } else {
                Judgement::Wait
            };
        }
        return Judgement::Fail(format!(
            "error rate of {} is {} ({} of {} requests), over the {} allowed ({} {})",
            def.to,
            percent(Some(e)),
            to.errors,
            to.requests,
            percent(Some(def.max_error_percent)),
            def.from,
            percent(from.error_percent)
        ));
    }
    if let (Some(max), Some(p99)) = (def.max_p99_ms, to.p99_ms)
        && p99 > max
    {
        if from_counts && from.p99_ms.is_some_and(|f| f >= p99) {
            return if over {
                Judgement::Inconclusive(format!(
                    "p99 of {} is {} (over {}), but {}'s is as high ({}): not the new \
                     version's slowness",
                    def.to,
                    ms(Some(p99)),
                    ms(Some(max)),
                    def.from,
                    ms(from.p99_ms)
                ))
            } else {
                Judgement::Wait
            };
        }
        return Judgement::Fail(format!(
            "p99 of {} is {}, over the {} allowed ({} {})",
            def.to,
            ms(Some(p99)),
            ms(Some(max)),
            def.from,
            ms(from.p99_ms)
        ));
    }
    if over {
        Judgement::Pass(format!(
            "{} requests to {} over {}: error rate {}, p99 {}",
            to.requests,
            def.to,
            humantime::format_duration(Duration::from_secs(elapsed.as_secs())),
            percent(to.error_percent),
            ms(to.p99_ms)
        ))
    } else {
        Judgement::Wait
    }
}

/// One decision of a rollout, as recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// RFC 3339.
    pub time: String,
    /// The same, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The step, from 1.
    pub step: usize,
    /// `to`'s percentage at that step.
    pub weight: u32,
    /// Per version, the load judged (since the step's weights were ACKed).
    pub figures: BTreeMap<String, Figures>,
    pub verdict: Verdict,
    pub reason: String,
    /// Per connected node id serving the service: the route configuration version it had
    /// ACKed (`-`: none yet).
    pub acked: BTreeMap<String, String>,
}

/// Where a step is, in memory only: after a restart every active step starts again at
/// setting its weights.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum Phase {
    /// The step's weights are to be set (not before `not_before`).
    #[default]
    Apply,
    Retry(Instant),
    /// Set; waiting for every node to ACK them.
    Acking,
    /// Every node ACKed at this instant; judged on the load since.
    Judging(Instant),
}

/// A rollout: its definition, where it stands, and its decisions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rollout {
    pub definition: Definition,
    pub state: RolloutState,
    /// The current step's index (from 0).
    pub step: usize,
    pub started_unix_ms: u64,
    /// When every node had ACKed the current step's weights (wall time).
    pub step_started_unix_ms: Option<u64>,
    pub reason: String,
    /// From the failing report (or the abort) to every node having ACKed the rollback.
    pub rollback_ms: Option<u64>,
    pub decisions: VecDeque<Decision>,
    /// For a rollout a mesh file's `rollout:` block declared: that block's fingerprint, so
    /// the same block does not start it again once it has finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared: Option<String>,
    #[serde(skip)]
    phase: Phase,
    /// The failing report's arrival (or the abort), until every node ACKed the rollback.
    #[serde(skip)]
    rollback_since: Option<Instant>,
    #[serde(skip)]
    not_reporting: Vec<String>,
    /// The figures judged last.
    #[serde(skip)]
    figures: BTreeMap<String, Figures>,
    /// When this legate-cp took over the rollout after a restart (wall time).
    #[serde(skip)]
    resumed_unix_ms: Option<u64>,
}

impl Rollout {
    fn new(definition: Definition) -> Rollout {
        Rollout {
            definition,
            state: RolloutState::Progressing,
            step: 0,
            started_unix_ms: unix_ms(),
            step_started_unix_ms: None,
            reason: "starting".to_owned(),
            rollback_ms: None,
            decisions: VecDeque::new(),
            declared: None,
            phase: Phase::Apply,
            rollback_since: None,
            not_reporting: Vec::new(),
            figures: BTreeMap::new(),
            resumed_unix_ms: None,
        }
    }

    fn weight(&self) -> u32 {
        self.definition.steps.get(self.step).copied().unwrap_or(100)
    }

    /// `step 2 of 4`.
    pub fn position(&self) -> String {
        format!("step {} of {}", self.step + 1, self.definition.steps.len())
    }

    fn record(&mut self, fleet: &dyn Fleet, verdict: Verdict, reason: String) {
        let acked = fleet
            .acks(&self.definition.service)
            .into_iter()
            .map(|(node, a)| (node, a.acked.unwrap_or_else(|| "-".to_owned())))
            .collect();
        if self.decisions.len() >= MAX_DECISIONS {
            self.decisions.pop_front();
        }
        fleet.decided(verdict);
        let at_unix_ms = unix_ms();
        self.decisions.push_back(Decision {
            time: rfc3339(at_unix_ms),
            at_unix_ms,
            step: self.step + 1,
            weight: self.weight(),
            figures: self.figures.clone(),
            verdict,
            reason,
            acked,
        });
    }
}

/// A node's ACK of the route configuration that carries the weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAck {
    /// The version it ACKed last.
    pub acked: Option<String>,
    /// Whether that is the version it is served now.
    pub current: bool,
}

/// What the controller needs of the rest of legate-cp: the state owner implements it.
pub trait Fleet {
    /// The service's versions and their weights as served; `None`: no such service (or
    /// one without versions).
    fn weights(&self, service: &str) -> Option<Vec<(String, u32)>>;
    /// Set the weights as `set-weights` does, recorded as a rollout's change.
    fn set_weights(&mut self, service: &str, weights: &[(String, u32)]) -> Result<(), ChangeError>;
    /// Per connected node serving `service`, its ACK of what it is served now.
    fn acks(&self, service: &str) -> BTreeMap<String, NodeAck>;
    /// The service's load since `since`.
    fn load_since(&self, service: &str, since: Instant) -> ServiceLoad;
    /// Every node ACKed a rollback this long after the failing report.
    fn rolled_back(&self, latency: Duration);
    /// A decision was recorded.
    fn decided(&self, verdict: Verdict);
}

/// What an operator asks of a running rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Abort,
    Promote,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pause" => Some(Action::Pause),
            "resume" => Some(Action::Resume),
            "abort" => Some(Action::Abort),
            "promote" => Some(Action::Promote),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
            Action::Promote => "promote",
        }
    }
}

/// The persisted form.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    format: u32,
    rollouts: Vec<Rollout>,
    /// Per service, the fingerprint of the last mesh `rollout:` block started.
    #[serde(default)]
    declared: BTreeMap<String, String>,
}

/// Every rollout, by service (one per service: a new one replaces a finished one).
#[derive(Debug, Default)]
pub struct Rollouts {
    by_service: BTreeMap<String, Rollout>,
    /// Per service, the fingerprint of the last mesh `rollout:` block started (kept when a
    /// rollout started otherwise replaces it, so the block does not start again).
    declared: BTreeMap<String, String>,
    /// Changed since the last [`save`](Self::save).
    dirty: bool,
}

fn stored_error(path: &Path, message: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!(
        "{}: {message}; legate-cp does not start on rollout state it cannot read: fix the \
         file, or move it away (its rollouts are then in nobody's charge: check the weights \
         of their services)",
        path.display()
    ))
}

impl Rollouts {
    /// Load the rollouts from the data directory (none when there is no file). A file that
    /// does not read or whose rollouts do not check out is refused.
    pub fn load(data_dir: &Path) -> Result<Rollouts, StoreError> {
        let path = data_dir.join(ROLLOUTS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Rollouts::default()),
            Err(e) => {
                return Err(StoreError::Io {
                    path: path.display().to_string(),
                    source: e,
                });
            }
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| stored_error(&path, e))?;
        let mut rollouts = Rollouts::from_value(value).map_err(|e| stored_error(&path, e))?;
        rollouts.take_over("legate-cp restarted");
        Ok(rollouts)
    }

    /// The rollouts as persisted (in the data directory's file, or etcd's shared state).
    pub fn to_value(&self) -> serde_json::Value {
        let stored = Stored {
            format: ROLLOUTS_FORMAT,
            rollouts: self.by_service.values().cloned().collect(),
            declared: self.declared.clone(),
        };
        serde_json::to_value(&stored).unwrap_or(serde_json::Value::Null)
    }

    /// Rollouts as [`to_value`](Self::to_value) wrote them (`null`: none), checked: one that
    /// does not check out is refused whole. Steps start at setting their weights.
    pub fn from_value(value: serde_json::Value) -> Result<Rollouts, String> {
        if value.is_null() {
            return Ok(Rollouts::default());
        }
        let stored: Stored = serde_json::from_value(value).map_err(|e| e.to_string())?;
        if stored.format != ROLLOUTS_FORMAT {
            return Err(format!(
                "format {} is not one this release reads (it writes format {ROLLOUTS_FORMAT})",
                stored.format
            ));
        }
        let mut by_service = BTreeMap::new();
        for mut r in stored.rollouts {
            let name = r.definition.service.clone();
            r.definition
                .check()
                .map_err(|e| format!("rollout of `{name}`: {e}"))?;
            if r.step >= r.definition.steps.len() {
                return Err(format!(
                    "rollout of `{name}`: step {} does not exist",
                    r.step + 1
                ));
            }
            if r.decisions.len() > MAX_DECISIONS {
                let extra = r.decisions.len() - MAX_DECISIONS;
                r.decisions.drain(..extra);
            }
            if by_service.insert(name.clone(), r).is_some() {
                return Err(format!("service `{name}` has two rollouts"));
            }
        }
        Ok(Rollouts {
            by_service,
            declared: stored.declared,
            dirty: false,
        })
    }

    /// Take charge of the rollouts as they were persisted (after a restart, or on becoming
    /// the leader replica, `why`): each one in charge sets its step's weights again and
    /// judges the step afresh.
    pub fn take_over(&mut self, why: &str) {
        for r in self.by_service.values_mut() {
            if r.state.in_charge() {
                r.reason = format!("{why}: {} is set again and judged from now", r.position());
                r.resumed_unix_ms = Some(unix_ms());
                r.phase = Phase::Apply;
                r.rollback_since = None;
            }
        }
    }

    /// Adopt rollouts another replica persisted: a rollout persisted as this one holds it
    /// keeps its place in memory (its step's phase); any other is taken as persisted.
    pub fn adopt(&mut self, stored: Rollouts) {
        let persisted = |r: &Rollout| serde_json::to_value(r).ok();
        let mut by_service = stored.by_service;
        for (service, r) in &mut by_service {
            if let Some(mine) = self.by_service.remove(service)
                && persisted(&mine) == persisted(r)
            {
                *r = mine;
            }
        }
        self.by_service = by_service;
        self.declared = stored.declared;
        self.dirty = false;
    }

    /// Persist, when anything changed since the last call.
    pub fn save(&mut self, data_dir: &Path) -> Result<(), StoreError> {
        if !self.dirty {
            return Ok(());
        }
        let text = serde_json::to_vec_pretty(&self.to_value())
            .map_err(|e| StoreError::Other(e.to_string()))?;
        store::write_atomic(data_dir, ROLLOUTS_FILE, &text)?;
        self.dirty = false;
        Ok(())
    }

    /// Whether anything changed since the last [`save`](Self::save) or
    /// [`saved`](Self::saved).
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Each rollout's state and step, for the audit trail: `payments progressing step 2 of
    /// 3`.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .by_service
            .iter()
            .map(|(service, r)| format!("{service} {} {}", r.state.as_str(), r.position()))
            .collect();
        format!("rollouts: {}", parts.join("; "))
    }

    /// The changes were persisted elsewhere (etcd).
    pub fn saved(&mut self) {
        self.dirty = false;
    }

    /// Whether the mesh block with this fingerprint already started a rollout of `service`.
    pub fn declared_started(&self, service: &str, fingerprint: &str) -> bool {
        self.declared.get(service).map(String::as_str) == Some(fingerprint)
    }

    pub fn get(&self, service: &str) -> Option<&Rollout> {
        self.by_service.get(service)
    }

    pub fn services(&self) -> impl Iterator<Item = &String> {
        self.by_service.keys()
    }

    /// The message refusing a manual weight change to `service`, when a rollout is in
    /// charge of its weights.
    pub fn refuse_manual(&self, service: &str) -> Option<String> {
        let r = self.by_service.get(service)?;
        r.state.in_charge().then(|| {
            format!(
                "service {service} is rolling out ({}); pause or abort it first",
                r.position()
            )
        })
    }

    /// Start a rollout of `definition.service` (replacing a finished one) and set its first
    /// step's weights; `declared`: the fingerprint of the mesh block that asks for it.
    pub fn start(
        &mut self,
        definition: Definition,
        declared: Option<String>,
        fleet: &mut dyn Fleet,
        caller: Option<&str>,
        now: Instant,
    ) -> Result<(), ChangeError> {
        let service = definition.service.clone();
        if let Some(r) = self.by_service.get(&service)
            && r.state.is_active()
        {
            return Err(ChangeError::Precondition(format!(
                "service {service} already has a rollout ({}, {}); abort it first",
                r.state.as_str(),
                r.position()
            )));
        }
        let mut r = Rollout::new(definition);
        if let Some(fingerprint) = &declared {
            self.declared.insert(service.clone(), fingerprint.clone());
        }
        r.declared = declared;
        let by = caller.map_or_else(String::new, |c| format!(" by {c}"));
        r.record(
            fleet,
            Verdict::Manual,
            format!(
                "started{by}: {} → {} in steps {:?}",
                r.definition.from, r.definition.to, r.definition.steps
            ),
        );
        self.by_service.insert(service.clone(), r);
        self.dirty = true;
        self.tick_one(&service, fleet, now);
        // The first step must take: report why it did not, and keep nothing running.
        if let Some(r) = self.by_service.get_mut(&service)
            && matches!(r.phase, Phase::Retry(_))
        {
            let reason = r.reason.clone();
            self.by_service.remove(&service);
            return Err(ChangeError::Invalid(reason));
        }
        Ok(())
    }

    /// Pause, resume, abort or promote the rollout of `service`.
    pub fn steer(
        &mut self,
        service: &str,
        action: Action,
        fleet: &mut dyn Fleet,
        caller: Option<&str>,
        now: Instant,
    ) -> Result<(), ChangeError> {
        let Some(r) = self.by_service.get_mut(service) else {
            return Err(ChangeError::NotFound(format!(
                "service {service} has no rollout"
            )));
        };
        let by = caller.map_or_else(String::new, |c| format!(" by {c}"));
        let refuse = |r: &Rollout| {
            Err(ChangeError::Precondition(format!(
                "cannot {} the rollout of {service}: it is {} ({})",
                action.as_str(),
                r.state.as_str(),
                r.position()
            )))
        };
        match action {
            Action::Pause => {
                if !r.state.in_charge() {
                    return refuse(r);
                }
                r.state = RolloutState::Paused;
                r.phase = Phase::Apply;
                r.reason = format!("paused{by} at {}", r.position());
                let reason = r.reason.clone();
                r.record(fleet, Verdict::Manual, reason);
            }
            Action::Resume => {
                if r.state != RolloutState::Paused {
                    return refuse(r);
                }
                r.state = RolloutState::Progressing;
                r.phase = Phase::Apply;
                r.reason = format!(
                    "resumed{by}: {} is set again and judged from now",
                    r.position()
                );
                let reason = r.reason.clone();
                r.record(fleet, Verdict::Manual, reason);
                self.dirty = true;
                self.tick_one(service, fleet, now);
                return Ok(());
            }
            Action::Abort => {
                if !r.state.is_active() {
                    return refuse(r);
                }
                let reason = format!("aborted{by} at {}", r.position());
                r.record(fleet, Verdict::Manual, reason.clone());
                roll_back(r, fleet, RolloutState::Aborted, reason, now);
            }
            Action::Promote => {
                if !r.state.is_active() {
                    return refuse(r);
                }
                let def = &r.definition;
                let versions = versions_of(fleet, &def.service);
                let weights = def.weights(100, &versions);
                fleet.set_weights(service, &weights)?;
                r.state = RolloutState::Promoted;
                r.reason = format!("promoted{by} from {}", r.position());
                let reason = r.reason.clone();
                r.record(fleet, Verdict::Manual, reason);
            }
        }
        self.dirty = true;
        Ok(())
    }

    /// Whether any rollout waits for ACKs or load (the owner listens for reports and ACKs
    /// only then).
    pub fn is_watching(&self) -> bool {
        self.by_service
            .values()
            .any(|r| r.state.in_charge() || r.rollback_since.is_some())
    }

    /// The next instant a rollout must be looked at without any event: the end of a step's
    /// interval, or a retry.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_service
            .values()
            .filter(|r| r.state.in_charge())
            .filter_map(|r| match r.phase {
                // Once over, the step passes or holds; a held one is judged on reports.
                Phase::Judging(since) if r.state == RolloutState::Progressing => {
                    Some(since + r.definition.interval())
                }
                Phase::Judging(_) => None,
                Phase::Retry(at) => Some(at),
                Phase::Apply => Some(Instant::now()),
                Phase::Acking => None,
            })
            .min()
    }

    /// Move every rollout on as far as it can go now.
    pub fn tick(&mut self, fleet: &mut dyn Fleet, now: Instant) {
        let services: Vec<String> = self.by_service.keys().cloned().collect();
        for service in services {
            self.tick_one(&service, fleet, now);
        }
    }

    fn tick_one(&mut self, service: &str, fleet: &mut dyn Fleet, now: Instant) {
        let Some(r) = self.by_service.get_mut(service) else {
            return;
        };
        if let Some(since) = r.rollback_since {
            let acks = fleet.acks(service);
            if acks.values().all(|a| a.current) {
                let latency = now.saturating_duration_since(since);
                r.rollback_ms = Some(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX));
                r.rollback_since = None;
                fleet.rolled_back(latency);
                tracing::info!(service, rollback_ms = ?r.rollback_ms, "every node ACKed the rollback");
                self.dirty = true;
            }
        }
        // A pass may start the next step, which may be set and ACKed at once (no nodes).
        for _ in 0..=MAX_STEPS {
            if !r.state.in_charge() {
                return;
            }
            let before = (r.state, r.step, r.phase);
            step(r, fleet, now);
            if (r.state, r.step, r.phase) != before {
                self.dirty = true;
            } else {
                return;
            }
        }
    }

    /// The status of one rollout, as the admin API shows it.
    pub fn view(&self, service: &str, fleet: &dyn Fleet) -> Option<serde_json::Value> {
        let r = self.by_service.get(service)?;
        let def = &r.definition;
        let weights: serde_json::Map<String, serde_json::Value> = fleet
            .weights(service)
            .unwrap_or_default()
            .into_iter()
            .map(|(v, w)| (v, w.into()))
            .collect();
        Some(serde_json::json!({
            "service": def.service,
            "from": def.from,
            "to": def.to,
            "state": r.state.as_str(),
            "step": r.step + 1,
            "steps": def.steps,
            "weights": weights,
            "started": rfc3339(r.started_unix_ms),
            "step_started": r.step_started_unix_ms.map(rfc3339),
            "interval_seconds": def.interval().as_secs_f64(),
            "thresholds": {
                "max_error_rate_percent": def.max_error_percent,
                "max_p99_ms": def.max_p99_ms,
                "min_requests": def.min_requests,
            },
            "reason": r.reason,
            "resumed": r.resumed_unix_ms.map(rfc3339),
            "figures": r.figures,
            "not_reporting": r.not_reporting,
            "rollback_ms": r.rollback_ms,
            "decisions": r.decisions,
        }))
    }
}

fn versions_of(fleet: &dyn Fleet, service: &str) -> Vec<String> {
    fleet
        .weights(service)
        .unwrap_or_default()
        .into_iter()
        .map(|(v, _)| v)
        .collect()
}

/// Send everything back to `from` at once and measure until every node has ACKed it.
fn roll_back(
    r: &mut Rollout,
    fleet: &mut dyn Fleet,
    state: RolloutState,
    reason: String,
    since: Instant,
) {
    let def = &r.definition;
    let weights = def.weights(0, &versions_of(fleet, &def.service));
    r.state = state;
    r.reason = reason;
    match fleet.set_weights(&def.service, &weights) {
        Ok(()) => r.rollback_since = Some(since),
        Err(e) => {
            // Nothing else can be done from here: say so where operators look.
            tracing::error!(service = %def.service, error = %e, "cannot roll back");
            r.reason = format!("{}; the rollback's weights were refused: {e}", r.reason);
        }
    }
}

/// One move of a rollout in charge: set the step's weights, see the ACKs in, or judge.
fn step(r: &mut Rollout, fleet: &mut dyn Fleet, now: Instant) {
    let service = r.definition.service.clone();
    match r.phase {
        Phase::Retry(at) if now < at => {}
        Phase::Apply | Phase::Retry(_) => {
            let Some(current) = fleet.weights(&service) else {
                r.state = RolloutState::Aborted;
                r.reason = format!("service {service} no longer exists (or has no versions)");
                return;
            };
            let versions: Vec<String> = current.iter().map(|(v, _)| v.clone()).collect();
            if !versions.contains(&r.definition.to) || !versions.contains(&r.definition.from) {
                r.state = RolloutState::Aborted;
                r.reason = format!(
                    "service {service} no longer has versions {} and {}",
                    r.definition.from, r.definition.to
                );
                return;
            }
            let weights = r.definition.step_weights(r.step, &versions);
            match fleet.set_weights(&service, &weights) {
                Ok(()) => {
                    r.phase = Phase::Acking;
                    r.step_started_unix_ms = None;
                    r.reason = format!(
                        "{}: {} at {}%, waiting for every node to ACK",
                        r.position(),
                        r.definition.to,
                        r.weight()
                    );
                    r.figures.clear();
                }
                Err(e) => {
                    r.phase = Phase::Retry(now + RETRY);
                    r.reason = format!("{}: the weights were refused: {e}", r.position());
                }
            }
        }
        Phase::Acking => {
            let acks = fleet.acks(&service);
            let waiting: Vec<&String> = acks
                .iter()
                .filter(|(_, a)| !a.current)
                .map(|(n, _)| n)
                .collect();
            if waiting.is_empty() {
                r.phase = Phase::Judging(now);
                r.step_started_unix_ms = Some(unix_ms());
                r.reason = format!(
                    "{}: {} at {}%, judged on load since every node ({}) ACKed",
                    r.position(),
                    r.definition.to,
                    r.weight(),
                    acks.len()
                );
            } else {
                let names: Vec<&str> = waiting.iter().take(10).map(|s| s.as_str()).collect();
                let reason = format!(
                    "{}: waiting for {} node(s) to ACK the weights: {}",
                    r.position(),
                    waiting.len(),
                    names.join(", ")
                );
                r.reason = reason;
            }
        }
        Phase::Judging(since) => {
            let load = fleet.load_since(&service, since);
            let def = r.definition.clone();
            r.figures = load
                .versions
                .iter()
                .map(|v| (v.version.clone(), Figures::from(v)))
                .collect();
            let reporting: BTreeSet<&String> = load
                .versions
                .iter()
                .filter(|v| v.version == def.to || v.version == def.from)
                .flat_map(|v| v.nodes.iter())
                .collect();
            r.not_reporting = fleet
                .acks(&service)
                .into_keys()
                .filter(|n| !reporting.contains(n))
                .collect();
            let none = Figures::default();
            let from = r.figures.get(&def.from).unwrap_or(&none).clone();
            let to = r.figures.get(&def.to).unwrap_or(&none).clone();
            match judge(&def, &from, &to, now.saturating_duration_since(since)) {
                Judgement::Wait => {}
                Judgement::Pass(reason) => {
                    r.record(fleet, Verdict::Pass, reason.clone());
                    if r.step + 1 >= def.steps.len() {
                        r.state = RolloutState::Promoted;
                        r.reason = format!("promoted: {reason}");
                        tracing::info!(service, "rollout promoted");
                    } else {
                        r.state = RolloutState::Progressing;
                        r.step += 1;
                        r.phase = Phase::Apply;
                    }
                }
                Judgement::Fail(reason) => {
                    r.record(fleet, Verdict::Fail, reason.clone());
                    tracing::warn!(service, %reason, "rollout failed a check: rolling back");
                    let reason = format!("rolled back at {}: {reason}", r.position());
                    roll_back(r, fleet, RolloutState::RolledBack, reason, now);
                }
                Judgement::Inconclusive(mut reason) => {
                    if !r.not_reporting.is_empty() {
                        let names: Vec<&str> = r
                            .not_reporting
                            .iter()
                            .take(10)
                            .map(String::as_str)
                            .collect();
                        reason.push_str(&format!("; not reporting: {}", names.join(", ")));
                    }
                    if r.state != RolloutState::Holding {
                        r.state = RolloutState::Holding;
                        r.record(fleet, Verdict::Inconclusive, reason.clone());
                    }
                    r.reason = format!("holding at {}: {reason}", r.position());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> Definition {
        Definition {
            service: "payments".into(),
            from: "v1".into(),
            to: "v2".into(),
            steps: vec![5, 25, 50, 100],
            interval_ms: 30_000,
            max_error_percent: 1.0,
            max_p99_ms: Some(250.0),
            min_requests: 100,
        }
    }

    fn figures(requests: u64, errors: u64, p99: Option<f64>) -> Figures {
        Figures {
            requests,
            errors,
            error_percent: (requests > 0).then(|| errors as f64 * 100.0 / requests as f64),
            p50_ms: None,
            p99_ms: p99,
            nodes_reporting: 1,
        }
    }

    const EARLY: Duration = Duration::from_secs(10);
    const OVER: Duration = Duration::from_secs(30);

    fn verdict(j: &Judgement) -> &'static str {
        match j {
            Judgement::Wait => "wait",
            Judgement::Pass(_) => "pass",
            Judgement::Fail(_) => "fail",
            Judgement::Inconclusive(_) => "inconclusive",
        }
    }

    #[test]
    fn judging_rules() {
        let d = def();
        let healthy = figures(1000, 1, Some(100.0));
        // (from, to, elapsed, expected)
        let table = [
            // Too few requests: wait, then inconclusive; never a pass on silence.
            (healthy.clone(), figures(99, 0, Some(10.0)), EARLY, "wait"),
            (
                healthy.clone(),
                figures(99, 0, Some(10.0)),
                OVER,
                "inconclusive",
            ),
            (healthy.clone(), figures(0, 0, None), OVER, "inconclusive"),
            // Too few requests: even many errors do not fail (the sample guards).
            (healthy.clone(), figures(50, 50, None), EARLY, "wait"),
            // Enough requests, errors over the threshold: fail at once, interval or not.
            (healthy.clone(), figures(100, 2, Some(10.0)), EARLY, "fail"),
            (healthy.clone(), figures(100, 20, Some(10.0)), OVER, "fail"),
            // At the threshold is not over it.
            (healthy.clone(), figures(100, 1, Some(10.0)), OVER, "pass"),
            (healthy.clone(), figures(100, 1, Some(10.0)), EARLY, "wait"),
            // p99 over the threshold fails; no latency reported is judged on errors alone.
            (healthy.clone(), figures(100, 0, Some(300.0)), EARLY, "fail"),
            (healthy.clone(), figures(100, 0, None), OVER, "pass"),
            // The stable version fails as much (enough requests): not the canary's fault.
            (
                figures(1000, 50, Some(10.0)),
                figures(100, 5, Some(10.0)),
                EARLY,
                "wait",
            ),
            (
                figures(1000, 50, Some(10.0)),
                figures(100, 5, Some(10.0)),
                OVER,
                "inconclusive",
            ),
            // ...but with too few requests to the stable one, the canary fails.
            (
                figures(10, 5, Some(10.0)),
                figures(100, 5, Some(10.0)),
                EARLY,
                "fail",
            ),
            // Stable fails less: fail.
            (
                figures(1000, 10, Some(10.0)),
                figures(100, 5, Some(10.0)),
                EARLY,
                "fail",
            ),
            // The same for latency.
            (
                figures(1000, 0, Some(400.0)),
                figures(100, 0, Some(300.0)),
                OVER,
                "inconclusive",
            ),
            (
                figures(1000, 0, Some(200.0)),
                figures(100, 0, Some(300.0)),
                OVER,
                "fail",
            ),
        ];
        for (i, (from, to, elapsed, want)) in table.iter().enumerate() {
            let got = judge(&d, from, to, *elapsed);
            assert_eq!(verdict(&got), *want, "case {i}: {got:?}");
        }
        let mut no_latency = def();
        no_latency.max_p99_ms = None;
        let got = judge(&no_latency, &healthy, &figures(100, 0, Some(9e9)), OVER);
        assert_eq!(verdict(&got), "pass", "{got:?}");
    }

    #[test]
    fn requests_are_validated() {
        let weights = vec![
            ("v1".to_owned(), 90),
            ("v2".to_owned(), 10),
            ("v3".to_owned(), 0),
        ];
        let req = || StartRequest {
            to: "v2".into(),
            from: None,
            steps: vec![5, 25, 50, 100],
            interval: "30s".into(),
            max_error_rate: Rate("1%".into()),
            max_p99: Some("250ms".into()),
            min_requests: 100,
        };
        let d = req().definition("payments", &weights).expect("valid");
        assert_eq!((d.from.as_str(), d.interval_ms), ("v1", 30_000));
        assert_eq!((d.max_error_percent, d.max_p99_ms), (1.0, Some(250.0)));
        assert_eq!(
            d.step_weights(1, &["v1".into(), "v2".into(), "v3".into()]),
            vec![("v1".into(), 75), ("v2".into(), 25), ("v3".into(), 0)]
        );
        let bad: Vec<(StartRequest, &str)> = vec![
            (
                StartRequest {
                    to: "v9".into(),
                    ..req()
                },
                "no version `v9`",
            ),
            (
                StartRequest {
                    from: Some("v2".into()),
                    ..req()
                },
                "the same version",
            ),
            (
                StartRequest {
                    from: Some("v0".into()),
                    ..req()
                },
                "no version `v0`",
            ),
            (
                StartRequest {
                    steps: vec![],
                    ..req()
                },
                "steps",
            ),
            (
                StartRequest {
                    steps: vec![50, 25, 100],
                    ..req()
                },
                "ascending",
            ),
            (
                StartRequest {
                    steps: vec![0, 100],
                    ..req()
                },
                "above 0",
            ),
            (
                StartRequest {
                    steps: vec![5, 50],
                    ..req()
                },
                "last step must be 100",
            ),
            (
                StartRequest {
                    steps: vec![5, 101],
                    ..req()
                },
                "last step must be 100",
            ),
            (
                StartRequest {
                    interval: "0s".into(),
                    ..req()
                },
                "interval",
            ),
            (
                StartRequest {
                    interval: "2d".into(),
                    ..req()
                },
                "interval",
            ),
            (
                StartRequest {
                    interval: "soon".into(),
                    ..req()
                },
                "interval",
            ),
            (
                StartRequest {
                    max_error_rate: Rate("101%".into()),
                    ..req()
                },
                "max_error_rate",
            ),
            (
                StartRequest {
                    max_error_rate: Rate("NaN".into()),
                    ..req()
                },
                "max_error_rate",
            ),
            (
                StartRequest {
                    max_p99: Some("fast".into()),
                    ..req()
                },
                "max_p99",
            ),
            (
                StartRequest {
                    min_requests: 0,
                    ..req()
                },
                "never promotes on silence",
            ),
        ];
        for (r, want) in bad {
            let e = r.definition("payments", &weights).expect_err(want);
            assert!(e.contains(want), "{e:?} should say {want:?}");
        }
        // The default `from` is the heaviest version other than `to`; ties go by name.
        let tie = vec![
            ("b".to_owned(), 50),
            ("a".to_owned(), 50),
            ("c".to_owned(), 0),
        ];
        let d = StartRequest {
            to: "c".into(),
            ..req()
        }
        .definition("s", &tie)
        .expect("valid");
        assert_eq!(d.from, "a");
        // Rates as JSON: a string with or without `%`, or a number.
        for body in [r#""1%""#, r#""1""#, "1", "1.0"] {
            let rate: Rate = serde_json::from_str(body).expect("a rate");
            assert_eq!(parse_percent(&rate.0), Ok(1.0), "{body}");
        }
    }

    /// A fleet in memory: weights as set, nodes that ACK when told to.
    #[derive(Default)]
    struct FakeFleet {
        weights: Vec<(String, u32)>,
        /// node → whether it has ACKed what it is served.
        nodes: BTreeMap<String, bool>,
        load: BTreeMap<String, Figures>,
        sets: usize,
    }

    impl Fleet for FakeFleet {
        fn weights(&self, _: &str) -> Option<Vec<(String, u32)>> {
            Some(self.weights.clone())
        }
        fn set_weights(&mut self, _: &str, w: &[(String, u32)]) -> Result<(), ChangeError> {
            self.weights = w.to_vec();
            self.sets += 1;
            for acked in self.nodes.values_mut() {
                *acked = false;
            }
            Ok(())
        }
        fn acks(&self, _: &str) -> BTreeMap<String, NodeAck> {
            self.nodes
                .iter()
                .map(|(n, c)| {
                    let ack = NodeAck {
                        acked: Some(format!("r{}", self.sets - usize::from(!*c))),
                        current: *c,
                    };
                    (n.clone(), ack)
                })
                .collect()
        }
        fn load_since(&self, service: &str, _: Instant) -> ServiceLoad {
            ServiceLoad {
                service: service.to_owned(),
                window_seconds: 1.0,
                versions: self
                    .load
                    .iter()
                    .map(|(v, f)| VersionLoad {
                        version: v.clone(),
                        cluster: format!("{service}-{v}"),
                        load: crate::load_report::Load {
                            issued: f.requests,
                            succeeded: f.requests - f.errors,
                            errored: f.errors,
                            ..Default::default()
                        },
                        in_progress: 0,
                        requests_per_second: 0.0,
                        error_percent: f.error_percent,
                        p50_ms: f.p50_ms,
                        p99_ms: f.p99_ms,
                        nodes_reporting: 1,
                        nodes: BTreeSet::from(["n1".to_owned()]),
                    })
                    .collect(),
            }
        }
        fn rolled_back(&self, _: Duration) {}
        fn decided(&self, _: Verdict) {}
    }

    fn ack_all(f: &mut FakeFleet) {
        for acked in f.nodes.values_mut() {
            *acked = true;
        }
    }

    #[test]
    fn a_rollout_waits_for_acks_then_promotes_step_by_step_and_rolls_back_on_failure() {
        let mut fleet = FakeFleet {
            weights: vec![("v1".into(), 100), ("v2".into(), 0)],
            nodes: BTreeMap::from([("n1".into(), true), ("n2".into(), true)]),
            ..Default::default()
        };
        let mut d = def();
        d.steps = vec![10, 100];
        let mut rollouts = Rollouts::default();
        let t0 = Instant::now();
        rollouts
            .start(d.clone(), None, &mut fleet, Some("test"), t0)
            .expect("started");
        assert_eq!(fleet.weights, vec![("v1".into(), 90), ("v2".into(), 10)]);
        assert!(
            rollouts
                .refuse_manual("payments")
                .expect("refused")
                .contains("step 1 of 2")
        );
        // A second start is refused while it runs.
        let again = rollouts.start(d.clone(), None, &mut fleet, None, t0);
        assert!(
            matches!(again, Err(ChangeError::Precondition(_))),
            "{again:?}"
        );
        // Healthy load, but the nodes have not ACKed: nothing is judged.
        fleet.load.insert("v1".into(), figures(900, 0, Some(10.0)));
        fleet.load.insert("v2".into(), figures(200, 0, Some(10.0)));
        rollouts.tick(&mut fleet, t0 + OVER * 2);
        assert_eq!(rollouts.get("payments").map(|r| r.step), Some(0));
        assert!(
            rollouts
                .get("payments")
                .is_some_and(|r| r.reason.contains("waiting for 2"))
        );
        ack_all(&mut fleet);
        let acked = t0 + OVER * 2;
        rollouts.tick(&mut fleet, acked);
        // Judged from the ACK: before the interval, a wait; after it, the next step.
        rollouts.tick(&mut fleet, acked + EARLY);
        assert_eq!(rollouts.get("payments").map(|r| r.step), Some(0));
        rollouts.tick(&mut fleet, acked + OVER);
        assert_eq!(rollouts.get("payments").map(|r| r.step), Some(1));
        assert_eq!(fleet.weights, vec![("v1".into(), 0), ("v2".into(), 100)]);
        ack_all(&mut fleet);
        let acked = acked + OVER;
        rollouts.tick(&mut fleet, acked);
        // The last step fails: everything back to v1 at once, measured until the ACKs.
        fleet.load.insert("v2".into(), figures(200, 40, Some(10.0)));
        rollouts.tick(&mut fleet, acked + EARLY);
        let r = rollouts.get("payments").expect("rollout");
        assert_eq!(r.state, RolloutState::RolledBack);
        assert_eq!(fleet.weights, vec![("v1".into(), 100), ("v2".into(), 0)]);
        assert_eq!(r.rollback_ms, None);
        let verdicts: Vec<Verdict> = r.decisions.iter().map(|d| d.verdict).collect();
        assert_eq!(verdicts, [Verdict::Manual, Verdict::Pass, Verdict::Fail]);
        assert_eq!(r.decisions[2].acked.len(), 2);
        assert_eq!(r.decisions[2].figures["v2"].errors, 40);
        ack_all(&mut fleet);
        rollouts.tick(&mut fleet, acked + EARLY + Duration::from_millis(300));
        let r = rollouts.get("payments").expect("rollout");
        assert_eq!(r.rollback_ms, Some(300));
        assert!(rollouts.refuse_manual("payments").is_none());
        // Finished: a new rollout may start.
        rollouts
            .start(d, None, &mut fleet, None, acked + OVER)
            .expect("a new rollout");
    }

    #[test]
    fn silence_holds_and_restart_resumes_at_the_same_step() {
        let mut fleet = FakeFleet {
            weights: vec![("v1".into(), 100), ("v2".into(), 0)],
            nodes: BTreeMap::from([("n1".into(), true)]),
            ..Default::default()
        };
        let mut rollouts = Rollouts::default();
        let t0 = Instant::now();
        rollouts
            .start(def(), None, &mut fleet, None, t0)
            .expect("started");
        ack_all(&mut fleet);
        rollouts.tick(&mut fleet, t0);
        fleet.load.insert("v1".into(), figures(500, 0, None));
        fleet.load.insert("v2".into(), figures(500, 0, None));
        rollouts.tick(&mut fleet, t0 + OVER);
        ack_all(&mut fleet);
        rollouts.tick(&mut fleet, t0 + OVER);
        assert_eq!(rollouts.get("payments").map(|r| r.step), Some(1));
        // No traffic at all: holding, however long, with one inconclusive decision.
        fleet.load.clear();
        for s in 0..10 {
            rollouts.tick(&mut fleet, t0 + OVER * (2 + s));
        }
        let r = rollouts.get("payments").expect("rollout");
        assert_eq!((r.state, r.step), (RolloutState::Holding, 1));
        assert_eq!(
            r.decisions.back().map(|d| d.verdict),
            Some(Verdict::Inconclusive)
        );
        assert!(r.reason.contains("too few requests"), "{}", r.reason);
        // Held, it waits for reports: no deadline keeps waking the owner.
        assert_eq!(rollouts.next_deadline(), None);
        // Saved and loaded: the same step, set again.
        let dir = std::env::temp_dir().join(format!("legate-rollouts-{}", fastrand::u64(..)));
        rollouts.save(&dir).expect("saved");
        let mut loaded = Rollouts::load(&dir).expect("loaded");
        let sets = fleet.sets;
        loaded.tick(&mut fleet, t0);
        let r = loaded.get("payments").expect("rollout");
        assert_eq!((r.state, r.step), (RolloutState::Holding, 1));
        assert_eq!(fleet.sets, sets + 1);
        assert_eq!(fleet.weights, vec![("v1".into(), 75), ("v2".into(), 25)]);
        // A corrupt file is refused, naming the file.
        std::fs::write(dir.join(ROLLOUTS_FILE), "{\"format\": 1, \"rollouts\": [").expect("write");
        let e = Rollouts::load(&dir).expect_err("corrupt").to_string();
        assert!(
            e.contains(ROLLOUTS_FILE) && e.contains("does not start"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
