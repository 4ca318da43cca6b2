//! Log ops: the metadata changes a frame's payload carries, and their encoding.

use super::codec::{Reader, put_extents, put_fnode, put_name, put_u8, put_u32, put_u64};
use super::{BLOCK, Extent, Fnode};

/// One metadata change recorded in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogOp {
    /// The first op of a new filesystem's first frame, written by mkfs; changes nothing.
    Init {
        /// When mkfs ran, in ns since the Unix epoch.
        created_ns: u64,
    },
    /// Creates an empty directory. Directories do not nest: every one is a name of its own.
    DirCreate {
        /// The new directory's name (at most [`MAX_NAME_LEN`](super::MAX_NAME_LEN) bytes).
        name: String,
    },
    /// Removes a directory, which must be empty.
    DirRemove {
        /// The directory's name.
        name: String,
    },
    /// Gives file `ino` the name `name` in directory `dir` and counts one more link to it: a
    /// new file's first name, a rename's target, or a hard link.
    DirLink {
        /// The directory, which must exist.
        dir: String,
        /// The name, not yet taken in `dir`.
        name: String,
        /// The file, which an earlier `FileUpdate` created.
        ino: u64,
    },
    /// Removes the name `name` from directory `dir` and counts one link less to its file; the
    /// file itself goes only with a `FileRemove`.
    DirUnlink {
        /// The directory.
        dir: String,
        /// The name to remove.
        name: String,
    },
    /// The full fnode, replacing any earlier one with the same ino.
    FileUpdate(Fnode),
    /// New size and mtime, and extents appended to the file's list.
    FileUpdateDelta {
        /// The file.
        ino: u64,
        /// The file's new size in bytes.
        size: u64,
        /// The file's new modification time, in ns since the Unix epoch.
        mtime_ns: u64,
        /// Extents added to the end of the file's list, in file order (merged into the last
        /// one when contiguous); may be empty.
        appended: Vec<Extent>,
    },
    /// Removes file `ino`, whose last name is gone; its space is freed once no open handle
    /// uses it.
    FileRemove {
        /// The file.
        ino: u64,
    },
    /// Like `FileUpdateDelta`, for an fsync that wrote the appended bytes and this frame under
    /// one flush: bytes `data_from..size` of the file have crc32c `data_crc`. Replay checks
    /// them when this is in the log's last frame (only the last can have been cut short) and,
    /// if they do not match, ends the log before that frame.
    FileAppendChecked {
        /// The file.
        ino: u64,
        /// The file's new size in bytes.
        size: u64,
        /// The file's new modification time, in ns since the Unix epoch.
        mtime_ns: u64,
        /// Extents added to the end of the file's list, in file order (merged into the last
        /// one when contiguous); may be empty.
        appended: Vec<Extent>,
        /// First byte of the appended range: the size the previous fsync committed.
        data_from: u64,
        /// crc32c of the file's bytes `data_from..size`.
        data_crc: u32,
    },
    /// An append whose bytes travel in the log record itself: the file's bytes from
    /// `data_from` (block-aligned: the partial block before the append is repeated whole) to
    /// `size`, which is `data_from + data.len()`. The file's own extents get them later; until
    /// then (and at every replay) this record is their durable copy.
    FileAppendInline {
        /// The file.
        ino: u64,
        /// The file's new size in bytes.
        size: u64,
        /// The file's new modification time, in ns since the Unix epoch.
        mtime_ns: u64,
        /// Extents added to the end of the file's list, in file order (merged into the last
        /// one when contiguous); may be empty.
        appended: Vec<Extent>,
        /// Where `data` starts in the file: the start of the block the append began in (a
        /// multiple of [`BLOCK_SIZE`](super::BLOCK_SIZE)).
        data_from: u64,
        /// The file's bytes `data_from..size` (at most [`MAX_INLINE_DATA`]).
        data: Vec<u8>,
    },
    /// The next frame starts at this byte offset of the log file.
    Jump {
        /// Byte offset in the log file.
        offset: u64,
    },
    /// The next frame's sequence number.
    JumpSeq {
        /// The sequence number the next frame carries.
        seq: u64,
    },
}

