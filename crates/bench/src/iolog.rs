//! fio's I/O logs (`write_iolog=FILE`, `read_iolog=FILE`): text traces of every I/O a job
//! issued, read and written here so a trace recorded by bluepoll replays in fio 3.33 and a trace
//! fio recorded replays in bluepoll.
//!
//! Only the format lives here — types, [`parse`] and [`IologWriter`]; the load engine decides
//! what to record and how to replay. The rules below were learnt from fio 3.33's reader and
//! writer (its `iolog.c`) and checked against the installed fio, since its HOWTO is out of date
//! in places:
//!
//! - Line 1 is `fio version 2 iolog` or `fio version 3 iolog`; fio checks only that the line
//!   starts with one of them. fio 3.33 itself always writes version 3.
//! - Then one action per line, fields separated by whitespace: `NAME add|open|close` for files,
//!   `NAME ACTION OFFSET LENGTH` for I/O (`read`, `write`, `trim`, `sync`, `datasync`, and in
//!   version 2 only `wait`). Version 3 puts a timestamp in front of both forms: microseconds
//!   since the log was started. Entries here carry nanoseconds, the engine's clock.
//! - A name must be added before use, and opened before I/O goes to it: fio aborts on an
//!   assertion when replaying I/O on a file that is not open. Names have no whitespace and at
//!   most 256 bytes (fio reads them into a fixed buffer), the length fits 32 bits.
//!
//! fio skips, with a complaint, the lines its reader does not understand; a library does not
//! print, so here such a line is an [`IologError`] naming it. blktrace binary logs, which fio
//! also replays, are recognised and refused.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write as _};
use std::path::{Path, PathBuf};

/// fio reads names with a 256-character field width; a longer name would be cut in two.
pub const MAX_NAME_BYTES: usize = 256;

const HEADER_V2: &str = "fio version 2 iolog";
const HEADER_V3: &str = "fio version 3 iolog";

/// blktrace's per-event magic (`MAGIC << 8 | version` in the first word), which fio checks in
/// either byte order before it tries the text formats.
const BLKTRACE_MAGIC: u32 = 0x6561_7400;

/// Error texts quote hostile input; this many characters are enough to recognise it.
const QUOTE_CHARS: usize = 64;

/// Which of fio's two text formats a log is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IologVersion {
    /// No timestamps; pacing only through `wait`. What fio before 3.31 writes; fio 3.33 still
    /// reads it, so it suits older fio and hand-made traces.
    V2,
    /// A timestamp on every line; fio 3.31 and later read it, and fio 3.31+ writes only this.
    V3,
}

impl IologVersion {
    fn header(self) -> &'static str {
        match self {
            IologVersion::V2 => HEADER_V2,
            IologVersion::V3 => HEADER_V3,
        }
    }

    /// Fields before the file name: the timestamp in version 3.
    fn leading_fields(self) -> usize {
        match self {
            IologVersion::V2 => 0,
            IologVersion::V3 => 1,
        }
    }
}

impl fmt::Display for IologVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IologVersion::V2 => "2",
            IologVersion::V3 => "3",
        })
    }
}

/// What one line of a log does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Read,
    Write,
    /// Recorded by fio, but fio 3.33's replay drops trims (it logs "bad ddir: 2" and skips
    /// them); a log with nothing but trims fails to replay there.
    Trim,
    /// fsync of the file. Offset and length mean nothing to it: fio writes a leftover offset
    /// and a length of 0.
    Sync,
    /// fdatasync, written like `sync`.
    Datasync,
    /// Version 2 only: pause until `offset` milliseconds after fio started (that is what fio
    /// 3.33 does; its HOWTO describes microseconds relative to the previous wait). `len` is
    /// unused.
    Wait,
    /// Makes a name known; [`Entry::file`] indexes [`Iolog::files`] in order of first `add`.
    Add,
    Open,
    Close,
}

impl Action {
    /// The word fio uses in a log line.
    pub fn name(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Trim => "trim",
            Action::Sync => "sync",
            Action::Datasync => "datasync",
            Action::Wait => "wait",
            Action::Add => "add",
            Action::Open => "open",
            Action::Close => "close",
        }
    }

    /// The action a log word names; `None` for words fio's replay does not know (including
    /// `sync_file_range`, which fio writes but its reader skips).
    pub fn from_name(word: &str) -> Option<Action> {
        Some(match word {
            "read" => Action::Read,
            "write" => Action::Write,
            "trim" => Action::Trim,
            "sync" => Action::Sync,
            "datasync" => Action::Datasync,
            "wait" => Action::Wait,
            "add" => Action::Add,
            "open" => Action::Open,
            "close" => Action::Close,
            _ => return None,
        })
    }

    /// `add`, `open` and `close` lines carry no offset and length.
    pub fn is_file_action(self) -> bool {
        matches!(self, Action::Add | Action::Open | Action::Close)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One line of a log after the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Version 3 only: when the action was issued, in nanoseconds since the log began. The file
    /// holds whole microseconds, so parsed times are multiples of 1000.
    pub time_ns: Option<u64>,
    /// Index into [`Iolog::files`].
    pub file: usize,
    pub action: Action,
    /// Bytes; 0 for file actions. For [`Action::Wait`], the wait value (see there).
    pub offset: u64,
    /// Bytes, at most `u32::MAX` (fio's reader holds it in 32 bits); 0 for file actions.
    pub len: u64,
}

