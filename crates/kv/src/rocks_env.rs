//! The C API the RocksDB FileSystem shim (`rocks_env.cc`, compiled by build.rs) calls, and the
//! one function that makes an Env of it. All of bluepoll's RocksDB FFI is here.
//!
//! Every exported function catches panics (turned into an I/O error status) so none unwinds
//! into C++; every BlueFS error becomes a status code RocksDB maps to its IOStatus kinds:
//! NotFound, NoSpace, Corruption, InvalidArgument, NotSupported, Busy, IOError.
//!
//! Paths: RocksDB is opened with `/` as its DB name (the rocksdb crate creates the DB's
//! directory on the host filesystem before opening, and `/` always exists), with its WAL in
//! `/db.wal` and tables in `/db` and `/db.slow`. BlueFS has one level of directories and no
//! files at its root, so what RocksDB keeps in the DB name's directory (CURRENT, MANIFEST-*,
//! OPTIONS-*, IDENTITY, LOCK and, without level-aware placement, its tables) lives in `db`: a
//! file `/NAME` is `db/NAME`, and the directory `/` is `db`. `.` components and repeated `/`
//! are ignored; deeper paths are refused as InvalidArgument.

use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use bluepoll_bluefs::{BlueFs, BlueFsError, FileReader, FileWriter};

/// Mirrors `bp_status` in rocks_env.cc.
#[repr(C)]
pub struct FfiStatus {
    code: i32,
    msg: [u8; 244],
}

const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const NO_SPACE: i32 = 2;
const CORRUPTION: i32 = 3;
const IO_ERROR: i32 = 4;
const INVALID_ARGUMENT: i32 = 5;
const BUSY: i32 = 7;

const OPEN_CREATE: i32 = 0;
const OPEN_APPEND: i32 = 1;
const OPEN_REUSE: i32 = 2;

unsafe extern "C" {
    fn bp_rocksdb_env_new(fs: *mut c_void) -> *mut librocksdb_sys::rocksdb_env_t;
}

/// A RocksDB Env whose files are `fs`'s (background threads and clock are RocksDB's own).
pub fn rocksdb_env(fs: &BlueFs) -> Result<rocksdb::Env, BlueFsError> {
    let handle = Box::into_raw(Box::new(fs.clone())).cast::<c_void>();
    // SAFETY: `handle` is a leaked Box<BlueFs> the shim owns from here on: it hands it back
    // through bp_fs_release exactly once (when the Env is destroyed, or at once on failure).
    let env = unsafe { bp_rocksdb_env_new(handle) };
    if env.is_null() {
        return Err(BlueFsError::RocksEnv {
            reason: "the shim could not create its FileSystem (out of memory?)".into(),
        });
    }
    // SAFETY: `env` is a fresh rocksdb_env_t from the shim, laid out as db/c.cc's and owned
    // by no one else; rocksdb::Env frees it with rocksdb_env_destroy.
    Ok(unsafe { rocksdb::Env::from_raw(env) })
}

/// RocksDB's own check of every table file's block checksums (DB::VerifyChecksum).
pub fn verify_checksums(db: &rocksdb::DB) -> Result<(), String> {
    use rocksdb::AsRawPtr;
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: the raw handle is valid while `db` is borrowed; RocksDB sets `err` to a malloc'd
    // C string on failure, which is copied and freed here.
    unsafe {
        librocksdb_sys::rocksdb_verify_checksum(db.as_raw_ptr(), &mut err);
        if err.is_null() {
            return Ok(());
        }
        let message = std::ffi::CStr::from_ptr(err).to_string_lossy().into_owned();
        librocksdb_sys::rocksdb_free(err.cast());
        Err(message)
    }
}

/// How long RocksDB waits between attempts to resume after a retryable background error
/// (`bgerror_resume_retry_interval`, 1 s by default); the rocksdb crate has no setter.
pub fn set_error_retry_interval(opts: &mut rocksdb::Options, interval: std::time::Duration) {
    use rocksdb::AsRawPtr;
    let micros = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
    // SAFETY: the raw handle is valid while `opts` is borrowed; the call stores one integer.
    unsafe {
        librocksdb_sys::rocksdb_options_set_bgerror_resume_retry_interval(opts.as_raw_ptr(), micros)
    };
}

