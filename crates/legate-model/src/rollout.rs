//! The rules of a canary rollout's values, shared by the mesh's `rollout:` block (checked
//! here with the rest of the model) and legate-cp's admin API (which takes the same values
//! from a request): steps, interval, error rate.

use std::time::Duration;

/// Steps a rollout may have.
pub const MAX_STEPS: usize = 100;
/// The longest step interval.
pub const MAX_INTERVAL: Duration = Duration::from_secs(86_400);

/// What is wrong with a rollout's `steps` (percent of traffic to the new version at each
/// step), if anything: 1 to [`MAX_STEPS`] of them, ascending, above 0, the last 100.
pub fn steps_problem(steps: &[u32]) -> Option<String> {
    if steps.is_empty() || steps.len() > MAX_STEPS {
        return Some(format!("give 1 to {MAX_STEPS} percentages"));
    }
    if steps.windows(2).any(|w| w[0] >= w[1]) || steps[0] == 0 {
        return Some(format!(
            "percentages must be ascending and above 0, got {steps:?}"
        ));
    }
    if steps.last() != Some(&100) {
        return Some(format!("the last step must be 100, got {steps:?}"));
    }
    None
}

/// What is wrong with a step interval, if anything: above 0, at most [`MAX_INTERVAL`].
pub fn interval_problem(interval: Duration) -> Option<String> {
    (interval.is_zero() || interval > MAX_INTERVAL).then(|| {
        format!(
            "must be above 0 and at most {}",
            crate::units::format_duration(MAX_INTERVAL)
        )
    })
}

/// A percentage: `1%`, `0.5 %` or `1` → 1.0, 0.5, 1.0; from 0 to 100.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let number = t.strip_suffix('%').unwrap_or(t).trim();
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && (0.0..=100.0).contains(n))
        .ok_or_else(|| format!("'{s}' is not a percentage from 0% to 100%"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert_eq!(steps_problem(&[5, 25, 50, 100]), None);
        assert_eq!(steps_problem(&[100]), None);
        for bad in [
            &[][..],
            &[50, 25, 100],
            &[0, 100],
            &[5, 50],
            &[5, 101],
            &[5, 5, 100],
        ] {
            assert!(steps_problem(bad).is_some(), "{bad:?}");
        }
        assert_eq!(interval_problem(Duration::from_secs(30)), None);
        assert!(interval_problem(Duration::ZERO).is_some());
        assert!(interval_problem(MAX_INTERVAL + Duration::from_secs(1)).is_some());
        assert_eq!(parse_percent("1%"), Ok(1.0));
        assert_eq!(parse_percent(" 0.5 % "), Ok(0.5));
        assert_eq!(parse_percent("1"), Ok(1.0));
        for bad in ["101%", "-1%", "NaN", "inf", "", "%", "one"] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rollout_block_is_checked_with_positions() {
        let mesh = |block: &str| {
            format!(
                "services:
  - name: payments
    versions:
      - {{name: v1, weight: 100, endpoints: [{{address: 127.0.0.1:1}}]}}
      - {{name: v2, weight: 0, endpoints: [{{address: 127.0.0.1:2}}]}}
    rollout: {block}
"
            )
        };
        let good = mesh(
            "{to: v2, steps: [5, 50, 100], interval: 30s, max_error_rate: 1%, max_p99: 250ms, \
             min_requests: 100}",
        );
        let m = crate::load_files([("mesh.yaml", good.as_str())]).expect("valid");
        let r = m.services[0].rollout.as_ref().expect("the block");
        assert_eq!(
            (r.to.as_str(), r.interval),
            ("v2", Some(Duration::from_secs(30)))
        );
        let bad =
            mesh("{to: v3, from: v1, steps: [50, 25], max_error_rate: lots, min_requests: 0}");
        let errors: Vec<String> = crate::load_files([("mesh.yaml", bad.as_str())])
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect();
        let want = [
            "services[0].rollout.to: service `payments` has no version `v3`",
            "services[0].rollout.steps: percentages must be ascending",
            "services[0].rollout.interval: required",
            "services[0].rollout.max_error_rate: 'lots' is not a percentage",
            "services[0].rollout.min_requests: must be at least 1",
        ];
        for w in want {
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with("mesh.yaml:6:") && e.contains(w)),
                "{w} in {errors:#?}"
            );
        }
        let unknown = mesh(
            "{to: v2, steps: [100], interval: 1s, max_error_rate: 1%, min_requests: 1, when: now}",
        );
        let e = crate::load_files([("mesh.yaml", unknown.as_str())]).expect_err("unknown field");
        assert!(e[0].to_string().contains("when"), "{e:?}");
    }
}
