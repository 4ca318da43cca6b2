//! Snapshots, clone links and fast-diff (docs/image.md; the records are in docs/format.md, "Image
//! snapshots").
//!
//! A snapshot costs nothing when it is taken: its object map is a copy of the head map, and the
//! head map turns EXISTS into EXISTS_CLEAN. The first change of an EXISTS_CLEAN object after
//! that first preserves it — a store clone, sharing the data — as `data.X@S`, S the newest
//! snapshot; a removal renames it there. So `data.X@S` holds object X as every snapshot from
//! the previous one (exclusive) up to S saw it, and object X at snapshot S is: nothing if S's map
//! says it did not exist; else the first preserved copy `data.X@T` with T ≥ S; else the head
//! object. Removing snapshot S hands each copy it holds to the next older snapshot if that one
//! needs it (saw the object and has no copy of its own), and removes it otherwise.
//!
//! In every map, EXISTS means "written since the previous snapshot" and EXISTS_CLEAN "unchanged
//! since it", which is what fast-diff reads: an object changed between two snapshots if any
//! map after the first marks it EXISTS, or it exists in one and not the other.

use super::error::ImageError;
use super::object_map::{ObjectMap, ObjectState};
use bluepoll_base::codec::{self, CodecError, Reader, Writer};

const RECORD_VERSION: u8 = 1;

/// omap keys of the header object.
pub(crate) const SNAP_SEQ_KEY: &[u8] = b"snap_seq";
pub(crate) const SNAP_KEY_PREFIX: &str = "snap.";
pub(crate) const PARENT_KEY: &[u8] = b"parent";
pub(crate) const CHILD_KEY_PREFIX: &str = "child.";
pub(crate) const REMOVING_KEY_PREFIX: &str = "removing.";

/// A snapshot of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapInfo {
    /// The snapshot's id: 1 for an image's first snapshot, then one more for each (ids are
    /// never reused); it orders snapshots and names their objects (`data.X@ID`).
    pub id: u64,
    /// The name it was taken under (unique among the image's snapshots).
    pub name: String,
    /// The image's size in bytes when the snapshot was taken.
    pub size: u64,
    /// When it was taken, in nanoseconds since the Unix epoch.
    pub created_ns: u64,
    /// For a clone: how far its parent showed through when the snapshot was taken (0 for
    /// images that are not clones).
    pub parent_overlap: u64,
    /// A removal has begun (its mark is committed before the first copy goes): the snapshot no
    /// longer reads as taken and is refused to everything but another `snap rm`.
    pub removing: bool,
}

/// The parent of a clone: image `image` at its snapshot `snap`; only the first `overlap` bytes
/// of the clone come from it (the clone's size when made, less any shrinking since).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentLink {
    /// The parent image's name.
    pub image: String,
    /// The id of the parent's snapshot the clone was made from.
    pub snap: u64,
    /// Bytes, from the clone's start, that read from the parent where the clone has written
    /// nothing.
    pub overlap: u64,
}

pub(crate) fn snap_key(id: u64) -> Vec<u8> {
    format!("{SNAP_KEY_PREFIX}{id:016x}").into_bytes()
}

/// The mark of snapshot `id`'s removal in progress.
pub(crate) fn removing_key(id: u64) -> Vec<u8> {
    format!("{REMOVING_KEY_PREFIX}{id:016x}").into_bytes()
}

pub(crate) fn child_key(snap: u64, child: &str) -> Vec<u8> {
    format!("{CHILD_KEY_PREFIX}{snap:016x}.{child}").into_bytes()
}

/// The map object of snapshot `id`.
pub(crate) fn snap_map_object(id: u64) -> String {
    format!("object_map.{id:016x}")
}

/// Object `index` as snapshot `snap` preserved it.
pub(crate) fn preserved_object(index: u64, snap: u64) -> String {
    format!("data.{index:016x}@{snap:016x}")
}

/// A record: the version, 3 reserved zero bytes, the body `fields` writes, and the crc32c of
/// all of it ([`bluepoll_base::codec`]).
fn seal(fields: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let mut record = Writer::with_capacity(64);
    record.u8(RECORD_VERSION).raw(&[0, 0, 0]);
    fields(&mut record);
    record.seal()
}