/// A parsed log: its version, the names it added (in order), and every line after the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iolog {
    pub version: IologVersion,
    pub files: Vec<String>,
    pub entries: Vec<Entry>,
}

/// Why a log could not be read or written. `label` names the log (usually its path) and `line`
/// counts from 1, the header being line 1.
#[derive(Debug, thiserror::Error)]
pub enum IologError {
    #[error(
        "{label}: a blktrace binary log; only fio's text iologs (versions 2 and 3) are supported"
    )]
    Blktrace { label: String },
    #[error(
        "{label}:1: not a fio iolog: the first line must be '{HEADER_V2}' or '{HEADER_V3}', found '{found}'"
    )]
    BadHeader { label: String, found: String },
    #[error("{label}: not UTF-8 text")]
    NotText { label: String },
    #[error(
        "{label}:{line}: unknown action '{action}' (replay knows add, open, close, read, write, trim, sync, datasync, and wait in version 2)"
    )]
    UnknownAction {
        label: String,
        line: usize,
        action: String,
    },
    #[error(
        "{label}:{line}: 'wait' is not allowed in a version 3 iolog (its timestamps pace replay)"
    )]
    WaitInV3 { label: String, line: usize },
    #[error("{label}:{line}: {found} field(s); a version {version} line has at least {needed}")]
    TooFewFields {
        label: String,
        line: usize,
        version: IologVersion,
        found: usize,
        needed: usize,
    },
    #[error(
        "{label}:{line}: a version {version} '{action}' line has {expected} fields, found {found}"
    )]
    FieldCount {
        label: String,
        line: usize,
        version: IologVersion,
        action: Action,
        expected: usize,
        found: usize,
    },
    #[error("{label}:{line}: bad {field} '{value}': {reason}")]
    BadNumber {
        label: String,
        line: usize,
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{label}:{line}: bad file name '{name}': {reason}")]
    BadFileName {
        label: String,
        line: usize,
        name: String,
        reason: &'static str,
    },
    #[error("{label}:{line}: '{action}' on '{name}', which was never added")]
    UnknownFile {
        label: String,
        line: usize,
        action: Action,
        name: String,
    },
    #[error("{label}:{line}: '{action}' on '{name}', which is not open (fio aborts on this)")]
    FileNotOpen {
        label: String,
        line: usize,
        action: Action,
        name: String,
    },
    #[error("cannot record file name '{name}' in an iolog: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("cannot write '{action}' to a version {version} iolog")]
    NotInVersion {
        action: Action,
        version: IologVersion,
    },
    #[error("I/O length {len} does not fit the 32 bits fio's reader has for it")]
    LengthTooLarge { len: u64 },
    #[error("{path}: {source}", path = .path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// Reads and parses the log at `path`, labelling errors with the path. Checks for a blktrace
/// log before the text decoding, since those are binary.
pub fn read(path: &Path) -> Result<Iolog, IologError> {
    let label = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| IologError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let header_ok =
        bytes.starts_with(HEADER_V2.as_bytes()) || bytes.starts_with(HEADER_V3.as_bytes());
    if !header_ok && is_blktrace(&bytes) {
        return Err(IologError::Blktrace { label });
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| IologError::NotText {
        label: label.clone(),
    })?;
    parse(&label, text)
}

/// Parses a version 2 or 3 log; `label` names it in errors. Lines fio's reader would skip
/// (blank lines aside) are errors here; a repeat of the header line is skipped, because fio
/// appends to an existing `write_iolog` file and so writes one header per run.
pub fn parse(label: &str, text: &str) -> Result<Iolog, IologError> {
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or("");
    let version = if first.starts_with(HEADER_V2) {
        IologVersion::V2
    } else if first.starts_with(HEADER_V3) {
        IologVersion::V3
    } else if is_blktrace(text.as_bytes()) {
        return Err(IologError::Blktrace {
            label: label.to_string(),
        });
    } else {
        return Err(IologError::BadHeader {
            label: label.to_string(),
            found: quote(first.trim_end_matches(is_c_space)),
        });
    };
    let mut parser = Parser {
        label,
        version,
        log: Iolog {
            version,
            files: Vec::new(),
            entries: Vec::new(),
        },
        by_name: HashMap::new(),
        open: Vec::new(),
    };
    for (index, text) in lines.enumerate() {
        parser.line(index + 2, text)?;
    }
    Ok(parser.log)
}

struct Parser<'a> {
    label: &'a str,
    version: IologVersion,
    log: Iolog,
    by_name: HashMap<String, usize>,
    /// Per file: whether I/O may go to it now.
    open: Vec<bool>,
}