/// What a call failed with.
struct CallError {
    code: i32,
    message: String,
}

impl From<BlueFsError> for CallError {
    fn from(e: BlueFsError) -> CallError {
        let code = match &e {
            BlueFsError::NotFound { .. } => NOT_FOUND,
            BlueFsError::NoSpace { .. }
            | BlueFsError::Alloc(bluepoll_bluefs::alloc::AllocError::NoSpace { .. }) => NO_SPACE,
            BlueFsError::Corrupt { .. } | BlueFsError::Format(_) => CORRUPTION,
            BlueFsError::InvalidPath { .. }
            | BlueFsError::Exists { .. }
            | BlueFsError::NotEmpty { .. } => INVALID_ARGUMENT,
            BlueFsError::Busy { .. } => BUSY,
            _ => IO_ERROR,
        };
        CallError {
            code,
            message: e.to_string(),
        }
    }
}

fn invalid(message: String) -> CallError {
    CallError {
        code: INVALID_ARGUMENT,
        message,
    }
}

/// Runs `f`, writes its outcome to `status` and returns the code.
fn run(status: *mut FfiStatus, f: impl FnOnce() -> Result<(), CallError>) -> i32 {
    let outcome = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(CallError {
            code: IO_ERROR,
            message: format!("BlueFS panicked: {what}"),
        })
    });
    let (code, message) = match outcome {
        Ok(()) => (OK, String::new()),
        Err(e) => (e.code, e.message),
    };
    if !status.is_null() {
        // SAFETY: `status` is not null (checked) and points to the bp_status the shim's `call`
        // keeps on its stack until this function returns; nothing else reads or writes it
        // meanwhile, and FfiStatus has its layout (repr(C): i32, then 244 bytes).
        let status = unsafe { &mut *status };
        status.code = code;
        let n = message.len().min(status.msg.len() - 1);
        // Cut on a character boundary so the message stays valid UTF-8.
        let n = (0..=n)
            .rev()
            .find(|&i| message.is_char_boundary(i))
            .unwrap_or(0);
        status.msg[..n].copy_from_slice(&message.as_bytes()[..n]);
        status.msg[n] = 0;
    }
    code
}

/// # Safety
/// `ptr` must point to `len` readable bytes (or `len` be 0).
unsafe fn bytes<'a>(ptr: *const c_char, len: usize) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: `len` is not 0, and by this function's contract `ptr` points to `len` readable
    // bytes that stay unchanged for `'a`: every caller passes the data and size of a
    // std::string or Slice the shim holds until the exported call returns, and uses the slice
    // only within that call. u8 needs no alignment, and a C++ object is under isize::MAX bytes.
    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
}

/// The BlueFS directory RocksDB's DB-name directory (`/`) stands for.
const ROOT_DIR: &str = "db";

fn path_parts(raw: &[u8]) -> Result<Vec<&str>, CallError> {
    let text = std::str::from_utf8(raw).map_err(|_| invalid("path is not UTF-8".into()))?;
    let parts: Vec<&str> = text
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.len() > 2 || parts.contains(&"..") {
        return Err(invalid(format!(
            "{text}: BlueFS holds DIR/NAME paths, one directory deep"
        )));
    }
    Ok(parts)
}

/// RocksDB's name for a file as a BlueFS path (see the module comment).
fn file_path(raw: &[u8]) -> Result<String, CallError> {
    match path_parts(raw)?.as_slice() {
        [name] => Ok(format!("{ROOT_DIR}/{name}")),
        [dir, name] => Ok(format!("{dir}/{name}")),
        _ => Err(invalid("an empty path names no file".into())),
    }
}