// Payload: op count u32, then each op as a tag byte and its fields.
//
//  tag  op                 fields after the tag
//    1  Init               created_ns u64
//    2  DirCreate          name
//    3  DirRemove          name
//    4  DirLink            dir name, name, ino u64
//    5  DirUnlink          dir name, name
//    6  FileUpdate         fnode: ino u64, size u64, mtime_ns u64, extent count u32, extents
//    7  FileUpdateDelta    ino u64, size u64, mtime_ns u64, extent count u32, appended extents
//    8  FileRemove         ino u64
//    9  Jump               offset u64
//   10  JumpSeq            seq u64
//   11  FileAppendChecked  ino u64, size u64, mtime_ns u64, extent count u32, appended extents,
//                          data_from u64, data_crc u32 (crc32c of file bytes data_from..size)
//   12  FileAppendInline   ino u64, size u64, mtime_ns u64, extent count u32, appended extents,
//                          data_from u64 (a multiple of 4096), data length u32
//                          (= size - data_from, ≤ MAX_INLINE_DATA), data bytes
//  name   = length u16 (≤ 4096), then that many bytes of UTF-8
//  extent = device u8 (0 wal, 1 db, 2 slow), offset u64, length u64 (> 0, offset + length ≤ u64::MAX)
// Tag 0 is never an op, so zeroed bytes cannot pass for one.
pub(super) const TAG_INIT: u8 = 1;
pub(super) const TAG_DIR_CREATE: u8 = 2;
pub(super) const TAG_DIR_REMOVE: u8 = 3;
pub(super) const TAG_DIR_LINK: u8 = 4;
pub(super) const TAG_DIR_UNLINK: u8 = 5;
pub(super) const TAG_FILE_UPDATE: u8 = 6;
pub(super) const TAG_FILE_UPDATE_DELTA: u8 = 7;
pub(super) const TAG_FILE_REMOVE: u8 = 8;
pub(super) const TAG_JUMP: u8 = 9;
pub(super) const TAG_JUMP_SEQ: u8 = 10;
pub(super) const TAG_FILE_APPEND_CHECKED: u8 = 11;
pub(super) const TAG_FILE_APPEND_INLINE: u8 = 12;

/// Most bytes one inline append may carry (the writer's limit is far lower; this bounds what a
/// corrupt record can make the decoder allocate).
pub const MAX_INLINE_DATA: usize = 16 << 20;

/// Shortest encoded op (DirCreate of an empty name: tag + u16), bounding a corrupt op count.
pub(super) const MIN_OP_LEN: usize = 1 + 2;

/// The fields every append op starts with.
fn put_append(out: &mut Vec<u8>, tag: u8, ino: u64, size: u64, mtime_ns: u64, appended: &[Extent]) {
    put_u8(out, tag);
    put_u64(out, ino);
    put_u64(out, size);
    put_u64(out, mtime_ns);
    put_extents(out, appended);
}

pub(super) fn put_op(out: &mut Vec<u8>, op: &LogOp) {
    match op {
        LogOp::Init { created_ns } => {
            put_u8(out, TAG_INIT);
            put_u64(out, *created_ns);
        }
        LogOp::DirCreate { name } => {
            put_u8(out, TAG_DIR_CREATE);
            put_name(out, name);
        }
        LogOp::DirRemove { name } => {
            put_u8(out, TAG_DIR_REMOVE);
            put_name(out, name);
        }
        LogOp::DirLink { dir, name, ino } => {
            put_u8(out, TAG_DIR_LINK);
            put_name(out, dir);
            put_name(out, name);
            put_u64(out, *ino);
        }
        LogOp::DirUnlink { dir, name } => {
            put_u8(out, TAG_DIR_UNLINK);
            put_name(out, dir);
            put_name(out, name);
        }
        LogOp::FileUpdate(fnode) => {
            put_u8(out, TAG_FILE_UPDATE);
            put_fnode(out, fnode);
        }
        LogOp::FileUpdateDelta {
            ino,
            size,
            mtime_ns,
            appended,
        } => {
            put_append(out, TAG_FILE_UPDATE_DELTA, *ino, *size, *mtime_ns, appended);
        }
        LogOp::FileAppendChecked {
            ino,
            size,
            mtime_ns,
            appended,
            data_from,
            data_crc,
        } => {
            put_append(
                out,
                TAG_FILE_APPEND_CHECKED,
                *ino,
                *size,
                *mtime_ns,
                appended,
            );
            put_u64(out, *data_from);
            put_u32(out, *data_crc);
        }
        LogOp::FileAppendInline {
            ino,
            size,
            mtime_ns,
            appended,
            data_from,
            data,
        } => {
            put_append(
                out,
                TAG_FILE_APPEND_INLINE,
                *ino,
                *size,
                *mtime_ns,
                appended,
            );
            put_u64(out, *data_from);
            assert!(
                data.len() <= MAX_INLINE_DATA,
                "inline append over the limit"
            );
            put_u32(out, data.len() as u32);
            out.extend_from_slice(data);
        }
        LogOp::FileRemove { ino } => {
            put_u8(out, TAG_FILE_REMOVE);
            put_u64(out, *ino);
        }
        LogOp::Jump { offset } => {
            put_u8(out, TAG_JUMP);
            put_u64(out, *offset);
        }
        LogOp::JumpSeq { seq } => {
            put_u8(out, TAG_JUMP_SEQ);
            put_u64(out, *seq);
        }
    }
}

