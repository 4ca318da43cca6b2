//! Transactions: an ordered list of changes to one collection, applied all or nothing.
//!
//! Every transaction names its collection: a collection lives on one shard (one reactor), and
//! its transactions commit in the order they were queued (its OpSequencer). Operations follow
//! Ceph's ObjectStore: `write`, `zero` and `touch` create a missing object; every other object
//! operation on a missing object fails the transaction with ENOENT; `rename` onto an existing
//! object is EEXIST. A failing operation fails the whole transaction and nothing of it happens.
//!
//! The rules every operation follows:
//!
//! - **In order, each seeing the ones before.** Operations apply in the order they were added,
//!   and each sees what the earlier ones of the same transaction did: a `touch` makes the object
//!   that a later `setattr` needs, a `remove` makes the name free for a later `rename` onto it,
//!   and `create_collection` must come before the object operations of a transaction that
//!   creates its collection.
//! - **All or nothing.** The first operation that fails (with the [`StoreError`] its method
//!   names) fails the transaction: nothing of it is applied, the space it had taken is given
//!   back, and its commit callback gets that error. Besides the errors each method lists, any
//!   operation fails with [`StoreError::NoSuchCollection`] when the collection does not exist at
//!   that point of the transaction, and any operation that writes data may fail with
//!   [`StoreError::NoSpace`] (the allocation it needs would eat into the space kept for BlueFS),
//!   [`StoreError::Io`] or [`StoreError::ChecksumMismatch`] (reading the old bytes around a
//!   partial block it rewrites, or the data it copies). Once every operation has succeeded, a
//!   transaction that takes more space than it frees and would leave the main device past the
//!   full ratio fails with [`StoreError::Full`].
//! - **Read your writes.** Reads and queries sent after a transaction was queued see it, from
//!   the moment it is queued (they run on the same shard, after it), whether or not it has
//!   committed yet.
//! - **Objects.** An object is a byte array (its *size* is its length; bytes never written read
//!   as zeroes), a map of named *attributes* (small values kept with the object's metadata), and
//!   an *omap* (a header and an ordered map of byte-string keys to values, kept in RocksDB).
//!   Objects are at most 2^44 bytes (16 TiB): an operation that would reach past that fails with
//!   [`StoreError::InvalidArgument`].
//!
//! A transaction is built with the methods of [`Transaction`], each of which adds one [`Op`]
//! and returns the transaction so calls chain, then handed to
//! [`StoreHandle::apply`](crate::StoreHandle::apply) (which waits for the commit),
//! [`StoreHandle::submit`](crate::StoreHandle::submit) (a future) or
//! [`StoreHandle::queue_transaction`](crate::StoreHandle::queue_transaction) (a callback):
//!
//! ```
//! use bluepoll_store::{Store, StoreConfig, StoreDevices, StoreError, Transaction};
//!
//! let mut config = StoreConfig::default();
//! config.devices.slow = "mem:1G".into();
//! config.pin = false;
//! // A `mem:` device lives as long as its handle: open it once for mkfs and mount.
//! let devices = StoreDevices::open(&config.devices)?;
//! Store::mkfs_on(&devices, &config)?;
//! let store = Store::mount_on(devices, config)?;
//!
//! // One transaction: the collection, an object with data, an attribute and an omap entry.
//! let mut t = Transaction::new("pool");
//! t.create_collection()
//!     .write("obj", 0, b"hello".to_vec())
//!     .setattr("obj", "owner", b"me".to_vec())
//!     .omap_setkey("obj", b"k", b"v");
//! store.apply(t)?;
//! assert_eq!(store.read("pool", "obj", 0, 5)?, b"hello");
//!
//! // Fails as a whole: `missing` does not exist, so the write before it is not applied either.
//! let mut t = Transaction::new("pool");
//! t.write("obj", 0, b"HELLO".to_vec()).truncate("missing", 0);
//! assert!(matches!(store.apply(t), Err(StoreError::NoSuchObject { .. })));
//! assert_eq!(store.read("pool", "obj", 0, 5)?, b"hello");
//!
//! // A clone shares the data; a rename moves it to a free name.
//! let mut t = Transaction::new("pool");
//! t.clone_object("obj", "copy").rename("obj", "moved");
//! store.apply(t)?;
//! assert!(!store.exists("pool", "obj")?);
//! assert_eq!(store.read("pool", "copy", 0, 5)?, b"hello");
//! store.umount()?;
//! # Ok::<(), StoreError>(())
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

#[cfg(doc)]
use crate::StoreError;