/// RocksDB's name for a directory as a BlueFS directory.
fn dir_path(raw: &[u8]) -> Result<String, CallError> {
    match path_parts(raw)?.as_slice() {
        [] => Ok(ROOT_DIR.to_owned()),
        [dir] => Ok((*dir).to_owned()),
        _ => Err(invalid(format!(
            "{}: BlueFS directories are one level deep",
            String::from_utf8_lossy(raw)
        ))),
    }
}

/// Whether RocksDB's `raw` names a directory (Some(true)), a file (Some(false)) or nothing.
fn kind_of(fs: &BlueFs, raw: &[u8]) -> Result<Option<bool>, CallError> {
    if let Ok(dir) = dir_path(raw)
        && fs.dir_exists(&dir)
    {
        return Ok(Some(true));
    }
    Ok(fs.exists(&file_path(raw)?).then_some(false))
}

/// # Safety
/// `fs` must be a handle from `rocksdb_env` not yet released.
unsafe fn fs_of<'a>(fs: *mut c_void) -> &'a BlueFs {
    // SAFETY: by this function's contract `fs` is the pointer `rocksdb_env` made with
    // Box::into_raw(Box<BlueFs>) and the shim has not released it: its BlueFileSystem owns it
    // and releases it only in its destructor, after every call it makes through it, so the
    // BlueFs is alive for `'a` (one such call). Only shared references are made, and BlueFs is
    // Sync, so RocksDB's threads may hold them at once.
    unsafe { &*fs.cast::<BlueFs>() }
}

/// `run` for a call on one file: `op` gets the filesystem and the file's BlueFS path.
///
/// # Safety
/// `fs` is a live handle; `path` points to `len` bytes.
unsafe fn on_file(
    fs: *mut c_void,
    path: *const c_char,
    len: usize,
    status: *mut FfiStatus,
    op: impl FnOnce(&BlueFs, &str) -> Result<(), BlueFsError>,
) -> i32 {
    run(status, || {
        // SAFETY: this function's contract: `fs` is a live handle and `path` points to `len`
        // bytes, both valid until on_file returns; the references end with this closure,
        // which runs before that.
        let (fs, raw) = unsafe { (fs_of(fs), bytes(path, len)) };
        Ok(op(fs, &file_path(raw)?)?)
    })
}

/// `run` for a call on two files (rename, link).
///
/// # Safety
/// `fs` is a live handle; `from` and `to` point to `from_len` and `to_len` bytes.
unsafe fn on_two_files(
    fs: *mut c_void,
    (from, from_len): (*const c_char, usize),
    (to, to_len): (*const c_char, usize),
    status: *mut FfiStatus,
    op: impl FnOnce(&BlueFs, &str, &str) -> Result<(), BlueFsError>,
) -> i32 {
    run(status, || {
        // SAFETY: this function's contract: `fs` is a live handle and `from`/`to` point to
        // `from_len`/`to_len` bytes, all valid until on_two_files returns; the references end
        // with this closure, which runs before that.
        let (fs, from, to) = unsafe { (fs_of(fs), bytes(from, from_len), bytes(to, to_len)) };
        Ok(op(fs, &file_path(from)?, &file_path(to)?)?)
    })
}

// ---- filesystem calls (each `# Safety`: pointers as the shim passes them: a live handle,
// byte ranges of the given lengths, valid out-pointers) ----

/// # Safety
/// `fs` is a handle from `rocksdb_env`; called once, by the shim's FileSystem destructor.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_fs_release(fs: *mut c_void) {
    // SAFETY: `fs` is the pointer `rocksdb_env` got from Box::into_raw(Box<BlueFs>). The shim
    // calls this exactly once: from ~BlueFileSystem, after the last call through the handle,
    // or from bp_rocksdb_env_new when it could not construct that FileSystem.
    drop(unsafe { Box::from_raw(fs.cast::<BlueFs>()) });
}