impl Parser<'_> {
    fn line(&mut self, line: usize, text: &str) -> Result<(), IologError> {
        // The fields a valid line has at most (v3 I/O); more only matter for the count.
        let mut fields = [""; 5];
        let mut found = 0;
        for field in text.split(is_c_space).filter(|f| !f.is_empty()) {
            if let Some(slot) = fields.get_mut(found) {
                *slot = field;
            }
            found += 1;
        }
        if found == 0 {
            return Ok(());
        }
        if text.trim_end_matches(is_c_space) == self.version.header() {
            return Ok(());
        }
        let lead = self.version.leading_fields();
        if found < lead + 2 {
            return Err(IologError::TooFewFields {
                label: self.label.to_string(),
                line,
                version: self.version,
                found,
                needed: lead + 2,
            });
        }
        let name = fields[lead];
        let word = fields[lead + 1];
        let action = Action::from_name(word).ok_or_else(|| IologError::UnknownAction {
            label: self.label.to_string(),
            line,
            action: quote(word),
        })?;
        if action == Action::Wait && self.version == IologVersion::V3 {
            return Err(IologError::WaitInV3 {
                label: self.label.to_string(),
                line,
            });
        }
        let expected = lead + if action.is_file_action() { 2 } else { 4 };
        if found != expected {
            return Err(IologError::FieldCount {
                label: self.label.to_string(),
                line,
                version: self.version,
                action,
                expected,
                found,
            });
        }
        let time_ns = match self.version {
            IologVersion::V2 => None,
            IologVersion::V3 => {
                let us = self.number(line, "timestamp", fields[0])?;
                Some(us.checked_mul(1000).ok_or_else(|| {
                    self.bad_number(line, "timestamp", fields[0], "too large in nanoseconds")
                })?)
            }
        };
        let (offset, len) = if action.is_file_action() {
            (0, 0)
        } else {
            let offset = self.number(line, "offset", fields[lead + 2])?;
            let len = self.number(line, "length", fields[lead + 3])?;
            if len > u64::from(u32::MAX) {
                return Err(self.bad_number(
                    line,
                    "length",
                    fields[lead + 3],
                    "more than the 32 bits fio's reader has for it",
                ));
            }
            (offset, len)
        };
        if let Err(reason) = check_name(name) {
            return Err(IologError::BadFileName {
                label: self.label.to_string(),
                line,
                name: quote(name),
                reason,
            });
        }
        let file = match (action, self.by_name.get(name)) {
            // fio adds a second file of the same name, but looks names up first-match, so a
            // re-add changes nothing a replay sees.
            (Action::Add, Some(&file)) => file,
            (Action::Add, None) => {
                let file = self.log.files.len();
                self.log.files.push(name.to_string());
                self.by_name.insert(name.to_string(), file);
                self.open.push(false);
                file
            }
            (_, Some(&file)) => file,
            (_, None) => {
                return Err(IologError::UnknownFile {
                    label: self.label.to_string(),
                    line,
                    action,
                    name: quote(name),
                });
            }
        };
        match action {
            Action::Open => self.set_open(file, true),
            Action::Close => self.set_open(file, false),
            Action::Add | Action::Wait => {}
            Action::Read | Action::Write | Action::Trim | Action::Sync | Action::Datasync => {
                if !self.open.get(file).copied().unwrap_or(false) {
                    return Err(IologError::FileNotOpen {
                        label: self.label.to_string(),
                        line,
                        action,
                        name: quote(name),
                    });
                }
            }
        }
        self.log.entries.push(Entry {
            time_ns,
            file,
            action,
            offset,
            len,
        });
        Ok(())
    }

    fn set_open(&mut self, file: usize, open: bool) {
        if let Some(state) = self.open.get_mut(file) {
            *state = open;
        }
    }

    fn number(&self, line: usize, field: &'static str, text: &str) -> Result<u64, IologError> {
        // Digits only: str::parse would also take a sign, which fio's writer never emits.
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.bad_number(line, field, text, "not a decimal number"));
        }
        text.parse()
            .map_err(|_| self.bad_number(line, field, text, "does not fit 64 bits"))
    }

    fn bad_number(
        &self,
        line: usize,
        field: &'static str,
        value: &str,
        reason: &'static str,
    ) -> IologError {
        IologError::BadNumber {
            label: self.label.to_string(),
            line,
            field,
            value: quote(value),
            reason,
        }
    }
}

/// The whitespace C's `isspace` knows (fio splits fields with `sscanf`); `char::is_whitespace`
/// would also split on Unicode spaces that fio keeps inside a name.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// Whether fio's reader would take `name` back intact.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty")
    } else if name.len() > MAX_NAME_BYTES {
        Err("longer than the 256 bytes fio reads")
    } else if name.contains(is_c_space) {
        Err("contains whitespace, which separates fields")
    } else if name.contains('\0') {
        Err("contains a NUL byte")
    } else {
        Ok(())
    }
}

fn is_blktrace(bytes: &[u8]) -> bool {
    let Some(word) = bytes.first_chunk::<4>() else {
        return false;
    };
    [u32::from_le_bytes(*word), u32::from_be_bytes(*word)]
        .iter()
        .any(|w| w & 0xffff_ff00 == BLKTRACE_MAGIC)
}