fn op_kind(tag: u8) -> Option<&'static str> {
    Some(match tag {
        TAG_INIT => "Init",
        TAG_DIR_CREATE => "DirCreate",
        TAG_DIR_REMOVE => "DirRemove",
        TAG_DIR_LINK => "DirLink",
        TAG_DIR_UNLINK => "DirUnlink",
        TAG_FILE_UPDATE => "FileUpdate",
        TAG_FILE_UPDATE_DELTA => "FileUpdateDelta",
        TAG_FILE_REMOVE => "FileRemove",
        TAG_JUMP => "Jump",
        TAG_JUMP_SEQ => "JumpSeq",
        TAG_FILE_APPEND_CHECKED => "FileAppendChecked",
        TAG_FILE_APPEND_INLINE => "FileAppendInline",
        _ => return None,
    })
}

fn read_op(r: &mut Reader<'_>) -> Result<LogOp, String> {
    let tag = r.u8("tag")?;
    let kind = op_kind(tag).ok_or_else(|| format!("unknown op tag {tag}"))?;
    read_op_fields(tag, r).map_err(|e| format!("{kind}: {e}"))
}

fn read_op_fields(tag: u8, r: &mut Reader<'_>) -> Result<LogOp, String> {
    Ok(match tag {
        TAG_INIT => LogOp::Init {
            created_ns: r.u64("created")?,
        },
        TAG_DIR_CREATE => LogOp::DirCreate {
            name: r.name("name")?,
        },
        TAG_DIR_REMOVE => LogOp::DirRemove {
            name: r.name("name")?,
        },
        TAG_DIR_LINK => LogOp::DirLink {
            dir: r.name("dir name")?,
            name: r.name("name")?,
            ino: r.u64("ino")?,
        },
        TAG_DIR_UNLINK => LogOp::DirUnlink {
            dir: r.name("dir name")?,
            name: r.name("name")?,
        },
        TAG_FILE_UPDATE => LogOp::FileUpdate(r.fnode()?),
        TAG_FILE_UPDATE_DELTA => LogOp::FileUpdateDelta {
            ino: r.u64("ino")?,
            size: r.u64("size")?,
            mtime_ns: r.u64("mtime")?,
            appended: r.extents()?,
        },
        TAG_FILE_REMOVE => LogOp::FileRemove { ino: r.u64("ino")? },
        TAG_JUMP => LogOp::Jump {
            offset: r.u64("offset")?,
        },
        TAG_JUMP_SEQ => LogOp::JumpSeq { seq: r.u64("seq")? },
        TAG_FILE_APPEND_CHECKED => LogOp::FileAppendChecked {
            ino: r.u64("ino")?,
            size: r.u64("size")?,
            mtime_ns: r.u64("mtime")?,
            appended: r.extents()?,
            data_from: r.u64("data from")?,
            data_crc: r.u32("data crc")?,
        },
        TAG_FILE_APPEND_INLINE => {
            let ino = r.u64("ino")?;
            let size = r.u64("size")?;
            let mtime_ns = r.u64("mtime")?;
            let appended = r.extents()?;
            let data_from = r.u64("data from")?;
            if data_from % BLOCK as u64 != 0 {
                return Err(format!("data from {data_from} is not block-aligned"));
            }
            let len = r.u32("data length")? as usize;
            if len > MAX_INLINE_DATA {
                return Err(format!("{len} bytes of data (at most {MAX_INLINE_DATA})"));
            }
            if data_from.checked_add(len as u64) != Some(size) {
                return Err(format!(
                    "{len} bytes from {data_from} do not end at size {size}"
                ));
            }
            let data = r.take(len, "data")?.to_vec();
            LogOp::FileAppendInline {
                ino,
                size,
                mtime_ns,
                appended,
                data_from,
                data,
            }
        }
        _ => return Err(format!("unknown op tag {tag}")),
    })
}
pub(super) fn read_ops(payload: &[u8]) -> Result<Vec<LogOp>, String> {
    let mut r = Reader::new(payload);
    let n = r.count("op count", MIN_OP_LEN)?;
    let mut ops = Vec::with_capacity(n);
    for i in 0..n {
        ops.push(read_op(&mut r).map_err(|e| format!("op {i}: {e}"))?);
    }
    if r.remaining() != 0 {
        return Err(format!("{} stray bytes after the last op", r.remaining()));
    }
    Ok(ops)
}
