//! A real Prometheus server (Debian's `prometheus` package, the one that ships `promtool`)
//! scraping the processes under test, queried through its HTTP API; and the reading of
//! metric names out of PromQL expressions that the Grafana dashboard test needs.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::process::{ChildProcess, TempDir, free_port};

/// How long Prometheus gets to answer `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One scrape job: a name, a metrics path and one target.
#[derive(Clone, Debug)]
pub struct Job {
    pub name: &'static str,
    pub path: &'static str,
    pub target: SocketAddr,
}

/// The `prometheus` binary: `$LEGATE_PROMETHEUS`, else the first on `PATH`. Panics with
/// how to install it when there is none: the tests that need it never skip.
pub fn prometheus_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("LEGATE_PROMETHEUS") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("prometheus"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "the prometheus server is not installed (no `prometheus` on PATH, and \
             LEGATE_PROMETHEUS is not set), and this test does not skip: run `make \
             test-tools`, or `apt-get install prometheus` on Debian/Ubuntu, which provides \
             /usr/bin/prometheus and /usr/bin/promtool"
        )
    })
}

/// A running Prometheus, killed by PID on drop, with its storage in a temporary directory.
pub struct Prometheus {
    proc: ChildProcess,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    /// Start Prometheus scraping `jobs` every `interval`, on a free loopback port (Prometheus
    /// cannot bind port 0 and report it, so a port found free is tried; another is tried
    /// if it was taken meanwhile, three times at most).
    pub async fn start(jobs: &[Job], interval: Duration) -> Prometheus {
        let program = prometheus_bin();
        let mut failures = String::new();
        for attempt in 0..3 {
            let dir = TempDir::new("prometheus");
            let config = dir.write("prometheus.yml", &config(jobs, interval));
            let addr = free_port();
            let args: Vec<OsString> = vec![
                format!("--config.file={}", config.display()).into(),
                format!("--storage.tsdb.path={}", dir.path().join("data").display()).into(),
                format!("--web.listen-address={addr}").into(),
                "--log.level=warn".into(),
            ];
            let proc = ChildProcess::spawn("prometheus", &program, &args, |_| {});
            match wait_ready(&proc, addr).await {
                Ok(()) => {
                    return Prometheus {
                        proc,
                        addr,
                        _dir: dir,
                    };
                }
                Err(why) => failures.push_str(&format!("attempt {attempt}: {why}\n")),
            }
        }
        panic!("prometheus did not start:\n{failures}")
    }

    /// Everything Prometheus printed so far.
    pub fn output(&self) -> String {
        self.proc.output()
    }