/// The start of `text` for an error message.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// Records one job's I/O to one file as a fio iolog.
///
/// Creation writes the header and the `add` and `open` lines; [`record`](Self::record) appends
/// one line per I/O into a buffer (no allocation per call); [`finish`](Self::finish) writes
/// `close` and flushes. Dropping the writer without `finish` flushes what was recorded but
/// leaves out `close` and loses any write error.
///
/// Unlike fio, which appends to an existing `write_iolog` file, this truncates it: a file then
/// holds one run, whose timestamps only grow, rather than several that replay back to back.
pub struct IologWriter {
    out: BufWriter<File>,
    path: PathBuf,
    version: IologVersion,
    name: String,
    /// The line being built; reused so recording does not allocate.
    line: Vec<u8>,
    /// Latest timestamp written, so `close` is not stamped before the I/O it follows.
    last_us: u64,
}

impl IologWriter {
    /// Creates (or truncates) `path` and writes the header and `file_name`'s `add` and `open`,
    /// stamped 0 in version 3. `file_name` is what a replay will open, so it must be a name fio
    /// reads back whole: no whitespace or NUL, at most [`MAX_NAME_BYTES`].
    pub fn create(
        path: &Path,
        version: IologVersion,
        file_name: &str,
    ) -> Result<IologWriter, IologError> {
        check_name(file_name).map_err(|reason| IologError::InvalidName {
            name: quote(file_name),
            reason,
        })?;
        let file = File::create(path).map_err(|source| IologError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut writer = IologWriter {
            out: BufWriter::with_capacity(64 << 10, file),
            path: path.to_path_buf(),
            version,
            name: file_name.to_string(),
            line: Vec::with_capacity(MAX_NAME_BYTES + 128),
            last_us: 0,
        };
        writer.line.extend_from_slice(version.header().as_bytes());
        writer.line.push(b'\n');
        writer.emit()?;
        writer.record(Action::Add, 0, 0, 0)?;
        writer.record(Action::Open, 0, 0, 0)?;
        Ok(writer)
    }

    /// Appends one line. `time_ns` is nanoseconds since the log began: written as whole
    /// microseconds in version 3, ignored in version 2. For file actions `offset` and `len` are
    /// ignored; [`Action::Wait`] is refused in version 3, and a `len` over `u32::MAX` always.
    pub fn record(
        &mut self,
        action: Action,
        offset: u64,
        len: u64,
        time_ns: u64,
    ) -> Result<(), IologError> {
        if action == Action::Wait && self.version == IologVersion::V3 {
            return Err(IologError::NotInVersion {
                action,
                version: self.version,
            });
        }
        if len > u64::from(u32::MAX) {
            return Err(IologError::LengthTooLarge { len });
        }
        self.line.clear();
        if self.version == IologVersion::V3 {
            let us = time_ns / 1000;
            self.last_us = self.last_us.max(us);
            push_decimal(&mut self.line, us);
            self.line.push(b' ');
        }
        self.line.extend_from_slice(self.name.as_bytes());
        self.line.push(b' ');
        self.line.extend_from_slice(action.name().as_bytes());
        if !action.is_file_action() {
            self.line.push(b' ');
            push_decimal(&mut self.line, offset);
            self.line.push(b' ');
            push_decimal(&mut self.line, len);
        }
        self.line.push(b'\n');
        self.emit()
    }

    /// Writes `close` (stamped with the latest time recorded) and flushes.
    pub fn finish(mut self) -> Result<(), IologError> {
        let last_ns = self.last_us.saturating_mul(1000);
        self.record(Action::Close, 0, 0, last_ns)?;
        self.out.flush().map_err(|source| self.io_error(source))
    }

    fn emit(&mut self) -> Result<(), IologError> {
        match self.out.write_all(&self.line) {
            Ok(()) => Ok(()),
            Err(source) => Err(self.io_error(source)),
        }
    }

    fn io_error(&self, source: io::Error) -> IologError {
        IologError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// Appends `value` in decimal without going through `fmt`, which is slower on the issue path.
fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::{Command, Output};

    const MIB: u64 = 1 << 20;

    fn entry(time_us: Option<u64>, action: Action, offset: u64, len: u64) -> Entry {
        Entry {
            time_ns: time_us.map(|us| us * 1000),
            file: 0,
            action,
            offset,
            len,
        }
    }

    /// What fio 3.33 wrote for `--rw=randrw --bs=4k --number_ios=8 --ioengine=null`.
    const FIO_V3: &str = "fio version 3 iolog
24 t.0.0 add
184 t.0.0 open
189 t.0.0 read 4046848 4096
211 t.0.0 read 49676288 4096
216 t.0.0 write 31539200 4096
221 t.0.0 write 25534464 4096
229 t.0.0 close
";

    /// Version 2 as fio before 3.31 wrote it (no timestamps), with the actions only version 2
    /// has; fio 3.33 replays it (see `fio_replays_version_2`).
    const FIO_V2: &str = "fio version 2 iolog
/dev/nvme0n1 add
/dev/nvme0n1 open
/dev/nvme0n1 read 0 4096
/dev/nvme0n1 write 8192 8192
/dev/nvme0n1 wait 5 0
/dev/nvme0n1 trim 65536 4096
/dev/nvme0n1 sync 8192 0
/dev/nvme0n1 datasync 8192 0
/dev/nvme0n1 close
";

    #[test]
    fn parses_fio_version_3() {
        let log = parse("v3", FIO_V3).unwrap();
        assert_eq!(log.version, IologVersion::V3);
        assert_eq!(log.files, ["t.0.0"]);
        assert_eq!(
            log.entries,
            [
                entry(Some(24), Action::Add, 0, 0),
                entry(Some(184), Action::Open, 0, 0),
                entry(Some(189), Action::Read, 4046848, 4096),
                entry(Some(211), Action::Read, 49676288, 4096),
                entry(Some(216), Action::Write, 31539200, 4096),
                entry(Some(221), Action::Write, 25534464, 4096),
                entry(Some(229), Action::Close, 0, 0),
            ]
        );
    }

    #[test]
    fn parses_fio_version_2() {
        let log = parse("v2", FIO_V2).unwrap();
        assert_eq!(log.version, IologVersion::V2);
        assert_eq!(log.files, ["/dev/nvme0n1"]);
        assert_eq!(
            log.entries,
            [
                entry(None, Action::Add, 0, 0),
                entry(None, Action::Open, 0, 0),
                entry(None, Action::Read, 0, 4096),
                entry(None, Action::Write, 8192, 8192),
                entry(None, Action::Wait, 5, 0),
                entry(None, Action::Trim, 65536, 4096),
                entry(None, Action::Sync, 8192, 0),
                entry(None, Action::Datasync, 8192, 0),
                entry(None, Action::Close, 0, 0),
            ]
        );
    }

    #[test]
    fn several_files_reopened_and_header_repeats() {
        // Shaped like fio's `nrfiles=2 openfiles=1` logs, run twice into one file (fio appends).
        let text = "fio version 3 iolog\r
19 t.0.0 add\r
24 t.0.1 add
105 t.0.0 open
112 t.0.0 read 0 4096
127 t.0.0 close
127\tt.0.1  open

128 t.0.1 read 4096 4096
129 t.0.1 close
fio version 3 iolog
3 t.0.0 add
7 t.0.0 open
9 t.0.0 write 0 512
11 t.0.0 close";
        let log = parse("multi", text).unwrap();
        assert_eq!(log.files, ["t.0.0", "t.0.1"]);
        let summary: Vec<(usize, Action)> =
            log.entries.iter().map(|e| (e.file, e.action)).collect();
        assert_eq!(
            summary,
            [
                (0, Action::Add),
                (1, Action::Add),
                (0, Action::Open),
                (0, Action::Read),
                (0, Action::Close),
                (1, Action::Open),
                (1, Action::Read),
                (1, Action::Close),
                (0, Action::Add),
                (0, Action::Open),
                (0, Action::Write),
                (0, Action::Close),
            ]
        );
        assert_eq!(log.entries[10].time_ns, Some(9000));
    }

    #[test]
    fn header_is_a_prefix_match_like_fios() {
        let log = parse("h", "fio version 2 iolog, by hand\nf add\n").unwrap();
        assert_eq!(log.version, IologVersion::V2);
    }

    fn error(text: &str) -> IologError {
        match parse("t.log", text) {
            Ok(log) => panic!("parsed {log:?} from {text:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        assert!(matches!(
            error(""),
            IologError::BadHeader { found, .. } if found.is_empty()
        ));
        assert!(matches!(
            error("fio version 1 iolog\n"),
            IologError::BadHeader { found, .. } if found == "fio version 1 iolog"
        ));
        assert!(matches!(
            error("0 read 0 4096\n"),
            IologError::BadHeader { .. }
        ));
        let e = error("fio version 3 iolog\n1 f add\n2 f open\n3 f sync_file_range 0 0\n");
        assert!(
            matches!(&e, IologError::UnknownAction { line: 4, action, .. } if action == "sync_file_range")
        );
        assert!(
            e.to_string()
                .starts_with("t.log:4: unknown action 'sync_file_range'")
        );
        assert!(matches!(
            error("fio version 3 iolog\n1 f add\n2 f wait 5 0\n"),
            IologError::WaitInV3 { line: 3, .. }
        ));
        assert!(matches!(
            error("fio version 2 iolog\nf add\nf open\nf read 0x10 4096\n"),
            IologError::BadNumber { line: 4, field: "offset", value, .. } if value == "0x10"
        ));
        assert!(matches!(
            error("fio version 2 iolog\nf add\nf open\nf read 0 -1\n"),
            IologError::BadNumber {
                field: "length",
                ..
            }
        ));
        assert!(matches!(
            error("fio version 2 iolog\nf add\nf open\nf read 0 4294967296\n"),
            IologError::BadNumber {
                field: "length",
                ..
            }
        ));
        assert!(matches!(
            error("fio version 2 iolog\nf add\nf open\nf read 18446744073709551616 1\n"),
            IologError::BadNumber {
                field: "offset",
                reason: "does not fit 64 bits",
                ..
            }
        ));
        assert!(matches!(
            error("fio version 3 iolog\n18446744073709552 f add\n"),
            IologError::BadNumber {
                field: "timestamp",
                ..
            }
        ));
        assert!(matches!(
            error("fio version 3 iolog\n+1 f add\n"),
            IologError::BadNumber {
                field: "timestamp",
                ..
            }
        ));
        assert!(matches!(
            error("fio version 2 iolog\nf add\ng open\n"),
            IologError::UnknownFile { line: 3, action: Action::Open, name, .. } if name == "g"
        ));
        assert!(matches!(
            error("fio version 2 iolog\nf add\ng read 0 1\n"),
            IologError::UnknownFile {
                action: Action::Read,
                ..
            }
        ));
        assert!(matches!(
            error("fio version 2 iolog\nf add\nf read 0 1\n"),
            IologError::FileNotOpen { line: 3, .. }
        ));
        assert!(matches!(
            error("fio version 2 iolog\nf add\nf open\nf close\nf write 0 1\n"),
            IologError::FileNotOpen {
                line: 5,
                action: Action::Write,
                ..
            }
        ));
        assert!(matches!(
            error("fio version 2 iolog\nf add\nf open\nf read 0\n"),
            IologError::FieldCount {
                action: Action::Read,
                expected: 4,
                found: 3,
                ..
            }
        ));
        assert!(matches!(
            error("fio version 2 iolog\nf add 0 4096\n"),
            IologError::FieldCount {
                action: Action::Add,
                expected: 2,
                found: 4,
                ..
            }
        ));
        assert!(matches!(
            error("fio version 3 iolog\n1 f add\n2 f\n"),
            IologError::TooFewFields {
                line: 3,
                found: 2,
                needed: 3,
                ..
            }
        ));
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        assert!(matches!(
            error(&format!("fio version 2 iolog\n{long} add\n")),
            IologError::BadFileName { line: 2, .. }
        ));
    }

    #[test]
    fn blktrace_logs_are_refused_by_name() {
        // A little-endian blktrace event starts with the magic | version 7.
        let mut event = (BLKTRACE_MAGIC | 7).to_le_bytes().to_vec();
        event.extend_from_slice(&[0xff, 0xfe, 0, 0, 0x80, 0x90, 0, 0]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.bin");
        std::fs::write(&path, &event).unwrap();
        let e = read(&path).unwrap_err();
        assert!(matches!(e, IologError::Blktrace { .. }), "{e}");
        assert!(
            e.to_string().contains("not supported") || e.to_string().contains("only fio's text")
        );
        // The other byte order, as text that happens to be UTF-8.
        let swapped = String::from_utf8((BLKTRACE_MAGIC | 7).to_be_bytes().to_vec()).unwrap();
        assert!(matches!(
            parse("x", &swapped),
            Err(IologError::Blktrace { .. })
        ));
        std::fs::write(&path, [0xffu8, 0xfe, b'\n']).unwrap();
        assert!(matches!(read(&path), Err(IologError::NotText { .. })));
    }

    #[test]
    fn garbage_lines_are_errors_not_panics() {
        let garbage = [
            "\0\0\0",
            "f",
            "f add f",
            "f read 1 2 3 4 5 6 7 8",
            "f open\u{a0}x",
            "\u{1F600} add",
            "9999999999999999999999999 f add",
            "- - - - -",
            "f read 99999999999999999999 1",
            "\x0b\x0c\r\t",
            "f\u{0}name add",
            "ünïcødé read 1 1",
        ];
        for version in [HEADER_V2, HEADER_V3] {
            for line in garbage {
                let text = format!("{version}\n1 f add\nf add\n{line}\n");
                let _ = parse("g", &text);
            }
            // Truncated at every byte (on character boundaries) of a valid log.
            for end in (0..FIO_V3.len()).filter(|&i| FIO_V3.is_char_boundary(i)) {
                let _ = parse("g", &FIO_V3[..end]);
            }
        }
        // Extra fields fio would ignore or misread are refused, not guessed at.
        assert!(parse("g", "fio version 2 iolog\nf add\nf open\nf read 1 2 3\n").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(
            version in prop::sample::select(vec![HEADER_V2, HEADER_V3, "fio", ""]),
            lines in prop::collection::vec(
                prop::collection::vec(
                    prop_oneof![
                        Just("f".to_string()),
                        Just("g".to_string()),
                        prop::sample::select(vec![
                            "add", "open", "close", "read", "write", "trim", "sync",
                            "datasync", "wait", "sync_file_range",
                        ]).prop_map(str::to_string),
                        any::<u64>().prop_map(|n| n.to_string()),
                        ".{0,8}",
                    ],
                    0..7,
                ).prop_map(|fields| fields.join(" ")),
                0..12,
            ),
        ) {
            let text = format!("{version}\n{}", lines.join("\n"));
            if let Ok(log) = parse("p", &text) {
                for e in &log.entries {
                    prop_assert!(e.file < log.files.len());
                    prop_assert!(e.len <= u64::from(u32::MAX));
                }
            }
        }

        #[test]
        fn parse_never_panics_on_any_text(text in "\\PC{0,200}") {
            let _ = parse("p", &text);
            let _ = parse("p", &format!("{HEADER_V3}\n{text}"));
            let _ = parse("p", &format!("{HEADER_V2}\n{text}"));
        }
    }

    /// `count` I/Os over a 64 MiB range in 4 KiB blocks, every third a write, 10 µs apart.
    fn sample_ios(count: u64) -> Vec<(Action, u64, u64, u64)> {
        (0..count)
            .map(|i| {
                let action = if i % 3 == 2 {
                    Action::Write
                } else {
                    Action::Read
                };
                let offset = (bluepoll_base::rand::splitmix(i) % (64 * MIB / 4096)) * 4096;
                (action, offset, 4096, (i + 1) * 10_000)
            })
            .collect()
    }

    fn write_log(path: &Path, version: IologVersion, ios: &[(Action, u64, u64, u64)]) {
        let mut w = IologWriter::create(path, version, "bluepoll.target").unwrap();
        for &(action, offset, len, time_ns) in ios {
            w.record(action, offset, len, time_ns).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn written_logs_parse_back_to_the_same_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut ios = sample_ios(20);
        ios.push((Action::Trim, 4096, 8192, 300_000));
        // Not a whole microsecond: the file keeps 301 µs.
        ios.push((Action::Sync, 4096, 0, 301_999));
        ios.push((Action::Datasync, 0, 0, 302_000));
        for version in [IologVersion::V2, IologVersion::V3] {
            let path = dir.path().join(format!("v{version}.log"));
            write_log(&path, version, &ios);
            let log = read(&path).unwrap();
            assert_eq!(log.version, version);
            assert_eq!(log.files, ["bluepoll.target"]);
            let stamp = |ns: u64| (version == IologVersion::V3).then_some(ns / 1000 * 1000);
            let mut expected = vec![
                Entry {
                    time_ns: stamp(0),
                    file: 0,
                    action: Action::Add,
                    offset: 0,
                    len: 0,
                },
                Entry {
                    time_ns: stamp(0),
                    file: 0,
                    action: Action::Open,
                    offset: 0,
                    len: 0,
                },
            ];
            expected.extend(ios.iter().map(|&(action, offset, len, ns)| Entry {
                time_ns: stamp(ns),
                file: 0,
                action,
                offset,
                len,
            }));
            expected.push(Entry {
                time_ns: stamp(302_000),
                file: 0,
                action: Action::Close,
                offset: 0,
                len: 0,
            });
            assert_eq!(log.entries, expected);
        }
        let text = std::fs::read_to_string(dir.path().join("v3.log")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..3],
            [
                "fio version 3 iolog",
                "0 bluepoll.target add",
                "0 bluepoll.target open"
            ]
        );
        assert_eq!(
            lines[lines.len() - 2..],
            [
                "302 bluepoll.target datasync 0 0",
                "302 bluepoll.target close"
            ]
        );
        let text = std::fs::read_to_string(dir.path().join("v2.log")).unwrap();
        assert!(
            text.starts_with("fio version 2 iolog\nbluepoll.target add\nbluepoll.target open\n")
        );
    }

    #[test]
    fn writer_refuses_what_fio_cannot_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        for bad in [
            "",
            "has space",
            "tab\there",
            &"x".repeat(MAX_NAME_BYTES + 1),
        ] {
            assert!(matches!(
                IologWriter::create(&path, IologVersion::V3, bad),
                Err(IologError::InvalidName { .. })
            ));
        }
        let mut w = IologWriter::create(&path, IologVersion::V3, "f").unwrap();
        assert!(matches!(
            w.record(Action::Wait, 1, 0, 0),
            Err(IologError::NotInVersion {
                action: Action::Wait,
                ..
            })
        ));
        assert!(matches!(
            w.record(Action::Read, 0, 1 << 32, 0),
            Err(IologError::LengthTooLarge { len }) if len == 1 << 32
        ));
        w.finish().unwrap();
        assert!(matches!(
            IologWriter::create(&dir.path().join("missing/w.log"), IologVersion::V2, "f"),
            Err(IologError::Io { .. })
        ));
        let mut w = IologWriter::create(&path, IologVersion::V2, "f").unwrap();
        w.record(Action::Wait, 7, 0, 0).unwrap();
        w.finish().unwrap();
        let log = read(&path).unwrap();
        assert_eq!(log.entries[2], entry(None, Action::Wait, 7, 0));
    }

    #[test]
    fn push_decimal_writes_every_width() {
        for value in [0, 7, 10, 4096, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, value);
            assert_eq!(out, value.to_string().as_bytes());
        }
    }

    /// Runs fio in `dir`. `None` when fio is not installed: the test then returns quietly,
    /// unless BLUEPOLL_REQUIRE_PEERS=1 (scripts/test-all.sh, which the suite runs with fio
    /// installed) makes a missing fio a failure.
    fn fio(dir: &Path, args: &[&str]) -> Option<Output> {
        match Command::new("fio").args(args).current_dir(dir).output() {
            Ok(out) => Some(out),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if std::env::var_os("BLUEPOLL_REQUIRE_PEERS").is_some_and(|v| v == "1") {
                    panic!("fio is required (BLUEPOLL_REQUIRE_PEERS=1) but not installed");
                }
                None
            }
            Err(e) => panic!("cannot run fio: {e}"),
        }
    }

    /// fio's JSON report of a run that must have succeeded: its one job.
    fn fio_job(out: &Output) -> serde_json::Value {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "fio failed:\n{stdout}\n{stderr}");
        let start = stdout
            .find('{')
            .unwrap_or_else(|| panic!("no JSON from fio:\n{stdout}"));
        let report: serde_json::Value = serde_json::from_str(&stdout[start..]).unwrap();
        let job = report["jobs"][0].clone();
        assert_eq!(
            job["error"], 0,
            "fio reported an error:\n{stdout}\n{stderr}"
        );
        job
    }