/// # Safety
/// See the section comment.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_fs_exists(
    fs: *mut c_void,
    path: *const c_char,
    len: usize,
    status: *mut FfiStatus,
) -> i32 {
    run(status, || {
        // SAFETY: `fs` is the shim's live handle (the Box<BlueFs> from `rocksdb_env`, released only
        // when its BlueFileSystem is destroyed, after its last call), and `path` is the data of a
        // std::string of `len` bytes RocksDB passed the shim, alive and unchanged until this call
        // returns.
        let (fs, raw) = unsafe { (fs_of(fs), bytes(path, len)) };
        match kind_of(fs, raw)? {
            Some(_) => Ok(()),
            None => Err(BlueFsError::NotFound {
                path: String::from_utf8_lossy(raw).into_owned(),
            }
            .into()),
        }
    })
}

/// # Safety
/// See the section comment; `add` is called with each name and `ctx`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_fs_children(
    fs: *mut c_void,
    dir: *const c_char,
    len: usize,
    add: unsafe extern "C" fn(*mut c_void, *const c_char, usize),
    ctx: *mut c_void,
    status: *mut FfiStatus,
) -> i32 {
    run(status, || {
        // SAFETY: `fs` is the shim's live handle (the Box<BlueFs> from `rocksdb_env`, released only
        // when its BlueFileSystem is destroyed, after its last call), and `dir` is the data of a
        // std::string of `len` bytes RocksDB passed the shim, alive and unchanged until this call
        // returns.
        let (fs, raw) = unsafe { (fs_of(fs), bytes(dir, len)) };
        for name in fs.readdir(&dir_path(raw)?)? {
            // SAFETY: `add` is the shim's add_child and `ctx` the ChildList its GetChildren
            // passed, alive for this call; add_child copies the `name.len()` bytes at
            // `name.as_ptr()` into a new std::string before returning, catches any C++
            // exception (it is noexcept, so none unwinds into this frame), and `name` lives
            // until the end of this loop iteration.
            unsafe { add(ctx, name.as_ptr().cast(), name.len()) };
        }
        Ok(())
    })
}

/// # Safety
/// See the section comment.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_fs_delete(
    fs: *mut c_void,
    path: *const c_char,
    len: usize,
    status: *mut FfiStatus,
) -> i32 {
    // SAFETY: on_file's contract holds: `fs` is the shim's live handle (the Box<BlueFs> from
    // `rocksdb_env`, released only when its BlueFileSystem is destroyed, after its last call), and
    // `path` is the data of a std::string of `len` bytes the shim holds for this call.
    unsafe { on_file(fs, path, len, status, |fs, path| fs.unlink(path)) }
}

/// # Safety
/// See the section comment.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_fs_mkdir(
    fs: *mut c_void,
    dir: *const c_char,
    len: usize,
    if_missing: i32,
    status: *mut FfiStatus,
) -> i32 {
    run(status, || {
        // SAFETY: `fs` is the shim's live handle (the Box<BlueFs> from `rocksdb_env`, released only
        // when its BlueFileSystem is destroyed, after its last call), and `dir` is the data of a
        // std::string of `len` bytes RocksDB passed the shim, alive and unchanged until this call
        // returns.
        let (fs, raw) = unsafe { (fs_of(fs), bytes(dir, len)) };
        match fs.mkdir(&dir_path(raw)?) {
            Err(BlueFsError::Exists { .. }) if if_missing != 0 => Ok(()),
            other => Ok(other?),
        }
    })
}

/// # Safety
/// See the section comment.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_fs_rmdir(
    fs: *mut c_void,
    dir: *const c_char,
    len: usize,
    status: *mut FfiStatus,
) -> i32 {
    run(status, || {
        // SAFETY: `fs` is the shim's live handle (the Box<BlueFs> from `rocksdb_env`, released only
        // when its BlueFileSystem is destroyed, after its last call), and `dir` is the data of a
        // std::string of `len` bytes RocksDB passed the shim, alive and unchanged until this call
        // returns.
        let (fs, raw) = unsafe { (fs_of(fs), bytes(dir, len)) };
        Ok(fs.rmdir(&dir_path(raw)?)?)
    })
}

