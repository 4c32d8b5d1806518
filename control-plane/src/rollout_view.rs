//! How `legatectl canary status --watch` shows a rollout: [`render`] turns the status JSON
//! of `GET /v1/rollouts/{service}` into a frame of text (the step, the weights as bars, the
//! figures per version, the last decisions), and [`watch`] fetches the status every second
//! and shows each frame until the rollout ends.
//!
//! Rendering is a pure function of the JSON, so it is tested without a control plane. It
//! reads the JSON leniently: a field that is missing or of another type is shown as `-`,
//! since the frame is for eyes and the JSON is the contract (`-o json`).

use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

use serde_json::Value;

/// Cells of a weight bar at 100 %.
const BAR_CELLS: u64 = 20;
/// Decisions shown, the latest last.
const DECISIONS_SHOWN: usize = 5;
/// Nodes named in the ACK line; the others are counted.
const NODES_SHOWN: usize = 6;
/// Characters of a reason shown (a reason is written by the control plane, but bounded here
/// so that one long line cannot push the frame off the screen).
const REASON_CHARS: usize = 160;

/// ANSI: cursor home, then clear the screen, so each frame replaces the last one.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// `promoted`, `rolled_back` and `aborted` end a rollout; the other states do not.
pub fn is_final(status: &Value) -> bool {
    matches!(
        status["state"].as_str(),
        Some("promoted" | "rolled_back" | "aborted")
    )
}