/// One change, as [`Transaction`]'s methods add it. Each variant's meaning, and the errors it
/// can fail with, are those of the method named in its documentation; object names are the
/// object's name inside the transaction's collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Creates the transaction's collection ([`Transaction::create_collection`]).
    CreateCollection,
    /// Removes the transaction's collection, which must be empty
    /// ([`Transaction::remove_collection`]).
    RemoveCollection,
    /// Creates the object if it does not exist ([`Transaction::touch`]).
    Touch {
        /// The object.
        obj: String,
    },
    /// Writes bytes into the object, creating it if needed ([`Transaction::write`]).
    Write {
        /// The object.
        obj: String,
        /// Byte offset in the object where `data` goes.
        offset: u64,
        /// The bytes to write (shared with the caller by [`Transaction::write_shared`]).
        data: Arc<Vec<u8>>,
    },
    /// Makes a range of the object read as zeroes, creating it if needed
    /// ([`Transaction::zero`]).
    Zero {
        /// The object.
        obj: String,
        /// Byte offset in the object where the range starts.
        offset: u64,
        /// Bytes in the range.
        len: u64,
    },
    /// Sets the object's size ([`Transaction::truncate`]).
    Truncate {
        /// The object.
        obj: String,
        /// The new size, in bytes.
        size: u64,
    },
    /// Deletes the object with its data, attributes and omap ([`Transaction::remove`]).
    Remove {
        /// The object.
        obj: String,
    },
    /// Sets attributes, keeping the others ([`Transaction::setattrs`]).
    SetAttrs {
        /// The object.
        obj: String,
        /// Attribute names and their new values.
        attrs: BTreeMap<String, Vec<u8>>,
    },
    /// Removes one attribute ([`Transaction::rmattr`]).
    RmAttr {
        /// The object.
        obj: String,
        /// The attribute's name.
        name: String,
    },
    /// Removes every attribute ([`Transaction::rmattrs`]).
    RmAttrs {
        /// The object.
        obj: String,
    },
    /// Sets omap entries, keeping the others ([`Transaction::omap_setkeys`]).
    OmapSetKeys {
        /// The object.
        obj: String,
        /// Keys and their new values.
        entries: BTreeMap<Vec<u8>, Vec<u8>>,
    },
    /// Removes omap entries by key ([`Transaction::omap_rmkeys`]).
    OmapRmKeys {
        /// The object.
        obj: String,
        /// The keys to remove (absent ones are ignored).
        keys: Vec<Vec<u8>>,
    },
    /// Removes the keys in `first..last` ([`Transaction::omap_rmkeyrange`]).
    OmapRmKeyRange {
        /// The object.
        obj: String,
        /// The first key removed (inclusive).
        first: Vec<u8>,
        /// The end of the range (exclusive).
        last: Vec<u8>,
    },
    /// Removes every key and the header ([`Transaction::omap_clear`]).
    OmapClear {
        /// The object.
        obj: String,
    },
    /// Sets the omap header ([`Transaction::omap_setheader`]).
    OmapSetHeader {
        /// The object.
        obj: String,
        /// The new header.
        header: Vec<u8>,
    },
    /// `dst` becomes a copy of `src` (data, attributes, omap); data is shared, not copied
    /// ([`Transaction::clone_object`]).
    Clone {
        /// The object copied (must exist).
        src: String,
        /// The object made (or replaced) as its copy.
        dst: String,
    },
    /// `len` bytes of `src` at `src_offset` are copied to `dst` at `dst_offset` (shared where
    /// both offsets and the length are allocation-unit aligned) ([`Transaction::clone_range`]).
    CloneRange {
        /// The object copied from (must exist).
        src: String,
        /// The object copied to (created if missing; may be `src`).
        dst: String,
        /// Byte offset in `src` where the copied range starts.
        src_offset: u64,
        /// Bytes copied.
        len: u64,
        /// Byte offset in `dst` where the copy goes.
        dst_offset: u64,
    },
    /// Moves an object to a new name that must be free ([`Transaction::rename`]).
    Rename {
        /// The object's current name (must exist).
        from: String,
        /// Its new name (must not exist).
        to: String,
    },
}