/// The body of a sealed record, after its checks.
fn unseal<'a>(b: &'a [u8], what: &str) -> Result<&'a [u8], ImageError> {
    let bad = |reason: String| ImageError::HeaderCorrupt {
        reason: format!("{what}: {reason}"),
    };
    if b.len() < 8 {
        return Err(bad(format!("{} bytes", b.len())));
    }
    let content = codec::unseal(b).map_err(|e| bad(e.to_string()))?;
    if content[0] != RECORD_VERSION {
        return Err(bad(format!("unknown version {}", content[0])));
    }
    if content[1..4] != [0, 0, 0] {
        return Err(bad("reserved bytes are not zero".into()));
    }
    Ok(&content[4..])
}

/// Reads the fields of a record body in order, naming the record in errors.
struct Fields<'a> {
    b: Reader<'a>,
    what: &'a str,
}

impl<'a> Fields<'a> {
    /// The fields of the sealed record `bytes`, after its checks.
    fn unseal(bytes: &'a [u8], what: &'a str) -> Result<Fields<'a>, ImageError> {
        Ok(Fields {
            b: Reader::new(unseal(bytes, what)?),
            what,
        })
    }
    fn corrupt(&self, e: CodecError) -> ImageError {
        let reason = match e {
            CodecError::Truncated { .. } => "truncated".to_string(),
            CodecError::NotUtf8 { .. } => "name is not UTF-8".to_string(),
            other => other.to_string(),
        };
        ImageError::HeaderCorrupt {
            reason: format!("{}: {reason}", self.what),
        }
    }
    fn u64(&mut self) -> Result<u64, ImageError> {
        self.b.u64("u64").map_err(|e| self.corrupt(e))
    }
    fn name(&mut self) -> Result<String, ImageError> {
        let name = self.b.str16("name").map_err(|e| self.corrupt(e))?;
        Ok(name.to_owned())
    }
    fn end(&self) -> Result<(), ImageError> {
        self.b.end().map_err(|e| self.corrupt(e))
    }
}

impl SnapInfo {
    /// The record as stored (docs/format.md).
    pub fn encode(&self) -> Vec<u8> {
        seal(|w| {
            w.u64(self.id)
                .u64(self.size)
                .u64(self.created_ns)
                .u64(self.parent_overlap)
                .str16(&self.name);
        })
    }

    /// Reads a stored record, checking its version and checksum.
    pub fn decode(bytes: &[u8]) -> Result<SnapInfo, ImageError> {
        let mut f = Fields::unseal(bytes, "snapshot record")?;
        let info = SnapInfo {
            id: f.u64()?,
            size: f.u64()?,
            created_ns: f.u64()?,
            parent_overlap: f.u64()?,
            name: f.name()?,
            removing: false,
        };
        f.end()?;
        Ok(info)
    }
}

impl ParentLink {
    /// The record as stored (docs/format.md).
    pub fn encode(&self) -> Vec<u8> {
        seal(|w| {
            w.u64(self.snap).u64(self.overlap).str16(&self.image);
        })
    }

    /// Reads a stored record, checking its version and checksum.
    pub fn decode(bytes: &[u8]) -> Result<ParentLink, ImageError> {
        let mut f = Fields::unseal(bytes, "parent record")?;
        let link = ParentLink {
            snap: f.u64()?,
            overlap: f.u64()?,
            image: f.name()?,
        };
        f.end()?;
        Ok(link)
    }
}

/// The snapshot sequence record as stored (a sealed little-endian u64): the id of the newest
/// snapshot the image ever took, so the next one gets one more (docs/format.md, `snap_seq`).
pub fn encode_seq(newest: u64) -> Vec<u8> {
    seal(|w| {
        w.u64(newest);
    })
}

/// Reads the stored snapshot sequence (the newest snapshot id ever taken), checking its
/// version and checksum.
pub fn decode_seq(bytes: &[u8]) -> Result<u64, ImageError> {
    let mut f = Fields::unseal(bytes, "snapshot sequence")?;
    let next = f.u64()?;
    f.end()?;
    Ok(next)
}

/// The value of a child record (the key says everything; the value is only checked).
pub(crate) fn encode_child() -> Vec<u8> {
    seal(|_| {})
}

/// One run of changed bytes in a diff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiffExtent {
    /// Where the run starts, in bytes from the image's start.
    pub offset: u64,
    /// The run's length in bytes.
    pub len: u64,
    /// Whether the run holds data at the newer end (false: it reads as zeros there).
    pub exists: bool,
}