/// # Safety
/// See the section comment.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_fs_is_dir(
    fs: *mut c_void,
    path: *const c_char,
    len: usize,
    is_dir: *mut i32,
    status: *mut FfiStatus,
) -> i32 {
    run(status, || {
        // SAFETY: `fs` is the shim's live handle (the Box<BlueFs> from `rocksdb_env`, released only
        // when its BlueFileSystem is destroyed, after its last call), and `path` is the data of a
        // std::string of `len` bytes RocksDB passed the shim, alive and unchanged until this call
        // returns.
        let (fs, raw) = unsafe { (fs_of(fs), bytes(path, len)) };
        let Some(dir) = kind_of(fs, raw)? else {
            return Err(BlueFsError::NotFound {
                path: String::from_utf8_lossy(raw).into_owned(),
            }
            .into());
        };
        // SAFETY: `is_dir` points to the int32_t local of the shim's IsDirectory, aligned,
        // writable and read by no one until this call returns.
        unsafe { *is_dir = i32::from(dir) };
        Ok(())
    })
}

/// # Safety
/// See the section comment.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_fs_stat(
    fs: *mut c_void,
    path: *const c_char,
    len: usize,
    size: *mut u64,
    mtime_ns: *mut u64,
    status: *mut FfiStatus,
) -> i32 {
    run(status, || {
        // SAFETY: `fs` is the shim's live handle (the Box<BlueFs> from `rocksdb_env`, released only
        // when its BlueFileSystem is destroyed, after its last call), and `path` is the data of a
        // std::string of `len` bytes RocksDB passed the shim, alive and unchanged until this call
        // returns.
        let (fs, raw) = unsafe { (fs_of(fs), bytes(path, len)) };
        let stat = fs.stat(&file_path(raw)?)?;
        // SAFETY: `size` and `mtime_ns` point to uint64_t the shim passes for this call (its
        // locals, or the out-parameter RocksDB gave GetFileSize), aligned, writable and read by
        // no one until it returns.
        unsafe {
            *size = stat.size;
            *mtime_ns = stat.mtime_ns;
        }
        Ok(())
    })
}

/// # Safety
/// See the section comment.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_fs_rename(
    fs: *mut c_void,
    from: *const c_char,
    from_len: usize,
    to: *const c_char,
    to_len: usize,
    status: *mut FfiStatus,
) -> i32 {
    // SAFETY: on_two_files's contract holds: `fs` is the shim's live handle (the Box<BlueFs> from
    // `rocksdb_env`, released only when its BlueFileSystem is destroyed, after its last call), and
    // `from`/`to` are the data of std::strings of `from_len`/`to_len` bytes the shim holds for this
    // call.
    unsafe {
        on_two_files(fs, (from, from_len), (to, to_len), status, |fs, a, b| {
            fs.rename(a, b)
        })
    }
}

/// # Safety
/// See the section comment.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_fs_link(
    fs: *mut c_void,
    from: *const c_char,
    from_len: usize,
    to: *const c_char,
    to_len: usize,
    status: *mut FfiStatus,
) -> i32 {
    // SAFETY: on_two_files's contract holds: `fs` is the shim's live handle (the Box<BlueFs> from
    // `rocksdb_env`, released only when its BlueFileSystem is destroyed, after its last call), and
    // `from`/`to` are the data of std::strings of `from_len`/`to_len` bytes the shim holds for this
    // call.
    unsafe {
        on_two_files(fs, (from, from_len), (to, to_len), status, |fs, a, b| {
            fs.link(a, b)
        })
    }
}

/// # Safety
/// See the section comment.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_fs_truncate(
    fs: *mut c_void,
    path: *const c_char,
    len: usize,
    size: u64,
    status: *mut FfiStatus,
) -> i32 {
    // SAFETY: on_file's contract holds: `fs` is the shim's live handle (the Box<BlueFs> from
    // `rocksdb_env`, released only when its BlueFileSystem is destroyed, after its last call), and
    // `path` is the data of a std::string of `len` bytes the shim holds for this call.
    unsafe { on_file(fs, path, len, status, |fs, path| fs.truncate(path, size)) }
}