impl Op {
    /// The operation's name in snake case, as Ceph's ObjectStore calls it (`"write"`,
    /// `"omap_setkeys"`, `"clone"`, ...), for messages and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Op::CreateCollection => "create_collection",
            Op::RemoveCollection => "remove_collection",
            Op::Touch { .. } => "touch",
            Op::Write { .. } => "write",
            Op::Zero { .. } => "zero",
            Op::Truncate { .. } => "truncate",
            Op::Remove { .. } => "remove",
            Op::SetAttrs { .. } => "setattrs",
            Op::RmAttr { .. } => "rmattr",
            Op::RmAttrs { .. } => "rmattrs",
            Op::OmapSetKeys { .. } => "omap_setkeys",
            Op::OmapRmKeys { .. } => "omap_rmkeys",
            Op::OmapRmKeyRange { .. } => "omap_rmkeyrange",
            Op::OmapClear { .. } => "omap_clear",
            Op::OmapSetHeader { .. } => "omap_setheader",
            Op::Clone { .. } => "clone",
            Op::CloneRange { .. } => "clone_range",
            Op::Rename { .. } => "rename",
        }
    }
}

/// Changes to one collection, built with the methods below and handed to
/// [`StoreHandle::queue_transaction`](crate::StoreHandle::queue_transaction) (or `apply`,
/// `submit`).
///
/// Building a transaction checks nothing and touches no store: every rule (the object must
/// exist, the collection must exist, ...) is checked when the store applies it, in order, as
/// the [module documentation](crate::transaction) describes. The errors listed with each
/// method are those it adds to the ones every operation can fail with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    coll: String,
    ops: Vec<Op>,
}

impl Transaction {
    /// An empty transaction on the collection `coll` (which need not exist yet: see
    /// [`create_collection`](Self::create_collection)).
    pub fn new(coll: impl Into<String>) -> Transaction {
        Transaction {
            coll: coll.into(),
            ops: Vec::new(),
        }
    }

    /// The collection every operation of the transaction applies to.
    pub fn collection(&self) -> &str {
        &self.coll
    }