/// Objects changed between the state `from` describes (None: an empty image) and the last of
/// `later` (maps of every snapshot after `from`, oldest first, then the end point's), with
/// whether each exists at the end — from the maps alone.
pub fn changed_objects(from: Option<&ObjectMap>, later: &[&ObjectMap]) -> Vec<(u64, bool)> {
    let Some(last) = later.last() else {
        return Vec::new();
    };
    let objects = later
        .iter()
        .map(|m| m.objects())
        .chain(from.map(|m| m.objects()))
        .max()
        .unwrap_or(0);
    let state = |m: &ObjectMap, o: u64| {
        if o < m.objects() {
            m.get(o)
        } else {
            ObjectState::Nonexistent
        }
    };
    let mut out = Vec::new();
    for o in 0..objects {
        let existed = from.is_some_and(|m| state(m, o).may_exist());
        let now = state(last, o);
        let written = later
            .iter()
            .any(|m| matches!(state(m, o), ObjectState::Exists | ObjectState::Pending));
        // Written meanwhile but absent at both ends reads as zeros at both: no change.
        if (written && (existed || now.may_exist())) || existed != now.may_exist() {
            out.push((o, now.may_exist()));
        }
    }
    out
}

/// Changed objects as byte runs of an image of `size` bytes with `object_size`-byte objects,
/// adjacent objects of the same kind merged.
pub fn extents_of(changed: &[(u64, bool)], object_size: u64, size: u64) -> Vec<DiffExtent> {
    let mut out: Vec<DiffExtent> = Vec::new();
    for &(o, exists) in changed {
        let offset = o * object_size;
        if offset >= size {
            continue;
        }
        let len = object_size.min(size - offset);
        match out.last_mut() {
            Some(e) if e.exists == exists && e.offset + e.len == offset => e.len += len,
            _ => out.push(DiffExtent {
                offset,
                len,
                exists,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_named() {
        let s = SnapInfo {
            id: 7,
            name: "before-upgrade".into(),
            size: 1 << 30,
            created_ns: 99,
            parent_overlap: 5 << 20,
            removing: false,
        };
        let b = s.encode();
        assert_eq!(SnapInfo::decode(&b).unwrap(), s);
        let mut bad = b.clone();
        bad[6] ^= 1;
        assert!(
            SnapInfo::decode(&bad)
                .unwrap_err()
                .to_string()
                .contains("snapshot record: checksum mismatch")
        );
        assert!(SnapInfo::decode(&b[..5]).is_err());
        let p = ParentLink {
            image: "golden".into(),
            snap: 3,
            overlap: 10 << 20,
        };
        assert_eq!(ParentLink::decode(&p.encode()).unwrap(), p);
        assert_eq!(decode_seq(&encode_seq(12)).unwrap(), 12);
        assert!(decode_seq(&p.encode()).is_err());
    }

    #[test]
    fn changed_objects_follow_the_written_flags_and_existence() {
        let mut s1 = ObjectMap::new(8);
        for o in [0, 1, 2] {
            s1.set(o, ObjectState::Exists).unwrap();
        }
        // Between s1 and s2: 1 rewritten, 2 removed, 3 created; 0 untouched.
        let mut s2 = ObjectMap::new(8);
        s2.set(0, ObjectState::ExistsClean).unwrap();
        s2.set(1, ObjectState::Exists).unwrap();
        s2.set(3, ObjectState::Exists).unwrap();
        // After s2: nothing written, 3 removed.
        let mut head = ObjectMap::new(8);
        head.set(0, ObjectState::ExistsClean).unwrap();
        head.set(1, ObjectState::ExistsClean).unwrap();
        assert_eq!(
            changed_objects(Some(&s1), &[&s2, &head]),
            vec![(1, true), (2, false)]
        );
        assert_eq!(changed_objects(Some(&s2), &[&head]), vec![(3, false)]);
        assert_eq!(
            changed_objects(None, &[&s1]),
            vec![(0, true), (1, true), (2, true)]
        );
        assert_eq!(
            extents_of(&[(0, true), (1, true), (3, false)], 4096, 4096 * 3 + 100),
            vec![
                DiffExtent {
                    offset: 0,
                    len: 8192,
                    exists: true
                },
                DiffExtent {
                    offset: 12288,
                    len: 100,
                    exists: false
                }
            ]
        );
    }
}
