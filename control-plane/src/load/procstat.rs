//! Resident memory and CPU time of a process, from Linux's `/proc` (nothing elsewhere).

use serde::Serialize;

/// `/proc/PID/stat` counts CPU time in clock ticks of 1/USER_HZ s, which the kernel fixes at
/// 100 for user space on every architecture Linux runs on (`sysconf(_SC_CLK_TCK)`).
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ProcSample {
    /// `VmRSS`, KiB.
    pub rss_kb: u64,
    /// `VmHWM`: the peak of `VmRSS` so far, KiB.
    pub rss_peak_kb: u64,
    /// utime + stime, seconds.
    pub cpu_s: f64,
    pub threads: u64,
}

/// Reads `/proc/<pid>/{stat,status}`; `pid` may be `"self"`. `None` if the process is gone
/// or `/proc` is not Linux's.
pub fn sample(pid: &str) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse(&stat, &status)
}

fn parse(stat: &str, status: &str) -> Option<ProcSample> {
    // The command name (field 2) is in parentheses and may hold spaces and parentheses:
    // fields are counted from the last ')'. Field 3 (state) is the first after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let ticks = field(14)? + field(15)?;
    let kb = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some(ProcSample {
        rss_kb: kb("VmRSS:")?,
        rss_peak_kb: kb("VmHWM:").unwrap_or_default(),
        cpu_s: ticks as f64 / TICKS_PER_SECOND,
        threads: kb("Threads:").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat = "4242 (legate cp (x)) S 1 4242 4242 0 -1 4194560 2480 0 0 0 150 27 0 0 20 0 \
                    3 0 123 45678 999 18446744073709551615";
        let status = "Name:\tlegate-cp\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(
            parse(stat, status),
            Some(ProcSample {
                rss_kb: 10240,
                rss_peak_kb: 20480,
                cpu_s: 1.77,
                threads: 3,
            })
        );
        assert_eq!(parse("garbage", status), None);
    }

    #[test]
    fn reads_this_process() {
        let me = sample("self").expect("/proc/self");
        assert!(me.rss_kb > 0 && me.threads >= 1);
    }
}
