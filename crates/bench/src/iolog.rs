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
    /// A read of `len` bytes at `offset`.
    Read,
    /// A write of `len` bytes at `offset`.
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
    /// Opens an added name: I/O may go to it until it is closed.
    Open,
    /// Closes an open name.
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
    /// What the line does.
    pub action: Action,
    /// Bytes; 0 for file actions. For [`Action::Wait`], the wait value (see there).
    pub offset: u64,
    /// Bytes, at most `u32::MAX` (fio's reader holds it in 32 bits); 0 for file actions.
    pub len: u64,
}

/// A parsed log: its version, the names it added (in order), and every line after the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iolog {
    /// The format the header names.
    pub version: IologVersion,
    /// The names `add` made known, in order of their first `add`.
    pub files: Vec<String>,
    /// Every action line, in file order (file actions included).
    pub entries: Vec<Entry>,
}

/// Why a log could not be read or written. `label` names the log (usually its path) and `line`
/// counts from 1, the header being line 1.
#[derive(Debug, thiserror::Error)]
pub enum IologError {
    /// The file is a blktrace binary log, which fio replays but this reader does not.
    #[error(
        "{label}: a blktrace binary log; only fio's text iologs (versions 2 and 3) are supported"
    )]
    Blktrace {
        /// The log's label.
        label: String,
    },
    /// The first line is neither version's header.
    #[error(
        "{label}:1: not a fio iolog: the first line must be '{HEADER_V2}' or '{HEADER_V3}', found '{found}'"
    )]
    BadHeader {
        /// The log's label.
        label: String,
        /// The first line (its start, for a long one).
        found: String,
    },
    /// The file is not UTF-8.
    #[error("{label}: not UTF-8 text")]
    NotText {
        /// The log's label.
        label: String,
    },
    /// A line names an action fio's replay does not know.
    #[error(
        "{label}:{line}: unknown action '{action}' (replay knows add, open, close, read, write, trim, sync, datasync, and wait in version 2)"
    )]
    UnknownAction {
        /// The log's label.
        label: String,
        /// The line number, from 1.
        line: usize,
        /// The word in the action's place.
        action: String,
    },
    /// A `wait` line in a version 3 log, where timestamps pace replay instead.
    #[error(
        "{label}:{line}: 'wait' is not allowed in a version 3 iolog (its timestamps pace replay)"
    )]
    WaitInV3 {
        /// The log's label.
        label: String,
        /// The line number, from 1.
        line: usize,
    },
    /// A line too short to hold a name and an action.
    #[error("{label}:{line}: {found} field(s); a version {version} line has at least {needed}")]
    TooFewFields {
        /// The log's label.
        label: String,
        /// The line number, from 1.
        line: usize,
        /// The log's version.
        version: IologVersion,
        /// Fields on the line.
        found: usize,
        /// The fewest a line of this version has.
        needed: usize,
    },
    /// A line with the wrong number of fields for its action.
    #[error(
        "{label}:{line}: a version {version} '{action}' line has {expected} fields, found {found}"
    )]
    FieldCount {
        /// The log's label.
        label: String,
        /// The line number, from 1.
        line: usize,
        /// The log's version.
        version: IologVersion,
        /// The line's action.
        action: Action,
        /// Fields such a line has.
        expected: usize,
        /// Fields on the line.
        found: usize,
    },
    /// A timestamp, offset or length that is not a decimal number fio's reader takes.
    #[error("{label}:{line}: bad {field} '{value}': {reason}")]
    BadNumber {
        /// The log's label.
        label: String,
        /// The line number, from 1.
        line: usize,
        /// Which field: `timestamp`, `offset` or `length`.
        field: &'static str,
        /// The field as written (its start, for a long one).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file name fio's reader would not take back intact.
    #[error("{label}:{line}: bad file name '{name}': {reason}")]
    BadFileName {
        /// The log's label.
        label: String,
        /// The line number, from 1.
        line: usize,
        /// The name (its start, for a long one).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An action on a name no `add` made known.
    #[error("{label}:{line}: '{action}' on '{name}', which was never added")]
    UnknownFile {
        /// The log's label.
        label: String,
        /// The line number, from 1.
        line: usize,
        /// The line's action.
        action: Action,
        /// The name (its start, for a long one).
        name: String,
    },
    /// I/O on a name that is not open.
    #[error("{label}:{line}: '{action}' on '{name}', which is not open (fio aborts on this)")]
    FileNotOpen {
        /// The log's label.
        label: String,
        /// The line number, from 1.
        line: usize,
        /// The line's action.
        action: Action,
        /// The name (its start, for a long one).
        name: String,
    },
    /// [`IologWriter::create`] was given a name a log cannot hold.
    #[error("cannot record file name '{name}' in an iolog: {reason}")]
    InvalidName {
        /// The name (its start, for a long one).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// [`IologWriter::record`] was asked for an action the log's version lacks (`wait` in
    /// version 3).
    #[error("cannot write '{action}' to a version {version} iolog")]
    NotInVersion {
        /// The action.
        action: Action,
        /// The writer's version.
        version: IologVersion,
    },
    /// [`IologWriter::record`] was given a length over `u32::MAX`.
    #[error("I/O length {len} does not fit the 32 bits fio's reader has for it")]
    LengthTooLarge {
        /// The length, bytes.
        len: u64,
    },
    /// Reading or writing the log's file failed.
    #[error("{path}: {source}", path = .path.display())]
    Io {
        /// The log's path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
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
mod tests;