    /// The operations added so far, in the order they will apply.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Whether no operation has been added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub(crate) fn into_parts(self) -> (String, Vec<Op>) {
        (self.coll, self.ops)
    }

    /// Bytes of object data the transaction writes.
    pub fn data_bytes(&self) -> u64 {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Write { data, .. } => data.len() as u64,
                Op::Zero { len, .. } => *len,
                _ => 0,
            })
            .sum()
    }

    /// Appends `op` as it is: what every other method of the builder does with the op it makes.
    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    /// Creates the collection, empty, with a new id, on the shard its name hashes to.
    ///
    /// Object operations on the collection must come after it, in this transaction or a later
    /// one. Fails with [`StoreError::CollectionExists`] if the collection exists at this point
    /// of the transaction; after a [`remove_collection`](Self::remove_collection) earlier in
    /// the same transaction it makes a new, empty collection of the same name.
    pub fn create_collection(&mut self) -> &mut Self {
        self.push(Op::CreateCollection)
    }

    /// Removes the collection.
    ///
    /// Fails with [`StoreError::NoSuchCollection`] if it does not exist, and with
    /// [`StoreError::CollectionNotEmpty`] if any object is in it as the transaction leaves it
    /// at this point: objects removed earlier in the same transaction do not count, ones it
    /// created do. Object operations after it fail with
    /// [`StoreError::NoSuchCollection`] unless a
    /// [`create_collection`](Self::create_collection) comes between.
    pub fn remove_collection(&mut self) -> &mut Self {
        self.push(Op::RemoveCollection)
    }

    /// Creates the object, empty (size 0, no attributes, no omap), if it does not exist; an
    /// existing object is left as it is.
    pub fn touch(&mut self, obj: &str) -> &mut Self {
        self.push(Op::Touch { obj: obj.into() })
    }

    /// Writes `data` into the object at byte `offset`, creating the object if it does not
    /// exist.
    ///
    /// The object's size becomes `offset + data.len()` if that is past its end; a gap between
    /// the old end and `offset` reads as zeroes and takes no space. An empty `data` creates the
    /// object if needed and changes nothing else. A write that ends past 2^44 bytes fails with
    /// [`StoreError::InvalidArgument`].
    ///
    /// How the bytes reach the device is the store's choice: a short overwrite of space the
    /// object already holds (shorter than `prefer_deferred_size`, and not shared with a clone)
    /// is journaled in the commit and applied in place after it; anything else goes
    /// copy-on-write to newly allocated space before the commit. Either way a partial checksum
    /// block or allocation unit at either end is completed with the object's current bytes.
    pub fn write(&mut self, obj: &str, offset: u64, data: impl Into<Vec<u8>>) -> &mut Self {
        self.push(Op::Write {
            obj: obj.into(),
            offset,
            data: Arc::new(data.into()),
        })
    }

    /// [`write`](Self::write) of a buffer the caller keeps a reference to (no copy).
    pub fn write_shared(&mut self, obj: &str, offset: u64, data: Arc<Vec<u8>>) -> &mut Self {
        self.push(Op::Write {
            obj: obj.into(),
            offset,
            data,
        })
    }

    /// Makes the `len` bytes at `offset` read as zeroes, creating the object if it does not
    /// exist.
    ///
    /// The object's size becomes `offset + len` if that is past its end (zeroing can grow an
    /// object, like a write of zeroes). Whole allocation units inside the range are unmapped:
    /// their space is freed, or their reference dropped where a clone shares them. Partial
    /// units at the ends get zeroes written where they are mapped (a rewrite that may allocate).
    /// `len == 0` creates the object if needed and changes nothing else. A range that ends past
    /// 2^44 bytes fails with [`StoreError::InvalidArgument`].
    pub fn zero(&mut self, obj: &str, offset: u64, len: u64) -> &mut Self {
        self.push(Op::Zero {
            obj: obj.into(),
            offset,
            len,
        })
    }

    /// Sets the object's size to `size`.
    ///
    /// Growing only moves the end: the new bytes read as zeroes and take no space. Shrinking
    /// frees (or drops its references to) the allocation units wholly past the new end and
    /// zeroes the rest of the last unit it keeps, so growing the object again later shows
    /// zeroes, never the old bytes. Fails with [`StoreError::NoSuchObject`] if the object does
    /// not exist, and with [`StoreError::InvalidArgument`] if `size` is past 2^44 bytes.
    pub fn truncate(&mut self, obj: &str, size: u64) -> &mut Self {
        self.push(Op::Truncate {
            obj: obj.into(),
            size,
        })
    }

    /// Deletes the object: its data (the space freed, or its references dropped where a clone
    /// shares it), its attributes and its omap.
    ///
    /// Fails with [`StoreError::NoSuchObject`] if the object does not exist. Later operations of
    /// the transaction see it missing: a [`write`](Self::write), [`zero`](Self::zero) or
    /// [`touch`](Self::touch) of the name after it makes a new, empty object.
    pub fn remove(&mut self, obj: &str) -> &mut Self {
        self.push(Op::Remove { obj: obj.into() })
    }

    /// Sets the attribute `name` to `value`, replacing any value it had; the object's other
    /// attributes are kept. Fails with [`StoreError::NoSuchObject`] if the object does not
    /// exist.
    pub fn setattr(&mut self, obj: &str, name: &str, value: impl Into<Vec<u8>>) -> &mut Self {
        let mut attrs = BTreeMap::new();
        attrs.insert(name.to_string(), value.into());
        self.setattrs(obj, attrs)
    }

    /// Sets each attribute of `attrs`, replacing any value it had; the object's other
    /// attributes are kept. Fails with [`StoreError::NoSuchObject`] if the object does not
    /// exist.
    pub fn setattrs(&mut self, obj: &str, attrs: BTreeMap<String, Vec<u8>>) -> &mut Self {
        self.push(Op::SetAttrs {
            obj: obj.into(),
            attrs,
        })
    }

    /// Removes the attribute `name`; an attribute the object does not have is no error. Fails
    /// with [`StoreError::NoSuchObject`] if the object does not exist.
    pub fn rmattr(&mut self, obj: &str, name: &str) -> &mut Self {
        self.push(Op::RmAttr {
            obj: obj.into(),
            name: name.into(),
        })
    }

    /// Removes every attribute of the object. Fails with [`StoreError::NoSuchObject`] if the
    /// object does not exist.
    pub fn rmattrs(&mut self, obj: &str) -> &mut Self {
        self.push(Op::RmAttrs { obj: obj.into() })
    }

    /// Sets each omap entry of `entries`, replacing any value its key had; other entries are
    /// kept. An object without an omap gets one. Fails with [`StoreError::NoSuchObject`] if the
    /// object does not exist.
    pub fn omap_setkeys(&mut self, obj: &str, entries: BTreeMap<Vec<u8>, Vec<u8>>) -> &mut Self {
        self.push(Op::OmapSetKeys {
            obj: obj.into(),
            entries,
        })
    }

    /// Sets one omap entry: [`omap_setkeys`](Self::omap_setkeys) of `key` → `value`.
    pub fn omap_setkey(&mut self, obj: &str, key: &[u8], value: &[u8]) -> &mut Self {
        let mut entries = BTreeMap::new();
        entries.insert(key.to_vec(), value.to_vec());
        self.omap_setkeys(obj, entries)
    }

    /// Removes the omap entries of `keys`; keys the omap does not have (or an object without an
    /// omap) are no error. Fails with [`StoreError::NoSuchObject`] if the object does not exist.
    pub fn omap_rmkeys(&mut self, obj: &str, keys: Vec<Vec<u8>>) -> &mut Self {
        self.push(Op::OmapRmKeys {
            obj: obj.into(),
            keys,
        })
    }

    /// Removes every omap entry whose key is in `first..last` (byte order; `first` included,
    /// `last` not); nothing when `first >= last`. The header stays. Fails with
    /// [`StoreError::NoSuchObject`] if the object does not exist.
    pub fn omap_rmkeyrange(&mut self, obj: &str, first: &[u8], last: &[u8]) -> &mut Self {
        self.push(Op::OmapRmKeyRange {
            obj: obj.into(),
            first: first.to_vec(),
            last: last.to_vec(),
        })
    }

    /// Removes every omap entry and the omap header: the object has no omap afterwards (a later
    /// entry or header starts a new one). Fails with [`StoreError::NoSuchObject`] if the object
    /// does not exist.
    pub fn omap_clear(&mut self, obj: &str) -> &mut Self {
        self.push(Op::OmapClear { obj: obj.into() })
    }

    /// Sets the omap header to `header`, replacing the one it had; the entries stay. An object
    /// without an omap gets one. Fails with [`StoreError::NoSuchObject`] if the object does not
    /// exist.
    pub fn omap_setheader(&mut self, obj: &str, header: impl Into<Vec<u8>>) -> &mut Self {
        self.push(Op::OmapSetHeader {
            obj: obj.into(),
            header: header.into(),
        })
    }

    /// Makes `dst` a copy of `src`: its size, data, attributes and omap (header and entries).
    ///
    /// `dst` is created if it does not exist; if it exists, its data, attributes and omap are
    /// dropped first (it is replaced, not merged). The data is shared, not copied: `dst` maps
    /// the same allocation units, whose reference counts go up, and a later write to either
    /// object goes to new space. Data of `src` that is not on the device yet (written earlier
    /// in this transaction, or by one still in flight) is copied instead. The omap is copied
    /// into a new omap of `dst`.
    ///
    /// Fails with [`StoreError::NoSuchObject`] if `src` does not exist, and with
    /// [`StoreError::InvalidArgument`] if `src == dst`.
    pub fn clone_object(&mut self, src: &str, dst: &str) -> &mut Self {
        self.push(Op::Clone {
            src: src.into(),
            dst: dst.into(),
        })
    }

    /// Copies the `len` bytes of `src` at `src_offset` into `dst` at `dst_offset`, creating
    /// `dst` if it does not exist; attributes and omaps are not touched.
    ///
    /// `dst`'s size becomes `dst_offset + len` if that is past its end. Bytes past `src`'s end
    /// copy as zeroes. When `src_offset`, `dst_offset` and `len` are all multiples of the
    /// allocation unit (and the range of `src` is on the device, not still in flight) the units
    /// are shared as by [`clone_object`](Self::clone_object) and holes stay holes; otherwise the
    /// bytes are read and written. `src` and `dst` may be the same object, with overlapping
    /// ranges: the bytes are then always copied, all read before any is written. `len == 0`
    /// creates `dst` if needed and changes nothing else.
    ///
    /// Fails with [`StoreError::NoSuchObject`] if `src` does not exist, and with
    /// [`StoreError::InvalidArgument`] if either range ends past 2^44 bytes.
    pub fn clone_range(
        &mut self,
        src: &str,
        dst: &str,
        src_offset: u64,
        len: u64,
        dst_offset: u64,
    ) -> &mut Self {
        self.push(Op::CloneRange {
            src: src.into(),
            dst: dst.into(),
            src_offset,
            len,
            dst_offset,
        })
    }

    /// Moves the object `from` — data, attributes and omap, nothing copied — to the name `to`;
    /// `from` no longer exists afterwards.
    ///
    /// Unlike POSIX rename, an existing target is not replaced: fails with
    /// [`StoreError::NoSuchObject`] if `from` does not exist and with
    /// [`StoreError::ObjectExists`] if `to` exists ([`remove`](Self::remove) it first, in the
    /// same transaction if need be). `from == to` does nothing and succeeds, without checking
    /// that the object exists.
    pub fn rename(&mut self, from: &str, to: &str) -> &mut Self {
        self.push(Op::Rename {
            from: from.into(),
            to: to.into(),
        })
    }
}