/// One frame: the rollout `status` as text, ending with a newline. It holds nothing that
/// changes with the clock alone, so two equal frames mean nothing changed.
pub fn render(status: &Value) -> String {
    let mut out = String::new();
    let from = text(&status["from"]);
    let to = text(&status["to"]);
    let steps: Vec<u64> = status["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    let step = status["step"].as_u64();
    let step_text = match (step, steps.len()) {
        (Some(s), n) if n > 0 => {
            let weight = usize::try_from(s)
                .ok()
                .and_then(|s| s.checked_sub(1))
                .and_then(|i| steps.get(i));
            match weight {
                Some(w) => format!("step {s}/{n} ({to} at {w} %)"),
                None => format!("step {s}/{n}"),
            }
        }
        _ => "step -".to_owned(),
    };
    let _ = writeln!(
        out,
        "{}: {from} -> {to}   {}   {step_text}   every {}",
        text(&status["service"]),
        text(&status["state"]),
        seconds(&status["interval_seconds"]),
    );
    let thresholds = &status["thresholds"];
    let _ = writeln!(
        out,
        "judged on: error rate at most {}, p99 at most {}, at least {} requests to {to}",
        percent(&thresholds["max_error_rate_percent"]),
        millis(&thresholds["max_p99_ms"]),
        text(&thresholds["min_requests"]),
    );
    let _ = writeln!(out, "reason: {}", bounded(&text(&status["reason"])));
    if let Some(ms) = status["rollback_ms"].as_u64() {
        let _ = writeln!(
            out,
            "rollback: every node ACKed it {ms} ms after the failing report"
        );
    }

    out.push_str("\nweights\n");
    let weights = status["weights"].as_object();
    let versions = ordered_versions(status, &from, &to);
    for version in &versions {
        let weight = weights.and_then(|w| w.get(version)).and_then(Value::as_u64);
        let _ = writeln!(
            out,
            "  {version:<8} {} {}",
            bar(weight),
            weight.map_or_else(|| "-".to_owned(), |w| format!("{w:>3} %"))
        );
    }

    // The figures judged last: the status's own, else the last decision's.
    let decisions: Vec<&Value> = status["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let figures = status["figures"]
        .as_object()
        .filter(|f| !f.is_empty())
        .or_else(|| decisions.last().and_then(|d| d["figures"].as_object()));
    out.push_str("\nfigures (this step)\n");
    let _ = writeln!(
        out,
        "  {:<8} {:>9} {:>7} {:>8} {:>9} {:>9} {:>6}",
        "VERSION", "REQUESTS", "ERRORS", "ERROR %", "P50 MS", "P99 MS", "NODES"
    );
    for version in &versions {
        let f = figures.and_then(|f| f.get(version)).unwrap_or(&Value::Null);
        let _ = writeln!(
            out,
            "  {version:<8} {:>9} {:>7} {:>8} {:>9} {:>9} {:>6}",
            text(&f["requests"]),
            text(&f["errors"]),
            fixed(&f["error_percent"], 2),
            fixed(&f["p50_ms"], 1),
            fixed(&f["p99_ms"], 1),
            text(&f["nodes_reporting"]),
        );
    }
    let not_reporting: Vec<String> = status["not_reporting"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    if !not_reporting.is_empty() {
        let _ = writeln!(out, "  not reporting: {}", names(&not_reporting));
    }

    let shown = decisions.len().min(DECISIONS_SHOWN);
    let _ = writeln!(
        out,
        "\ndecisions ({shown} of {}, latest last)",
        decisions.len()
    );
    for d in &decisions[decisions.len() - shown..] {
        let _ = writeln!(
            out,
            "  {}  step {:<2} {:>3} %  {:<12} {}",
            clock(&d["time"]),
            text(&d["step"]),
            text(&d["weight"]),
            text(&d["verdict"]),
            bounded(&text(&d["reason"])),
        );
    }
    if let Some(acked) = decisions.last().and_then(|d| d["acked"].as_object()) {
        let acks: Vec<String> = acked
            .iter()
            .map(|(node, version)| format!("{node}={}", text(version)))
            .collect();
        let _ = writeln!(out, "  ACKed at the last decision: {}", names(&acks));
    }
    out
}

/// Versions in the order they are read: `from`, `to`, then any other the status names.
fn ordered_versions(status: &Value, from: &str, to: &str) -> Vec<String> {
    let mut versions = vec![from.to_owned(), to.to_owned()];
    let others = status["weights"]
        .as_object()
        .into_iter()
        .flat_map(|w| w.keys())
        .chain(
            status["figures"]
                .as_object()
                .into_iter()
                .flat_map(|f| f.keys()),
        );
    for v in others {
        if !versions.contains(v) {
            versions.push(v.clone());
        }
    }
    versions.retain(|v| v != "-");
    versions
}

/// `[#####---------------]`: the share of `BAR_CELLS` a weight fills, rounded to the nearest
/// cell (weights above 100 fill it).
fn bar(weight: Option<u64>) -> String {
    let filled = weight.map_or(0, |w| (w.min(100) * BAR_CELLS + 50) / 100);
    let filled = usize::try_from(filled).unwrap_or(0);
    let cells = usize::try_from(BAR_CELLS).unwrap_or(0);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(cells - filled))
}

/// A string as is, a number or boolean as JSON writes it, anything else `-`.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => "-".to_owned(),
    }
}

fn fixed(v: &Value, decimals: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |f| format!("{f:.decimals$}"))
}

fn percent(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |f| format!("{f} %"))
}

fn millis(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "- (not judged)".to_owned(), |f| format!("{f} ms"))
}

fn seconds(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |f| format!("{f}s"))
}

/// `HH:MM:SS` of an RFC 3339 time (UTC as the control plane writes it); other text as is.
fn clock(v: &Value) -> String {
    let t = text(v);
    match t.get(11..19) {
        Some(hms) if t.as_bytes().get(10) == Some(&b'T') => hms.to_owned(),
        _ => t,
    }
}

fn bounded(s: &str) -> String {
    if s.chars().count() <= REASON_CHARS {
        return s.to_owned();
    }
    let mut cut: String = s.chars().take(REASON_CHARS).collect();
    cut.push_str("...");
    cut
}

