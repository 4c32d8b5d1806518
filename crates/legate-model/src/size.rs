//! Sizes as operators write them on command lines and in files: `16MiB`, `512KiB`, `8388608`.
//! legate's and legate-cp's size flags all read them here.

/// A size that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("'{0}': expected a size such as 16MiB")]
    NotANumber(String),
    #[error("'{input}': unknown unit '{unit}' (use KiB or MiB)")]
    UnknownUnit { input: String, unit: String },
    #[error("'{0}': too large")]
    TooLarge(String),
}

/// A size such as `16MiB`, `512KiB` or `8388608` (`K`/`KB`/`M`/`MB` are powers of 1024 too).
pub fn parse_size(s: &str) -> Result<usize, SizeError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| SizeError::NotANumber(s.to_owned()))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        other => {
            return Err(SizeError::UnknownUnit {
                input: s.to_owned(),
                unit: other.to_owned(),
            });
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| SizeError::TooLarge(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4 kb"), Ok(4096));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        for bad in [
            "",
            "MiB",
            "1GiB",
            "-1",
            "1.5MiB",
            "99999999999999999999999MiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