    fn total_ios(job: &serde_json::Value, dir: &str) -> u64 {
        job[dir]["total_ios"]
            .as_u64()
            .unwrap_or_else(|| panic!("no {dir}.total_ios in {job}"))
    }

    #[test]
    fn parses_what_fio_writes() {
        let dir = tempfile::tempdir().unwrap();
        // ioengine=null: fio creates no data file, whatever the size.
        let Some(out) = fio(
            dir.path(),
            &[
                "--name=t",
                "--ioengine=null",
                "--size=64M",
                "--bs=4k",
                "--rw=randrw",
                "--number_ios=50",
                "--write_iolog=written.log",
                "--output-format=json",
            ],
        ) else {
            return;
        };
        let job = fio_job(&out);
        let log = read(&dir.path().join("written.log")).unwrap();
        assert_eq!(log.version, IologVersion::V3);
        assert_eq!(log.files, ["t.0.0"]);
        let actions: Vec<Action> = log.entries.iter().map(|e| e.action).collect();
        assert_eq!(actions[..2], [Action::Add, Action::Open]);
        assert_eq!(actions.last(), Some(&Action::Close));
        let ios = &log.entries[2..log.entries.len() - 1];
        let count = |a: Action| ios.iter().filter(|e| e.action == a).count() as u64;
        assert_eq!(count(Action::Read), total_ios(&job, "read"));
        assert_eq!(count(Action::Write), total_ios(&job, "write"));
        assert_eq!(ios.len(), 50);
        for e in ios {
            assert_eq!(e.len, 4096);
            assert_eq!(e.offset % 4096, 0);
            assert!(e.offset < 64 * MIB);
        }
        let times: Vec<u64> = log.entries.iter().map(|e| e.time_ns.unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    }

    #[test]
    fn fio_replays_what_the_writer_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let mut ios = sample_ios(100);
        let writes = ios.iter().filter(|io| io.0 == Action::Write).count() as u64;
        assert!(writes > 10 && writes < 90);
        // A sync between the writes shows fio counts it too.
        ios.insert(50, (Action::Sync, 0, 0, 505_000));
        for version in [IologVersion::V2, IologVersion::V3] {
            let name = format!("ours.v{version}.log");
            write_log(&dir.path().join(&name), version, &ios);
            let Some(out) = fio(
                dir.path(),
                &[
                    "--name=r",
                    "--ioengine=null",
                    "--size=64M",
                    &format!("--read_iolog={name}"),
                    "--output-format=json",
                ],
            ) else {
                return;
            };
            let job = fio_job(&out);
            assert_eq!(total_ios(&job, "read"), 100 - writes, "version {version}");
            assert_eq!(total_ios(&job, "write"), writes, "version {version}");
            assert_eq!(job["sync"]["total_ios"], 1, "version {version}");
            assert_eq!(job["read"]["io_bytes"], (100 - writes) * 4096);
        }
    }

    #[test]
    fn fio_replays_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let text = FIO_V2.replace("/dev/nvme0n1", "dev0");
        std::fs::write(dir.path().join("v2.log"), &text).unwrap();
        let ours = parse("v2", &text).unwrap();
        let count = |a: Action| ours.entries.iter().filter(|e| e.action == a).count() as u64;
        let Some(out) = fio(
            dir.path(),
            &[
                "--name=r",
                "--ioengine=null",
                "--read_iolog=v2.log",
                "--output-format=json",
            ],
        ) else {
            return;
        };
        let job = fio_job(&out);
        assert_eq!(total_ios(&job, "read"), count(Action::Read));
        assert_eq!(total_ios(&job, "write"), count(Action::Write));
        // fio 3.33's replay drops trims ("bad ddir: 2"); Action::Trim says so.
        assert_eq!(total_ios(&job, "trim"), 0);
        // fio counts fsyncs in sync.total_ios, and fsyncs and fdatasyncs in its latencies.
        assert_eq!(job["sync"]["total_ios"], count(Action::Sync));
        assert_eq!(
            job["sync"]["lat_ns"]["N"],
            count(Action::Sync) + count(Action::Datasync)
        );
    }
}
