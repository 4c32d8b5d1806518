//! Reading Prometheus text exposition in tests, and checking it with `promtool`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape; keeps the text for assertion messages.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses Prometheus text format; panics on a malformed sample line, quoting it.
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                parse_sample(line).unwrap_or_else(|error| {
                    panic!("malformed Prometheus sample line {line:?}: {error}")
                })
            })
            .collect();
        Metrics {
            text: text.to_owned(),
            samples,
        }
    }

    /// Samples named `name` whose labels include every `(label, value)` in `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of the samples named `name` whose labels include `labels`; `None` if there is
    /// no such sample at all.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = false;
        let sum = self
            .matching(name, labels)
            .inspect(|_| found = true)
            .map(|s| s.value)
            .sum();
        found.then_some(sum)
    }

    /// Like [`get`](Self::get) but 0 when absent (counters not yet incremented).
    pub fn get_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Like [`get`](Self::get) but panics, listing the samples of that name, when absent.
    #[track_caller]
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            panic!(
                "no sample {name} with labels {labels:?}; samples of that name: {:#?}\nfull scrape:\n{}",
                self.matching(name, &[]).collect::<Vec<_>>(),
                self.text
            )
        })
    }

    /// Names of the metric families declared with `# TYPE`.
    pub fn types(&self) -> BTreeMap<String, String> {
        self.text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| {
                let mut parts = rest.split_whitespace();
                Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
            })
            .collect()
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let (name_end, has_labels) = match line.find(['{', ' ', '\t']) {
        Some(i) => (i, line.as_bytes()[i] == b'{'),
        None => return Err("no value".to_owned()),
    };
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if has_labels {
        rest = &rest[1..];
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').ok_or("label without '='")?;
            let key = rest[..eq].trim().to_owned();
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err("unterminated escape".to_owned()),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".to_owned()),
                }
            };
            rest = &rest[end + 1..];
            labels.insert(key, value);
        }
    }
    let value_text = rest
        .split_whitespace()
        .next()
        .ok_or("no value after the name")?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Runs `promtool check metrics` on `text`. Panics with install instructions when promtool is
/// missing: this check never skips.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed (or not on PATH), and this test does not skip: install \
             it, e.g. `apt-get install prometheus` on Debian/Ubuntu, which provides \
             /usr/bin/promtool"
        ),
        Err(error) => panic!("cannot run promtool: {error}"),
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|error| format!("writing to promtool: {error}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|error| format!("waiting for promtool: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples() {
        let m = Metrics::parse(
            "# HELP x_total help\n# TYPE x_total counter\n\
             x_total{cluster=\"a\",code_class=\"2xx\"} 3\n\
             x_total{cluster=\"a\",code_class=\"5xx\"} 1\n\
             y 2.5\n\
             h_bucket{le=\"+Inf\",q=\"a\\\"b\"} 7 1700000000\n",
        );
        assert_eq!(m.get("x_total", &[("cluster", "a")]), Some(4.0));
        assert_eq!(m.get("x_total", &[("code_class", "5xx")]), Some(1.0));
        assert_eq!(m.get("x_total", &[("cluster", "b")]), None);
        assert_eq!(m.get("y", &[]), Some(2.5));
        assert_eq!(m.get("h_bucket", &[("q", "a\"b")]), Some(7.0));
        assert_eq!(
            m.types().get("x_total").map(String::as_str),
            Some("counter")
        );
    }
}