/// # Safety
/// See the section comment.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_fs_lock(
    fs: *mut c_void,
    path: *const c_char,
    len: usize,
    status: *mut FfiStatus,
) -> i32 {
    // SAFETY: on_file's contract holds: `fs` is the shim's live handle (the Box<BlueFs> from
    // `rocksdb_env`, released only when its BlueFileSystem is destroyed, after its last call), and
    // `path` is the data of a std::string of `len` bytes the shim holds for this call.
    unsafe { on_file(fs, path, len, status, |fs, path| fs.lock_file(path)) }
}

/// # Safety
/// See the section comment.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_fs_unlock(
    fs: *mut c_void,
    path: *const c_char,
    len: usize,
    status: *mut FfiStatus,
) -> i32 {
    // SAFETY: on_file's contract holds: `fs` is the shim's live handle (the Box<BlueFs> from
    // `rocksdb_env`, released only when its BlueFileSystem is destroyed, after its last call), and
    // `path` is the data of a std::string of `len` bytes the shim holds for this call.
    unsafe { on_file(fs, path, len, status, |fs, path| fs.unlock_file(path)) }
}

/// # Safety
/// See the section comment.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_fs_free_space(
    fs: *mut c_void,
    free_bytes: *mut u64,
    status: *mut FfiStatus,
) -> i32 {
    run(status, || {
        // SAFETY: `fs` is the shim's live handle (the Box<BlueFs> from `rocksdb_env`, released only
        // when its BlueFileSystem is destroyed, after its last call).
        let fs = unsafe { fs_of(fs) };
        let free = fs.usage().devices.iter().flatten().map(|d| d.free).sum();
        // SAFETY: `free_bytes` is the out-parameter RocksDB gave GetFreeSpace, a valid, aligned
        // uint64_t it reads only after this call returns.
        unsafe { *free_bytes = free };
        Ok(())
    })
}

// ---- files: a writer or reader handle is a leaked Box, freed by close / free ----

/// # Safety
/// See the section comment. Returns null on failure (with `status` set).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_writer_open(
    fs: *mut c_void,
    path: *const c_char,
    len: usize,
    mode: i32,
    old_path: *const c_char,
    old_len: usize,
    status: *mut FfiStatus,
) -> *mut c_void {
    let mut writer = None;
    run(status, || {
        // SAFETY: `fs` is the shim's live handle (the Box<BlueFs> from `rocksdb_env`, released only
        // when its BlueFileSystem is destroyed, after its last call); `path` and `old_path` are the
        // data of std::strings of `len` and `old_len` bytes (the old name empty unless reusing) the
        // shim holds until this call returns.
        let (fs, raw, old) = unsafe { (fs_of(fs), bytes(path, len), bytes(old_path, old_len)) };
        let path = file_path(raw)?;
        writer = Some(match mode {
            OPEN_CREATE => fs.create(&path)?,
            OPEN_APPEND if fs.exists(&path) => fs.open_append(&path)?,
            OPEN_APPEND => fs.create(&path)?,
            OPEN_REUSE => fs.reuse(&file_path(old)?, &path)?,
            other => return Err(invalid(format!("unknown open mode {other}"))),
        });
        Ok(())
    });
    writer.map_or(std::ptr::null_mut(), |w| {
        Box::into_raw(Box::new(w)).cast::<c_void>()
    })
}

/// # Safety
/// `w` is a live handle from `bp_writer_open`, used by one thread at a time (RocksDB's file
/// writer serialises its calls).
unsafe fn writer_of<'a>(w: *mut c_void) -> &'a mut FileWriter {
    // SAFETY: by this function's contract `w` is the pointer bp_writer_open made with
    // Box::into_raw(Box<FileWriter>), not yet closed, and no other reference to it is in use during
    // `'a` (one call): a BlueWritableFile is driven by one thread at a time (RocksDB calls a
    // writable file's methods one at a time, and the shim leaves IsSyncThreadSafe() false, so not
    // even Sync overlaps Append) and BlueLogger holds its mutex across each call.
    unsafe { &mut *w.cast::<FileWriter>() }
}

