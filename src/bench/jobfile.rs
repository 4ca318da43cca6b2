//! fio job files: INI sections of `key=value` lines.
//!
//! `[global]` sections set defaults for the jobs that follow them in the same file; every other
//! section is a job named after it. A bare `key` means `key=1` (fio's `time_based`). Lines
//! starting with `;` or `#` are comments, as are `;`/`#` runs after whitespace on a value line.

use std::fmt;

/// Where an option came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    File { path: String, line: usize },
    CommandLine,
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{path}:{line}"),
            Origin::CommandLine => f.write_str("command line"),
            Origin::Default => f.write_str("built-in default job"),
        }
    }
}

/// One `key=value` with where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawOption {
    pub key: String,
    pub value: Option<String>,
    pub origin: Origin,
}

/// A job section with the `[global]` options in force where it appeared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawJob {
    pub name: String,
    pub globals: Vec<RawOption>,
    pub options: Vec<RawOption>,
}

#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct JobFileError {
    pub origin: Origin,
    pub message: String,
}

/// Parses the text of a job file; `path` only labels errors.
pub fn parse(path: &str, text: &str) -> Result<Vec<RawJob>, JobFileError> {
    let mut jobs: Vec<RawJob> = Vec::new();
    let mut globals: Vec<RawOption> = Vec::new();
    // None before the first section; Some(None) inside [global]; Some(Some(i)) inside job i.
    let mut section: Option<Option<usize>> = None;
    for (index, raw_line) in text.lines().enumerate() {
        let origin = Origin::File {
            path: path.to_string(),
            line: index + 1,
        };
        let line = strip_comment(raw_line).trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(JobFileError {
                    origin,
                    message: format!("unterminated section header '{line}'"),
                });
            };
            let name = name.trim();
            if name.is_empty() {
                return Err(JobFileError {
                    origin,
                    message: "empty section name".into(),
                });
            }
            if name == "global" {
                section = Some(None);
            } else {
                jobs.push(RawJob {
                    name: name.to_string(),
                    globals: globals.clone(),
                    options: Vec::new(),
                });
                section = Some(Some(jobs.len() - 1));
            }
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().to_string())),
            None => (line, None),
        };
        if key.is_empty() {
            return Err(JobFileError {
                origin,
                message: format!("missing option name in '{line}'"),
            });
        }
        let option = RawOption {
            key: key.to_string(),
            value,
            origin: origin.clone(),
        };
        match section {
            None => {
                return Err(JobFileError {
                    origin,
                    message: format!("option '{key}' appears before any [section]"),
                });
            }
            Some(None) => globals.push(option),
            Some(Some(job)) => jobs[job].options.push(option),
        }
    }
    Ok(jobs)
}

fn strip_comment(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with(';') || trimmed.starts_with('#') {
        return "";
    }
    // A comment after a value must follow whitespace, so `filename=a#b` keeps its '#'.
    let bytes = line.as_bytes();
    for i in 1..bytes.len() {
        if (bytes[i] == b';' || bytes[i] == b'#') && bytes[i - 1].is_ascii_whitespace() {
            return &line[..i];
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_globals_and_comments() {
        let text = "; leading comment\n[global]\nbs=4k\n# another\ntime_based\n\n[a]\nrw=randread ; trailing\n[global]\niodepth=8\n[b]\nrw=write\n";
        let jobs = parse("t.fio", text).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].name, "a");
        assert_eq!(jobs[0].globals.len(), 2);
        assert_eq!(jobs[0].globals[1].key, "time_based");
        assert_eq!(jobs[0].globals[1].value, None);
        assert_eq!(jobs[0].options[0].value.as_deref(), Some("randread"));
        assert_eq!(
            jobs[1].globals.len(),
            3,
            "a later [global] adds to the defaults"
        );
        assert_eq!(
            jobs[1].options[0].origin,
            Origin::File {
                path: "t.fio".into(),
                line: 12
            }
        );
    }

    #[test]
    fn malformed_files_name_the_line() {
        let err = parse("x.fio", "[global\nbs=4k\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.fio:1: unterminated section header '[global'"
        );
        let err = parse("x.fio", "bs=4k\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("x.fio:1: option 'bs' appears before")
        );
        let err = parse("x.fio", "[a]\n=3\n").unwrap_err();
        assert!(err.to_string().contains("missing option name"));
    }

    #[test]
    fn hash_inside_a_value_is_kept() {
        let jobs = parse("x.fio", "[a]\nfilename=mem:1G#x\n").unwrap();
        assert_eq!(jobs[0].options[0].value.as_deref(), Some("mem:1G#x"));
    }
}