    /// `GET /api/v1/query?query=...`: the instant vector's samples as (labels, value), or
    /// why not (an error status, a parse error, a result that is not a vector).
    pub async fn query(&self, promql: &str) -> Result<Vec<(serde_json::Value, f64)>, String> {
        let encoded =
            percent_encoding::utf8_percent_encode(promql, percent_encoding::NON_ALPHANUMERIC);
        let url = format!("http://{}/api/v1/query?query={encoded}", self.addr);
        let response = crate::client::HttpClient::http1()
            .try_request("GET", &url, &[], crate::client::empty())
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let body: serde_json::Value = serde_json::from_slice(&response.body)
            .map_err(|e| format!("{promql}: status {}: {e}", response.status))?;
        if body["status"] != "success" {
            return Err(format!("{promql}: {body}"));
        }
        if body["data"]["resultType"] != "vector" {
            return Err(format!("{promql}: not a vector: {body}"));
        }
        let samples = body["data"]["result"]
            .as_array()
            .ok_or_else(|| format!("{promql}: no result: {body}"))?;
        samples
            .iter()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .ok_or_else(|| format!("{promql}: bad sample {s}"))?;
                Ok((s["metric"].clone(), value))
            })
            .collect()
    }

    /// The query's single sample's value (an error when there is none, or several).
    pub async fn scalar(&self, promql: &str) -> Result<f64, String> {
        match self.query(promql).await?.as_slice() {
            [(_, value)] => Ok(*value),
            other => Err(format!("{promql}: want one sample, got {other:?}")),
        }
    }

    /// The health of each scrape target, as Prometheus reports it (`up`/`down`/`unknown`)
    /// with the last error, for failure messages and for waiting until both are scraped.
    pub async fn targets(&self) -> Result<Vec<(String, String, String)>, String> {
        let url = format!("http://{}/api/v1/targets", self.addr);
        let response = crate::client::HttpClient::http1()
            .try_request("GET", &url, &[], crate::client::empty())
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let body: serde_json::Value =
            serde_json::from_slice(&response.body).map_err(|e| format!("{url}: {e}"))?;
        Ok(body["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["labels"]["job"].as_str().unwrap_or_default().to_owned(),
                    t["health"].as_str().unwrap_or_default().to_owned(),
                    t["lastError"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }
}

fn config(jobs: &[Job], interval: Duration) -> String {
    let secs = interval.as_secs().max(1);
    let mut text = format!(
        "global:\n  scrape_interval: {secs}s\n  scrape_timeout: {secs}s\n  evaluation_interval: {secs}s\nscrape_configs:\n"
    );
    for job in jobs {
        text.push_str(&format!(
            "  - job_name: {}\n    metrics_path: {}\n    static_configs:\n      - targets: ['{}']\n",
            job.name, job.path, job.target
        ));
    }
    text
}

async fn wait_ready(proc: &ChildProcess, addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let url = format!("http://{addr}/-/ready");
    loop {
        if let Some(status) = proc.try_wait() {
            return Err(format!("exited with {status}\n{}", proc.output()));
        }
        let answer = crate::client::HttpClient::http1()
            .try_request("GET", &url, &[], crate::client::empty())
            .await;
        if answer.is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not ready after {READY_TIMEOUT:?}\n{}",
                proc.output()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// PromQL words that are not metric names: aggregation modifiers, set and vector-matching
/// operators, `offset`.
const PROMQL_KEYWORDS: [&str; 11] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
];

/// PromQL's aggregation operators, which may be followed by `by (...)` before their
/// parentheses (`sum by (le) (...)`), so are not always followed by `(`.
const PROMQL_AGGREGATIONS: [&str; 12] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// The metric names a PromQL expression reads: identifiers that are not function names
/// (followed by `(`), keywords, label names (inside `{...}` and the parentheses of `by`,
/// `without`, `on`, `ignoring`, `group_left`, `group_right`), range selectors (`[...]`),
/// string literals, numbers or Grafana variables (`$name`, `${name}`).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Set after a grouping keyword: the next `(...)` holds label names.
    let mut labels_follow = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                // Label matchers and ranges: skip to the close, over quoted values.
                i += 1;
                while i < chars.len() && chars[i] != close {
                    if chars[i] == '"' {
                        i += 1;
                        while i < chars.len() && chars[i] != '"' {
                            if chars[i] == '\\' {
                                i += 1;
                            }
                            i += 1;
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            '(' if labels_follow => {
                labels_follow = false;
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
            }
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    while i < chars.len() && chars[i] != '}' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // A number (also 1e3, 0x1f): skip its alphanumerics.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let call = chars.get(j) == Some(&'(');
                if PROMQL_KEYWORDS.contains(&word.as_str()) {
                    labels_follow = call
                        && matches!(
                            word.as_str(),
                            "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                        );
                } else if !call && !PROMQL_AGGREGATIONS.contains(&word.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The metric names a Prometheus text exposition declares or carries: every `# TYPE` family
/// and every sample name (a histogram's `_bucket`, `_sum`, `_count` among them).
pub fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                names.insert(name.to_owned());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// Every `expr` string in a Grafana dashboard (panels, nested rows, targets), with the
/// title of the panel it belongs to.
pub fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(v: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(map) => {
                let title = map
                    .get("title")
                    .and_then(|t| t.as_str())
                    .unwrap_or(title)
                    .to_owned();
                for (key, value) in map {
                    if key == "expr" {
                        if let Some(expr) = value.as_str() {
                            out.push((title.clone(), expr.to_owned()));
                        }
                    } else {
                        walk(value, &title, out);
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    walk(item, title, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "", &mut out);
    out
}

/// The repository's root (the tests crate's parent).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn reads_metric_names_out_of_promql() {
        assert_eq!(
            names(
                "histogram_quantile(0.99, sum by (cluster, le) (rate(legate_upstream_request_duration_seconds_bucket{cluster=~\"$cluster\", le!=\"x y\"}[$__rate_interval])))"
            ),
            ["legate_upstream_request_duration_seconds_bucket"]
        );
        assert_eq!(
            names(
                "sum(rate(a_total[5m])) by (reason) / ignoring(reason) group_left sum(rate(b_total[1m] offset 5m)) > bool 0.5e3"
            ),
            ["a_total", "b_total"]
        );
        assert_eq!(
            names("max(legate_xds_connected) or vector(0) and on(job) up{job='x'}"),
            ["legate_xds_connected", "up"]
        );
        assert_eq!(names("${DS_PROMETHEUS}"), Vec::<String>::new());
    }

    #[test]
    fn reads_names_out_of_an_exposition() {
        let names = exposed_names(
            "# HELP h_seconds H.\n# TYPE h_seconds histogram\nh_seconds_bucket{le=\"+Inf\"} 1\nh_seconds_count 1\n# TYPE c_total counter\n",
        );
        let names: Vec<_> = names.into_iter().collect();
        assert_eq!(
            names,
            [
                "c_total",
                "h_seconds",
                "h_seconds_bucket",
                "h_seconds_count"
            ]
        );
    }
}