/// # Safety
/// See `writer_of`; `data` points to `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_writer_append(
    w: *mut c_void,
    data: *const c_char,
    len: usize,
    status: *mut FfiStatus,
) -> i32 {
    run(status, || {
        // SAFETY: `w` is a writer handle from bp_writer_open that the shim has not closed (it nulls
        // its copy when it calls bp_writer_close), so the FileWriter is alive; and it is exclusive
        // for this call: a BlueWritableFile is driven by one thread at a time (RocksDB calls a
        // writable file's methods one at a time, and the shim leaves IsSyncThreadSafe() false, so
        // not even Sync overlaps Append) and BlueLogger holds its mutex across each call. `data` is
        // the data of RocksDB's Slice of `len` bytes (or the logger's line buffer), alive and
        // unchanged until this call returns.
        let (w, data) = unsafe { (writer_of(w), bytes(data, len)) };
        Ok(w.append(data)?)
    })
}

/// # Safety
/// See `writer_of`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_writer_fsync(w: *mut c_void, status: *mut FfiStatus) -> i32 {
    run(status, || {
        // SAFETY: `w` is a writer handle from bp_writer_open that the shim has not closed (it nulls
        // its copy when it calls bp_writer_close), so the FileWriter is alive; and it is exclusive
        // for this call: a BlueWritableFile is driven by one thread at a time (RocksDB calls a
        // writable file's methods one at a time, and the shim leaves IsSyncThreadSafe() false, so
        // not even Sync overlaps Append) and BlueLogger holds its mutex across each call.
        Ok(unsafe { writer_of(w) }.fsync()?)
    })
}

/// # Safety
/// See `writer_of`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_writer_truncate(
    w: *mut c_void,
    size: u64,
    status: *mut FfiStatus,
) -> i32 {
    run(status, || {
        // SAFETY: `w` is a writer handle from bp_writer_open that the shim has not closed (it nulls
        // its copy when it calls bp_writer_close), so the FileWriter is alive; and it is exclusive
        // for this call: a BlueWritableFile is driven by one thread at a time (RocksDB calls a
        // writable file's methods one at a time, and the shim leaves IsSyncThreadSafe() false, so
        // not even Sync overlaps Append) and BlueLogger holds its mutex across each call.
        Ok(unsafe { writer_of(w) }.truncate(size)?)
    })
}

/// # Safety
/// See `writer_of`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_writer_size(w: *mut c_void) -> u64 {
    // SAFETY: `w` is a live writer handle (the shim's GetFileSize checks it has not closed it)
    // and BlueWritableFile's calls are serialised, so no other reference to the FileWriter is
    // in use while this one reads its size.
    catch_unwind(AssertUnwindSafe(|| unsafe { writer_of(w) }.size())).unwrap_or(0)
}

/// Closes (fsyncs) and frees the writer; the handle is gone even when this fails.
///
/// # Safety
/// See `writer_of`; the handle is not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_writer_close(w: *mut c_void, status: *mut FfiStatus) -> i32 {
    run(status, || {
        // SAFETY: `w` came from Box::into_raw(Box<FileWriter>) in bp_writer_open. The shim
        // calls this once per handle and never uses it again: BlueWritableFile::Close and
        // BlueLogger::CloseLocked null their copy first (the logger under its mutex).
        let writer = unsafe { Box::from_raw(w.cast::<FileWriter>()) };
        Ok(writer.close()?)
    })
}

/// # Safety
/// See the section comment. Returns null on failure (with `status` set).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_reader_open(
    fs: *mut c_void,
    path: *const c_char,
    len: usize,
    status: *mut FfiStatus,
) -> *mut c_void {
    let mut reader = None;
    run(status, || {
        // SAFETY: `fs` is the shim's live handle (the Box<BlueFs> from `rocksdb_env`, released only
        // when its BlueFileSystem is destroyed, after its last call), and `path` is the data of a
        // std::string of `len` bytes RocksDB passed the shim, alive and unchanged until this call
        // returns.
        let (fs, raw) = unsafe { (fs_of(fs), bytes(path, len)) };
        reader = Some(fs.open_read(&file_path(raw)?)?);
        Ok(())
    });
    reader.map_or(std::ptr::null_mut(), |r| {
        Box::into_raw(Box::new(r)).cast::<c_void>()
    })
}

