//! The image header: the record in the header object's attribute (size, object order,
//! features, flags; docs/format.md, "Image header"), and what the header object's omap holds
//! (snapshots, the snapshot sequence, the parent link, the records of clones).

use bluepoll_base::codec::{self, CodecError, Reader, Writer};
use std::collections::BTreeMap;

use super::{HEADER_ATTR, HEADER_OBJECT};
use crate::error::ImageError;
use crate::snapshot::{
    CHILD_KEY_PREFIX, PARENT_KEY, ParentLink, REMOVING_KEY_PREFIX, SNAP_KEY_PREFIX, SNAP_SEQ_KEY,
    SnapInfo, decode_seq,
};
use bluepoll_store::{StoreError, StoreHandle};

/// The header record's format version (its first byte).
const HEADER_VERSION: u8 = 1;
/// Bytes of the header record, its checksum included.
const HEADER_LEN: usize = 32;

/// Image features (bits of the header's feature word), fixed when the image is made; [`create`]
/// and [`clone_image`] refuse a combination that cannot work.
///
/// [`create`]: super::create
/// [`clone_image`]: super::clone_image
pub mod features {
    /// The image keeps an object map (two bits per data object): reads of never-written space
    /// answer zeros without I/O, and snapshots can be taken. Needs [`EXCLUSIVE_LOCK`].
    pub const OBJECT_MAP: u32 = 1;
    /// One client at a time owns the image and alone writes it and keeps its map; others ask
    /// the owner to hand the lock over, or to run maintenance for them.
    pub const EXCLUSIVE_LOCK: u32 = 2;
    /// [`Image::diff`](crate::Image::diff) answers from the object maps alone, reading no data
    /// object. Needs [`OBJECT_MAP`].
    pub const FAST_DIFF: u32 = 4;
    /// Several writers at once: no object map can be kept.
    pub const SHARED: u32 = 8;
    /// Every feature this version knows; a header with any other bit set is refused.
    pub const ALL: u32 = OBJECT_MAP | EXCLUSIVE_LOCK | FAST_DIFF | SHARED;
    /// What a new image gets unless told otherwise: object map, exclusive lock and fast-diff.
    pub const DEFAULT: u32 = OBJECT_MAP | EXCLUSIVE_LOCK | FAST_DIFF;
}

/// Header flag: the object map cannot be trusted (every object may exist) until
/// [`Image::rebuild_object_map`](super::Image::rebuild_object_map) clears it.
pub(super) const FLAG_MAP_INVALID: u32 = 1;

/// What an image is (its header record; docs/format.md, "Image header").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image's size in bytes (what a block client sees; need not be a multiple of the
    /// object size).
    pub size: u64,
    /// Data objects are `1 << order` bytes (12..=26: 4 KiB to 64 MiB).
    pub order: u8,
    /// The image's [`features`] bits.
    pub features: u32,
    /// State flags: bit 1 says the object map is invalid (see [`ImageInfo::map_invalid`]).
    pub flags: u32,
    /// When the image was made, in nanoseconds since the Unix epoch.
    pub created_ns: u64,
}

impl ImageInfo {
    /// Bytes per data object (`1 << order`).
    pub fn object_size(&self) -> u64 {
        1 << self.order
    }

    /// Data objects the image spans: its size divided by the object size, rounded up (the last
    /// one may be partly outside the image).
    pub fn objects(&self) -> u64 {
        self.size.div_ceil(self.object_size())
    }

    /// Whether the image has the [`features::OBJECT_MAP`] feature (whatever the map's state).
    pub fn has_object_map(&self) -> bool {
        self.features & features::OBJECT_MAP != 0
    }

    /// Whether the map was marked invalid (a damaged block, or a write lost with the store):
    /// until it is rebuilt, every object may exist and reads go to the store.
    pub fn map_invalid(&self) -> bool {
        self.flags & FLAG_MAP_INVALID != 0
    }

    /// The header record as stored (docs/format.md, image header).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(HEADER_LEN);
        w.u8(HEADER_VERSION)
            .u8(self.order)
            .raw(&[0, 0])
            .u32(self.features)
            .u32(self.flags)
            .u64(self.size)
            .u64(self.created_ns);
        w.seal()
    }

    /// Reads a stored header record, checking its length, version and checksum, and that its
    /// order and features are ones an image can have; [`ImageError::HeaderCorrupt`] says which
    /// check failed.
    pub fn decode(b: &[u8]) -> Result<ImageInfo, ImageError> {
        let bad = |reason: String| ImageError::HeaderCorrupt { reason };
        if b.len() != HEADER_LEN {
            return Err(bad(format!("{} bytes, not {HEADER_LEN}", b.len())));
        }
        let fields = codec::unseal(b).map_err(|e| bad(e.to_string()))?;
        // The length was checked, so the fixed fields below are all there.
        let mut r = Reader::new(fields);
        let field = |e: CodecError| bad(e.to_string());
        let version = r.u8("version").map_err(field)?;
        if version != HEADER_VERSION {
            return Err(bad(format!("unknown version {version}")));
        }
        let order = r.u8("order").map_err(field)?;
        if r.array::<2>("reserved").map_err(field)? != [0, 0] {
            return Err(bad("reserved bytes are not zero".into()));
        }
        let info = ImageInfo {
            order,
            features: r.u32("features").map_err(field)?,
            flags: r.u32("flags").map_err(field)?,
            size: r.u64("size").map_err(field)?,
            created_ns: r.u64("created").map_err(field)?,
        };
        r.end().map_err(field)?;
        check_layout(info.order, info.features).map_err(|e| bad(e.to_string()))?;
        Ok(info)
    }
}