/// The first [`NODES_SHOWN`] names, and how many more.
fn names(all: &[String]) -> String {
    let mut s = all
        .iter()
        .take(NODES_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if all.len() > NODES_SHOWN {
        let _ = write!(s, " and {} more", all.len() - NODES_SHOWN);
    }
    s
}

/// Why [`watch`] stopped early.
#[derive(Debug, thiserror::Error)]
pub enum WatchError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Fetch(E),
    #[error("cannot write the frame: {0}")]
    Write(#[from] std::io::Error),
}

/// Fetches the status every `period` and shows it until the rollout ends; returns the last
/// status. On a terminal each frame replaces the last one (the screen is cleared); otherwise
/// a frame is printed only when it differs from the one before, followed by a blank line.
/// Ctrl-C ends it as any command: nothing on the terminal needs restoring.
pub async fn watch<F, Fut, E>(
    mut fetch: F,
    out: &mut dyn std::io::Write,
    terminal: bool,
    period: Duration,
) -> Result<Value, WatchError<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Value, E>>,
    E: std::error::Error + 'static,
{
    let mut last = String::new();
    loop {
        let status = fetch().await.map_err(WatchError::Fetch)?;
        let frame = render(&status);
        if terminal {
            write!(out, "{CLEAR}{frame}")?;
        } else if frame != last {
            writeln!(out, "{frame}")?;
        }
        out.flush()?;
        last = frame;
        if is_final(&status) {
            return Ok(status);
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status() -> Value {
        json!({
            "service": "payments",
            "from": "v1",
            "to": "v2",
            "state": "progressing",
            "step": 2,
            "steps": [10, 50, 100],
            "weights": {"v1": 50, "v2": 50},
            "started": "2026-12-07T13:00:00Z",
            "step_started": "2026-12-07T13:00:12Z",
            "interval_seconds": 10.0,
            "thresholds": {"max_error_rate_percent": 1.0, "max_p99_ms": 250.0, "min_requests": 20},
            "reason": "step 2 of 3: v2 at 50%, judged on load since every node (2) ACKed",
            "figures": {
                "v1": {"requests": 120, "errors": 0, "error_percent": 0.0, "p50_ms": 12.5,
                       "p99_ms": 48.0, "nodes_reporting": 2},
                "v2": {"requests": 118, "errors": 1, "error_percent": 0.847, "p50_ms": null,
                       "p99_ms": null, "nodes_reporting": 2}
            },
            "not_reporting": [],
            "rollback_ms": null,
            "decisions": [{
                "time": "2026-12-07T13:00:11Z", "step": 1, "weight": 10,
                "figures": {}, "verdict": "pass",
                "reason": "31 requests to v2 over 10s: error rate 0.00%, p99 40.0 ms",
                "acked": {"envoy-1": "7", "legate-1": "7"}
            }]
        })
    }

    #[test]
    fn renders_a_progressing_rollout() {
        let expected = "\
payments: v1 -> v2   progressing   step 2/3 (v2 at 50 %)   every 10s
judged on: error rate at most 1 %, p99 at most 250 ms, at least 20 requests to v2
reason: step 2 of 3: v2 at 50%, judged on load since every node (2) ACKed

weights
  v1       [##########----------]  50 %
  v2       [##########----------]  50 %

figures (this step)
  VERSION   REQUESTS  ERRORS  ERROR %    P50 MS    P99 MS  NODES
  v1             120       0     0.00      12.5      48.0      2
  v2             118       1     0.85         -         -      2

decisions (1 of 1, latest last)
  13:00:11  step 1   10 %  pass         31 requests to v2 over 10s: error rate 0.00%, p99 40.0 ms
  ACKed at the last decision: envoy-1=7, legate-1=7
";
        assert_eq!(render(&status()), expected);
    }

    #[test]
    fn bars_round_to_the_nearest_cell() {
        for (weight, filled) in [
            (Some(0), 0),
            (Some(2), 0),
            (Some(3), 1),
            (Some(5), 1),
            (Some(10), 2),
            (Some(97), 19),
            (Some(98), 20),
            (Some(100), 20),
            (Some(u64::MAX), 20),
            (None, 0),
        ] {
            let b = bar(weight);
            assert_eq!(b.len(), 22, "{weight:?}: {b}");
            assert_eq!(b.matches('#').count(), filled, "{weight:?}: {b}");
        }
    }

    #[test]
    fn shows_the_rollback_and_who_is_not_reporting() {
        let mut s = status();
        s["state"] = json!("rolled_back");
        s["weights"] = json!({"v1": 100, "v2": 0});
        s["rollback_ms"] = json!(840);
        s["not_reporting"] = json!(["envoy-2"]);
        let frame = render(&s);
        assert!(frame.contains("   rolled_back   "), "{frame}");
        assert!(
            frame.contains("rollback: every node ACKed it 840 ms after the failing report"),
            "{frame}"
        );
        assert!(
            frame.contains("  v2       [--------------------]   0 %"),
            "{frame}"
        );
        assert!(frame.contains("  not reporting: envoy-2\n"), "{frame}");
        assert!(is_final(&s));
        assert!(!is_final(&status()));
    }

    #[test]
    fn shows_the_last_decisions_and_the_last_figures() {
        let mut s = status();
        s["figures"] = json!({});
        let decisions: Vec<Value> = (1..=8)
            .map(|i| {
                json!({"time": format!("2026-12-07T13:00:0{i}Z"), "step": 1, "weight": 10,
                       "verdict": "inconclusive", "reason": format!("decision {i}"),
                       "figures": {"v2": {"requests": i, "nodes_reporting": 1}},
                       "acked": {}})
            })
            .collect();
        s["decisions"] = Value::Array(decisions);
        let frame = render(&s);
        assert!(frame.contains("decisions (5 of 8, latest last)"), "{frame}");
        assert!(!frame.contains("decision 3\n"), "{frame}");
        assert!(
            frame.contains("decision 4\n") && frame.contains("decision 8\n"),
            "{frame}"
        );
        // The figures fall back to the last decision's.
        assert!(frame.contains("  v2               8       -"), "{frame}");
    }

    #[test]
    fn odd_or_missing_fields_render_as_dashes() {
        let frame = render(
            &json!({"service": "payments", "step": "two", "steps": [1, -5],
                                   "weights": [1, 2], "decisions": {"x": 1},
                                   "reason": "r".repeat(1000)}),
        );
        assert!(
            frame.starts_with("payments: - -> -   -   step -   every -\n"),
            "{frame}"
        );
        assert!(frame.contains("decisions (0 of 0, latest last)"), "{frame}");
        let reason = frame
            .lines()
            .find(|l| l.starts_with("reason: "))
            .unwrap_or_default();
        assert_eq!(reason.len(), "reason: ".len() + REASON_CHARS + 3, "{frame}");
        // A step beyond the list has no weight to show.
        let frame = render(&json!({"step": 9, "steps": [10, 100]}));
        assert!(frame.contains("step 9/2   "), "{frame}");
        assert_eq!(render(&Value::Null).lines().count(), 10);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("no more")]
    struct NoMore;

    /// A watch fed a scripted series of statuses: not on a terminal it prints each distinct
    /// frame once and stops at the final state; on a terminal it redraws every time.
    #[tokio::test(start_paused = true)]
    async fn watch_prints_each_change_and_stops_at_the_end() {
        let mut done = status();
        done["state"] = json!("promoted");
        done["step"] = json!(3);
        let script = vec![status(), status(), status(), done.clone()];

        for terminal in [false, true] {
            let mut feed = script.clone().into_iter();
            let mut out = Vec::new();
            let last = watch(
                || {
                    let next = feed.next().ok_or(NoMore);
                    async move { next }
                },
                &mut out,
                terminal,
                Duration::from_secs(1),
            )
            .await
            .unwrap_or_else(|e| panic!("watch: {e}"));
            assert_eq!(last, done);
            let out = String::from_utf8(out).unwrap_or_default();
            let frames = out.matches("payments: v1 -> v2").count();
            if terminal {
                assert_eq!(frames, 4, "{out}");
                assert_eq!(out.matches(CLEAR).count(), 4, "{out}");
            } else {
                assert_eq!(frames, 2, "{out}");
                assert!(!out.contains('\x1b'), "{out}");
                assert!(out.ends_with("legate-1=7\n\n"), "{out}");
            }
        }

        // A status that cannot be fetched ends the watch with that error.
        let mut out = Vec::new();
        let r = watch(
            || async { Err::<Value, _>(NoMore) },
            &mut out,
            false,
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(r, Err(WatchError::Fetch(NoMore))));
    }
}