/// Reads up to `len` bytes at `offset` into `buf`; `got` is how many (fewer at the end).
/// Safe from many threads at once on one handle.
///
/// # Safety
/// `r` is a live handle from `bp_reader_open`; `buf` has room for `len` bytes, which the
/// device never sees (it reads into its own buffers).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_reader_read_at(
    r: *mut c_void,
    offset: u64,
    buf: *mut c_char,
    len: usize,
    got: *mut usize,
    status: *mut FfiStatus,
) -> i32 {
    run(status, || {
        // SAFETY: `r` came from Box::into_raw(Box<FileReader>) in bp_reader_open and is freed
        // only by the destructor of the shim's file object that owns it, after its last read,
        // so it is alive for this call. RocksDB may read one random-access file from several
        // threads at once: only shared references are made, FileReader::read_at takes &self,
        // and FileReader is Sync.
        let reader = unsafe { &*r.cast::<FileReader>() };
        let out: &mut [u8] = if len == 0 {
            &mut []
        } else {
            // SAFETY: `buf` is RocksDB's `scratch` for a read of `len` bytes: at least `len`
            // writable bytes, not null since `len` > 0, that nothing else touches until this
            // call returns (a reader never hands it to the device: it reads into its own
            // buffers and copies).
            unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) }
        };
        let n = reader.read_at(offset, out)?;
        // SAFETY: `got` points to the size_t local of the shim's read_at, aligned, writable
        // and read only after this call returns.
        unsafe { *got = n };
        Ok(())
    })
}

/// # Safety
/// `r` is a live handle from `bp_reader_open`, not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bp_reader_free(r: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `r` came from Box::into_raw(Box<FileReader>) in bp_reader_open; the shim
        // calls this once, from the destructor of the file object that owns the handle, after
        // its last read, so the Box is reclaimed exactly once and never used again.
        drop(unsafe { Box::from_raw(r.cast::<FileReader>()) })
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rocksdb_paths_become_bluefs_paths() {
        let file = |s: &str| file_path(s.as_bytes()).ok();
        let dir = |s: &str| dir_path(s.as_bytes()).ok();
        assert_eq!(file("/db/000012.sst").as_deref(), Some("db/000012.sst"));
        assert_eq!(
            file("db.wal/000003.log").as_deref(),
            Some("db.wal/000003.log")
        );
        assert_eq!(file("//CURRENT").as_deref(), Some("db/CURRENT"));
        assert_eq!(
            file("/./MANIFEST-000005").as_deref(),
            Some("db/MANIFEST-000005")
        );
        assert_eq!(file("/"), None);
        assert_eq!(file("/a/b/c"), None);
        assert_eq!(file("/db/../x"), None);
        assert_eq!(dir("/").as_deref(), Some("db"));
        assert_eq!(dir("/db.slow/").as_deref(), Some("db.slow"));
        assert_eq!(dir("/db/x"), None);
    }

    #[test]
    fn statuses_carry_code_and_a_terminated_message() {
        let mut st = FfiStatus {
            code: -1,
            msg: [0xff; 244],
        };
        let code = run(&mut st, || {
            Err(BlueFsError::NotFound {
                path: "db/x".into(),
            }
            .into())
        });
        assert_eq!((code, st.code), (NOT_FOUND, NOT_FOUND));
        let end = st.msg.iter().position(|&b| b == 0).unwrap();
        assert!(
            std::str::from_utf8(&st.msg[..end])
                .unwrap()
                .contains("db/x")
        );
        let code = run(&mut st, || panic!("boom"));
        assert_eq!(code, IO_ERROR);
        let long = "é".repeat(400);
        run(&mut st, || Err(invalid(long.clone())));
        let end = st.msg.iter().position(|&b| b == 0).unwrap();
        assert!(std::str::from_utf8(&st.msg[..end]).is_ok());
    }
}
