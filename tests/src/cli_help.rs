//! The flags a built binary documents in its `--help` (clap's long help), for tests that
//! check what the deployment files (`deploy/systemd/`, `deploy/kubernetes/`) pass against
//! the real command line instead of a copy of it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use crate::process::bin_dir;

/// One `--flag` of a `--help` text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flag {
    /// `FILE` for `--config <FILE>`; `None` for a switch such as `--insecure`.
    pub value_name: Option<String>,
    /// The description lines under the flag, joined by spaces.
    pub description: String,
}

impl Flag {
    /// The default the help states: clap's `[default: X]`, or else the first `default X` /
    /// `default: X` in the description's prose (legate's flags say "default 10s" inside
    /// their description); `None` when neither is there.
    pub fn default(&self) -> Option<String> {
        if let Some(at) = self.description.find("[default: ") {
            let rest = &self.description[at + "[default: ".len()..];
            return rest.split(']').next().map(str::to_owned);
        }
        let text = &self.description;
        text.match_indices("default")
            .filter_map(|(at, word)| {
                // A whole word ("defaults" is not it), followed by a value.
                let before = text[..at].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric()) {
                    return None;
                }
                let rest = text[at + word.len()..]
                    .strip_prefix(':')
                    .unwrap_or(&text[at + word.len()..]);
                let rest = rest.strip_prefix(' ')?;
                let value: String = rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && !matches!(c, ';' | ')' | ','))
                    .collect();
                (!value.is_empty()).then_some(value)
            })
            .next()
    }

    /// Whether the value names a path (`<FILE>`, `<DIR>`, `<PATH>`).
    pub fn takes_path(&self) -> bool {
        matches!(self.value_name.as_deref(), Some("FILE" | "DIR" | "PATH"))
    }
}

/// The long flags of one binary's `--help`, by name (`--config`).
#[derive(Clone, Debug)]
pub struct Help {
    pub binary: String,
    pub flags: BTreeMap<String, Flag>,
}

impl Help {
    /// Runs `NAME --help` from this build's binaries and parses it.
    pub fn of(name: &str) -> Help {
        let path = binary(name);
        let out = Command::new(&path)
            .arg("--help")
            .output()
            .unwrap_or_else(|error| panic!("cannot run {} --help: {error}", path.display()));
        assert!(out.status.success(), "{name} --help: {}", out.status);
        Help::parse(name, &String::from_utf8_lossy(&out.stdout))
    }

    /// Parses clap's long help: a flag line (`  -c, --config <FILE>` or
    /// `      --insecure`) and the more indented description lines under it.
    pub fn parse(binary: &str, text: &str) -> Help {
        let mut flags = BTreeMap::new();
        let mut current: Option<(String, Flag)> = None;
        for line in text.lines() {
            let indent = line.len() - line.trim_start().len();
            let trimmed = line.trim();
            let flag_line = (1..10).contains(&indent) && trimmed.starts_with('-');
            if flag_line {
                if let Some((name, flag)) = current.take() {
                    flags.insert(name, flag);
                }
                // `-c, --config <FILE>`: the long form is after the comma.
                let long = match trimmed.split_once(", ") {
                    Some((short, long)) if !short.starts_with("--") => long,
                    _ => trimmed,
                };
                let mut words = long.split_whitespace();
                let Some(name) = words.next().filter(|w| w.starts_with("--")) else {
                    continue;
                };
                let value_name = words
                    .next()
                    .map(|v| v.trim_start_matches('<').trim_end_matches('>').to_owned());
                current = Some((
                    name.to_owned(),
                    Flag {
                        value_name,
                        description: String::new(),
                    },
                ));
            } else if let Some((_, flag)) = current.as_mut()
                && !trimmed.is_empty()
            {
                if !flag.description.is_empty() {
                    flag.description.push(' ');
                }
                flag.description.push_str(trimmed);
            }
        }
        if let Some((name, flag)) = current {
            flags.insert(name, flag);
        }
        Help {
            binary: binary.to_owned(),
            flags,
        }
    }

    /// The flag named `name` (`--config`), if the help documents it.
    pub fn flag(&self, name: &str) -> Option<&Flag> {
        self.flags.get(name)
    }
}

/// A built binary of the workspace, by name.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (the Makefile does)",
        path.display()
    );
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags_values_and_defaults() {
        let help = Help::parse(
            "x",
            "Usage: x [OPTIONS]\n\nOptions:\n  -c, --config <PATH>\n          A mesh file\n\n      \
             --insecure\n          Allow it\n\n      --xds-address <ADDR>\n          xDS gRPC \
             address\n          \n          [default: 127.0.0.1:15010]\n\n      \
             --admin-address <ADDR>\n          Admin server address (overrides \
             `admin.address`; default 127.0.0.1:15000)\n\n  -h, --help\n          Print help\n",
        );
        let config = help.flag("--config").expect("--config");
        assert_eq!(config.value_name.as_deref(), Some("PATH"));
        assert!(config.takes_path());
        assert_eq!(config.default(), None);
        assert_eq!(
            help.flag("--insecure").map(|f| f.value_name.clone()),
            Some(None)
        );
        assert_eq!(
            help.flag("--xds-address")
                .and_then(Flag::default)
                .as_deref(),
            Some("127.0.0.1:15010")
        );
        assert_eq!(
            help.flag("--admin-address")
                .and_then(Flag::default)
                .as_deref(),
            Some("127.0.0.1:15000")
        );
        assert!(help.flag("--help").is_some());
        assert!(help.flag("--conf").is_none());
    }
}
