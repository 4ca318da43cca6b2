//! Transactions: an ordered list of changes to one collection, applied all or nothing.
//!
//! Every transaction names its collection: a collection lives on one shard (one reactor), and
//! its transactions commit in the order they were queued (its OpSequencer). Operations follow
//! Ceph's ObjectStore: `write`, `zero` and `touch` create a missing object; every other object
//! operation on a missing object fails the transaction with ENOENT; `rename` onto an existing
//! object is EEXIST. A failing operation fails the whole transaction and nothing of it happens.

use std::collections::BTreeMap;
use std::sync::Arc;

/// One change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    CreateCollection,
    RemoveCollection,
    Touch {
        obj: String,
    },
    Write {
        obj: String,
        offset: u64,
        data: Arc<Vec<u8>>,
    },
    Zero {
        obj: String,
        offset: u64,
        len: u64,
    },
    Truncate {
        obj: String,
        size: u64,
    },
    Remove {
        obj: String,
    },
    SetAttrs {
        obj: String,
        attrs: BTreeMap<String, Vec<u8>>,
    },
    RmAttr {
        obj: String,
        name: String,
    },
    RmAttrs {
        obj: String,
    },
    OmapSetKeys {
        obj: String,
        entries: BTreeMap<Vec<u8>, Vec<u8>>,
    },
    OmapRmKeys {
        obj: String,
        keys: Vec<Vec<u8>>,
    },
    /// Removes the keys in `first..last`.
    OmapRmKeyRange {
        obj: String,
        first: Vec<u8>,
        last: Vec<u8>,
    },
    /// Removes every key and the header.
    OmapClear {
        obj: String,
    },
    OmapSetHeader {
        obj: String,
        header: Vec<u8>,
    },
    /// `dst` becomes a copy of `src` (data, attributes, omap); data is shared, not copied.
    Clone {
        src: String,
        dst: String,
    },
    /// `len` bytes of `src` at `src_offset` are copied to `dst` at `dst_offset` (shared where
    /// both offsets and the length are allocation-unit aligned).
    CloneRange {
        src: String,
        dst: String,
        src_offset: u64,
        len: u64,
        dst_offset: u64,
    },
    Rename {
        from: String,
        to: String,
    },
}

impl Op {
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
/// [`Store::queue_transaction`](super::Store::queue_transaction).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    coll: String,
    ops: Vec<Op>,
}

impl Transaction {
    pub fn new(coll: impl Into<String>) -> Transaction {
        Transaction {
            coll: coll.into(),
            ops: Vec::new(),
        }
    }

    pub fn collection(&self) -> &str {
        &self.coll
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

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

    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    pub fn create_collection(&mut self) -> &mut Self {
        self.push(Op::CreateCollection)
    }
    pub fn remove_collection(&mut self) -> &mut Self {
        self.push(Op::RemoveCollection)
    }
    pub fn touch(&mut self, obj: &str) -> &mut Self {
        self.push(Op::Touch { obj: obj.into() })
    }
    pub fn write(&mut self, obj: &str, offset: u64, data: impl Into<Vec<u8>>) -> &mut Self {
        self.push(Op::Write {
            obj: obj.into(),
            offset,
            data: Arc::new(data.into()),
        })
    }
    /// A write whose buffer the caller keeps a reference to (no copy).
    pub fn write_shared(&mut self, obj: &str, offset: u64, data: Arc<Vec<u8>>) -> &mut Self {
        self.push(Op::Write {
            obj: obj.into(),
            offset,
            data,
        })
    }
    pub fn zero(&mut self, obj: &str, offset: u64, len: u64) -> &mut Self {
        self.push(Op::Zero {
            obj: obj.into(),
            offset,
            len,
        })
    }
    pub fn truncate(&mut self, obj: &str, size: u64) -> &mut Self {
        self.push(Op::Truncate {
            obj: obj.into(),
            size,
        })
    }
    pub fn remove(&mut self, obj: &str) -> &mut Self {
        self.push(Op::Remove { obj: obj.into() })
    }
    pub fn setattr(&mut self, obj: &str, name: &str, value: impl Into<Vec<u8>>) -> &mut Self {
        let mut attrs = BTreeMap::new();
        attrs.insert(name.to_string(), value.into());
        self.setattrs(obj, attrs)
    }
    pub fn setattrs(&mut self, obj: &str, attrs: BTreeMap<String, Vec<u8>>) -> &mut Self {
        self.push(Op::SetAttrs {
            obj: obj.into(),
            attrs,
        })
    }
    pub fn rmattr(&mut self, obj: &str, name: &str) -> &mut Self {
        self.push(Op::RmAttr {
            obj: obj.into(),
            name: name.into(),
        })
    }
    pub fn rmattrs(&mut self, obj: &str) -> &mut Self {
        self.push(Op::RmAttrs { obj: obj.into() })
    }
    pub fn omap_setkeys(&mut self, obj: &str, entries: BTreeMap<Vec<u8>, Vec<u8>>) -> &mut Self {
        self.push(Op::OmapSetKeys {
            obj: obj.into(),
            entries,
        })
    }
    pub fn omap_setkey(&mut self, obj: &str, key: &[u8], value: &[u8]) -> &mut Self {
        let mut entries = BTreeMap::new();
        entries.insert(key.to_vec(), value.to_vec());
        self.omap_setkeys(obj, entries)
    }
    pub fn omap_rmkeys(&mut self, obj: &str, keys: Vec<Vec<u8>>) -> &mut Self {
        self.push(Op::OmapRmKeys {
            obj: obj.into(),
            keys,
        })
    }
    pub fn omap_rmkeyrange(&mut self, obj: &str, first: &[u8], last: &[u8]) -> &mut Self {
        self.push(Op::OmapRmKeyRange {
            obj: obj.into(),
            first: first.to_vec(),
            last: last.to_vec(),
        })
    }
    pub fn omap_clear(&mut self, obj: &str) -> &mut Self {
        self.push(Op::OmapClear { obj: obj.into() })
    }
    pub fn omap_setheader(&mut self, obj: &str, header: impl Into<Vec<u8>>) -> &mut Self {
        self.push(Op::OmapSetHeader {
            obj: obj.into(),
            header: header.into(),
        })
    }
    pub fn clone_object(&mut self, src: &str, dst: &str) -> &mut Self {
        self.push(Op::Clone {
            src: src.into(),
            dst: dst.into(),
        })
    }
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
    pub fn rename(&mut self, from: &str, to: &str) -> &mut Self {
        self.push(Op::Rename {
            from: from.into(),
            to: to.into(),
        })
    }
}
