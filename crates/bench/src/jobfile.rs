//! fio job files: INI sections of `key=value` lines.
//!
//! `[global]` sections set defaults for the jobs that follow them in the same file; every other
//! section is a job named after it. A bare `key` means `key=1` (fio's `time_based`). Lines
//! starting with `;` or `#` are comments, as are `;`/`#` runs after whitespace on a value line.

use std::fmt;

/// Where an option came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A line of a job file.
    File {
        /// The job file's path (an included file's path as resolved from the including one).
        path: String,
        /// The line number, from 1.
        line: usize,
    },
    /// A `--key=value` argument of `bluepoll bench`.
    CommandLine,
    /// The built-in default job (`bench/jobs/quick.fio`), run when no job is given.
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
    /// The option's name as written (normalised only when it is applied).
    pub key: String,
    /// The text after `=`, trimmed; `None` for a bare `key` (a flag).
    pub value: Option<String>,
    /// Where it was written.
    pub origin: Origin,
}

/// A job section with the `[global]` options in force where it appeared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawJob {
    /// The section's name: the job's name.
    pub name: String,
    /// The `[global]` options in force where the section began, in order.
    pub globals: Vec<RawOption>,
    /// The section's own options, in order.
    pub options: Vec<RawOption>,
}

/// A job file that cannot be parsed (or included), with where.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct JobFileError {
    /// The line at fault (or the `include` line).
    pub origin: Origin,
    /// What is wrong there.
    pub message: String,
}

/// Parses the text of a job file; `path` labels errors and anchors `include` paths.
pub fn parse(path: &str, text: &str) -> Result<Vec<RawJob>, JobFileError> {
    let mut parser = Parser::default();
    parser.feed(path, text, 0)?;
    Ok(parser.jobs)
}

/// How deep `include` may nest (a file including itself is an error, not a hang).
const MAX_INCLUDE_DEPTH: usize = 8;

#[derive(Default)]
struct Parser {
    jobs: Vec<RawJob>,
    globals: Vec<RawOption>,
    /// None before the first section; Some(None) inside [global]; Some(Some(i)) inside job i.
    section: Option<Option<usize>>,
}

impl Parser {
    fn feed(&mut self, path: &str, text: &str, depth: usize) -> Result<(), JobFileError> {
        for (index, raw_line) in text.lines().enumerate() {
            let origin = Origin::File {
                path: path.to_string(),
                line: index + 1,
            };
            let stripped = strip_comment(raw_line).trim();
            if stripped.is_empty() {
                continue;
            }
            let line = expand(stripped);
            let line = line.as_str();
            if let Some(included) = line.strip_prefix("include ") {
                self.include(path, included.trim(), origin, depth)?;
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
                    self.section = Some(None);
                } else {
                    self.jobs.push(RawJob {
                        name: name.to_string(),
                        globals: self.globals.clone(),
                        options: Vec::new(),
                    });
                    self.section = Some(Some(self.jobs.len() - 1));
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
            match self.section {
                None => {
                    return Err(JobFileError {
                        origin,
                        message: format!("option '{key}' appears before any [section]"),
                    });
                }
                Some(None) => self.globals.push(option),
                Some(Some(job)) => self.jobs[job].options.push(option),
            }
        }
        Ok(())
    }

    /// fio's `include FILE`: the file's lines as if written here (relative to this file).
    fn include(
        &mut self,
        from: &str,
        included: &str,
        origin: Origin,
        depth: usize,
    ) -> Result<(), JobFileError> {
        if depth >= MAX_INCLUDE_DEPTH {
            return Err(JobFileError {
                origin,
                message: format!("include {included}: nested more than {MAX_INCLUDE_DEPTH} deep"),
            });
        }
        let target = match std::path::Path::new(from).parent() {
            Some(dir) if !included.starts_with('/') => dir.join(included),
            _ => std::path::PathBuf::from(included),
        };
        let text = std::fs::read_to_string(&target).map_err(|e| JobFileError {
            origin: origin.clone(),
            message: format!("include {}: {e}", target.display()),
        })?;
        self.feed(&target.display().to_string(), &text, depth + 1)
    }
}

/// fio's substitutions in a job file line: `${VAR}` from the environment (empty when unset, as
/// fio does), and fio's own `$ncpus`, `$pagesize` and `$mb_memory`.
fn expand(line: &str) -> String {
    if !line.contains('$') {
        return line.to_string();
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        if let Some(braced) = tail.strip_prefix('{')
            && let Some(end) = braced.find('}')
        {
            out.push_str(&std::env::var(&braced[..end]).unwrap_or_default());
            rest = &braced[end + 1..];
            continue;
        }
        let word_len = tail
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .unwrap_or(tail.len());
        let value = match &tail[..word_len] {
            "ncpus" => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .to_string(),
            "pagesize" => "4096".to_string(),
            "mb_memory" => memory_mib().to_string(),
            _ => {
                out.push('$');
                rest = tail;
                continue;
            }
        };
        out.push_str(&value);
        rest = &tail[word_len..];
    }
    out.push_str(rest);
    out
}

/// MemTotal in MiB (0 when /proc/meminfo cannot be read).
fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib >> 10)
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
    fn variables_and_includes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("common.fio"),
            "bs=8k\niodepth=${BLUEPOLL_TEST_UNSET_VAR}4\n",
        )
        .unwrap();
        let main = dir.path().join("main.fio");
        let text = "[a]\ninclude common.fio\nrw=$ncpus\n";
        let jobs = parse(&main.display().to_string(), text).unwrap();
        let values: Vec<_> = jobs[0]
            .options
            .iter()
            .map(|o| (o.key.as_str(), o.value.clone().unwrap()))
            .collect();
        assert_eq!(values[0], ("bs", "8k".to_string()));
        assert_eq!(
            values[1],
            ("iodepth", "4".to_string()),
            "an unset variable is empty"
        );
        assert!(values[2].1.parse::<usize>().unwrap() >= 1);
        let err = parse(&main.display().to_string(), "[a]\ninclude missing.fio\n").unwrap_err();
        assert!(err.to_string().contains("include"), "{err}");
    }

    #[test]
    fn hash_inside_a_value_is_kept() {
        let jobs = parse("x.fio", "[a]\nfilename=mem:1G#x\n").unwrap();
        assert_eq!(jobs[0].options[0].value.as_deref(), Some("mem:1G#x"));
    }
}