/// Refuses an object order outside 12..=26 and a feature set that cannot work (unknown bits, a
/// shared image with a map, fast-diff without the map, the map without the lock).
pub(super) fn check_layout(order: u8, features: u32) -> Result<(), ImageError> {
    if !(12..=26).contains(&order) {
        return Err(ImageError::invalid(format!(
            "object order {order} is outside 12..=26 (4 KiB to 64 MiB objects)"
        )));
    }
    if features & !features::ALL != 0 {
        return Err(ImageError::invalid(format!(
            "unknown features {features:#x}"
        )));
    }
    if features & features::SHARED != 0
        && features & (features::OBJECT_MAP | features::FAST_DIFF) != 0
    {
        return Err(ImageError::invalid(
            "a shared image keeps no object map (several writers cannot agree on one)",
        ));
    }
    if features & features::FAST_DIFF != 0 && features & features::OBJECT_MAP == 0 {
        return Err(ImageError::invalid("fast-diff needs the object map"));
    }
    if features & features::OBJECT_MAP != 0 && features & features::EXCLUSIVE_LOCK == 0 {
        return Err(ImageError::invalid(
            "the object map needs the exclusive lock (only one owner can keep it true)",
        ));
    }
    Ok(())
}

/// The header record of the image `name` (in `coll`); [`ImageError::NoSuchImage`] when there
/// is no such collection or header object.
pub(super) fn load_header(
    store: &StoreHandle,
    coll: &str,
    name: &str,
) -> Result<ImageInfo, ImageError> {
    match store.getattr(coll, HEADER_OBJECT, HEADER_ATTR) {
        Ok(h) => ImageInfo::decode(&h),
        Err(StoreError::NoSuchCollection { .. }) | Err(StoreError::NoSuchObject { .. }) => {
            Err(ImageError::NoSuchImage { name: name.into() })
        }
        Err(e) => Err(e.into()),
    }
}

/// What the header object's omap says: snapshots, the snapshot sequence, the parent, children.
pub(super) struct Meta {
    pub(super) snaps: Vec<SnapInfo>,
    pub(super) seq: u64,
    pub(super) parent: Option<ParentLink>,
    /// (snapshot id, child image name).
    pub(super) children: Vec<(u64, String)>,
}

impl Meta {
    /// Reads the omap of the header object in `coll`; a damaged record is
    /// [`ImageError::HeaderCorrupt`]. Child records that do not parse are skipped.
    pub(super) fn load(store: &StoreHandle, coll: &str) -> Result<Meta, ImageError> {
        let omap: BTreeMap<Vec<u8>, Vec<u8>> = store.omap_get(coll, HEADER_OBJECT)?;
        let mut meta = Meta {
            snaps: Vec::new(),
            seq: 0,
            parent: None,
            children: Vec::new(),
        };
        let mut removing = Vec::new();
        for (key, value) in &omap {
            if key.as_slice() == SNAP_SEQ_KEY {
                meta.seq = decode_seq(value)?;
            } else if key.as_slice() == PARENT_KEY {
                meta.parent = Some(ParentLink::decode(value)?);
            } else if key.starts_with(SNAP_KEY_PREFIX.as_bytes()) {
                meta.snaps.push(SnapInfo::decode(value)?);
            } else if let Some(rest) = key.strip_prefix(REMOVING_KEY_PREFIX.as_bytes()) {
                let id = decode_seq(value)?;
                if rest != format!("{id:016x}").as_bytes() {
                    return Err(ImageError::HeaderCorrupt {
                        reason: format!(
                            "removal mark {} names snapshot {id}",
                            String::from_utf8_lossy(key)
                        ),
                    });
                }
                removing.push(id);
            } else if let Some(rest) = key.strip_prefix(CHILD_KEY_PREFIX.as_bytes()) {
                let text = String::from_utf8_lossy(rest);
                if let Some((id, child)) = text.split_once('.')
                    && let Ok(id) = u64::from_str_radix(id, 16)
                {
                    meta.children.push((id, child.to_string()));
                }
            }
        }
        meta.snaps.sort_by_key(|s| s.id);
        for s in meta.snaps.iter_mut() {
            s.removing = removing.contains(&s.id);
        }
        Ok(meta)
    }
}
