//! PREPARE: applying a transaction's ops to the shard's objects.
//!
//! Every object the transaction touches is worked on as a copy (cheap: attributes and
//! extent-map shards are shared until changed). Only when every op has succeeded do the copies
//! replace the cached objects, the data writes get built, and the kv changes get listed; a
//! failing op (ENOENT, ENOSPC, a read error while padding a partial block, ...) throws the
//! copies away and gives back the space taken so far, so a failed transaction changes nothing.
//!
//! The write path (docs/store.md):
//! - an overwrite shorter than `prefer_deferred_size` of space that is allocated and not shared
//!   is *deferred*: padded to checksum blocks, put in the kv batch as a journal record, and
//!   applied in place after commit;
//! - everything else is *copy-on-write*: padded to allocation units (reading the partial units'
//!   old bytes), written to newly allocated space before the commit; the old space is freed
//!   after it.
//!
//! Invariant kept by both: inside mapped allocation units, every byte beyond the object's size
//! is zero (truncate zeroes the tail it keeps), so growing an object never reveals old data.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::cache::{Buf, BufferSpace, OmapOverlay, Onode, OnodeRef};
use super::error::{Result, StoreError};
use super::extents::Piece;
use super::format::{
    CollId, OnodeRecord, coll_key, encode_coll, encode_onode, omap_all, omap_entry_key,
    omap_header_key, onode_key, prefix_end, shard_key, shard_prefix,
};
use super::kv_sync::KvOps;
use super::shard::Shard;
use super::space::SpaceDelta;
use super::transaction::Op;
use super::txc::DeferredWrite;

/// A copy-on-write data write: `len` bytes of `data` from `data_offset` go to `phys`.
pub(crate) struct DataWrite {
    pub phys: u64,
    pub data: Arc<Vec<u8>>,
    pub data_offset: usize,
    pub len: u64,
}

/// What a successful PREPARE hands to the state machine.
pub(crate) struct Prepared {
    pub cid: CollId,
    pub kv: KvOps,
    pub writes: Vec<DataWrite>,
    pub deferred: Vec<DeferredWrite>,
    pub released: Vec<(u64, u64)>,
    pub onodes: Vec<OnodeRef>,
    pub omaps: Vec<u64>,
    /// Objects with buffers waiting for this transaction's data, and the ranges.
    pub buffer_onodes: Vec<(OnodeRef, Vec<(u64, u64)>)>,
}

/// The tag of buffers waiting for a transaction's copy-on-write data, and for its deferred
/// writes: a transaction may have both, and they land at different times.
pub(crate) fn cow_tag(txc: u64) -> u64 {
    txc << 1
}
pub(crate) fn deferred_tag(txc: u64) -> u64 {
    (txc << 1) | 1
}

/// One object as the transaction sees it.
struct Work {
    /// Its cache entry; None for a name a rename just vacated (made at commit).
    entry: Option<OnodeRef>,
    /// The name `base` is stored under in the kv.
    kv_name: String,
    base: Onode,
    cur: Onode,
    /// Data this transaction wrote (pending on it).
    local: BufferSpace,
    /// Ranges whose mapping changed without new data here: cached buffers there are stale.
    remapped: Vec<(u64, u64)>,
    /// Every cached buffer is stale (removed, or replaced by a clone).
    drop_buffers: bool,
    data_changed: bool,
}

struct Txn {
    id: u64,
    cid: CollId,
    coll_exists: bool,
    coll_created: bool,
    coll_removed: bool,
    works: BTreeMap<(CollId, String), Work>,
    /// kv names whose keys must go although no work holds them any more.
    orphaned: Vec<(CollId, String)>,
    kv: KvOps,
    delta: SpaceDelta,
    allocated: Vec<(u64, u64)>,
    released: Vec<(u64, u64)>,
    writes: Vec<DataWrite>,
    deferred: Vec<DeferredWrite>,
    omaps: BTreeMap<u64, OmapOverlay>,
}

fn csums_of(data: &[u8], cb: u64) -> Vec<u32> {
    data.chunks(cb as usize).map(crc32c::crc32c).collect()
}

/// The parts of `start..start + len` not in `covered` (sorted, inside the range).
fn gaps(start: u64, len: u64, covered: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = start;
    for &(s, l) in covered {
        if s > at {
            out.push((at, s - at));
        }
        at = at.max(s + l);
    }
    if at < start + len {
        out.push((at, start + len - at));
    }
    out
}

fn overlaps(ranges: &[(u64, u64)], offset: u64, len: u64) -> bool {
    ranges
        .iter()
        .any(|&(s, l)| s < offset + len && offset < s.saturating_add(l))
}

/// Where the last mapping of an object ends (0: none).
fn mapped_end(o: &Onode) -> u64 {
    o.extents.end()
}

impl Shard {
    pub(crate) fn prepare(&mut self, id: u64, coll: &str, ops: Vec<Op>) -> Result<Prepared> {
        let (cid, exists) = match self.colls.get(coll) {
            Some(c) => (c.cid, c.exists),
            None => (0, false),
        };
        // Every op checks the collection, so only a transaction without ops could reach the
        // pipeline naming one that does not exist (and the shard has no state for it).
        if ops.is_empty() && !exists {
            return Err(StoreError::NoSuchCollection { coll: coll.into() });
        }
        let mut t = Txn {
            id,
            cid,
            coll_exists: exists,
            coll_created: false,
            coll_removed: false,
            works: BTreeMap::new(),
            orphaned: Vec::new(),
            kv: KvOps::default(),
            delta: SpaceDelta::default(),
            allocated: Vec::new(),
            released: Vec::new(),
            writes: Vec::new(),
            deferred: Vec::new(),
            omaps: BTreeMap::new(),
        };
        for op in ops {
            if let Err(e) = self.apply_op(&mut t, coll, op) {
                // Nothing was written and nothing is referenced: give the space back.
                let _ = self.shared.space.release(&t.allocated);
                return Err(e);
            }
        }
        // Past the full ratio only transactions that free as much as they take go through;
        // those (overwrites, deletes) do not look at the allocator again.
        let taken: u64 = t.allocated.iter().map(|r| r.1).sum();
        let freed: u64 = t.released.iter().map(|r| r.1).sum();
        if taken > freed
            && let Err(e) = self.shared.space.check_growth(taken - freed)
        {
            let _ = self.shared.space.release(&t.allocated);
            return Err(e);
        }
        Ok(self.commit_prepare(t, coll))
    }

    fn apply_op(&mut self, t: &mut Txn, coll: &str, op: Op) -> Result<()> {
        match op {
            Op::CreateCollection => {
                if t.coll_exists {
                    return Err(StoreError::CollectionExists { coll: coll.into() });
                }
                t.cid = self.shared.alloc_cid();
                t.coll_exists = true;
                t.coll_created = true;
                t.coll_removed = false;
                t.kv.put(coll_key(coll), encode_coll(t.cid));
                Ok(())
            }
            Op::RemoveCollection => {
                if !t.coll_exists {
                    return Err(StoreError::NoSuchCollection { coll: coll.into() });
                }
                if self.coll_nonempty(t)? {
                    return Err(StoreError::CollectionNotEmpty { coll: coll.into() });
                }
                t.kv.delete(coll_key(coll));
                t.coll_exists = false;
                t.coll_removed = true;
                t.coll_created = false;
                Ok(())
            }
            op => {
                if !t.coll_exists {
                    return Err(StoreError::NoSuchCollection { coll: coll.into() });
                }
                self.apply_object_op(t, coll, op)
            }
        }
    }

    fn apply_object_op(&mut self, t: &mut Txn, coll: &str, op: Op) -> Result<()> {
        let max_object = 1u64 << 44;
        match op {
            Op::Touch { obj } => {
                let mut w = self.take_work(t, &obj)?;
                w.cur.exists = true;
                self.put_work(t, obj, w);
            }
            Op::Write { obj, offset, data } => {
                if offset.saturating_add(data.len() as u64) > max_object {
                    return Err(StoreError::invalid(format!(
                        "write to {obj} ends past the largest object size {max_object}"
                    )));
                }
                let mut w = self.take_work(t, &obj)?;
                w.cur.exists = true;
                let len = data.len() as u64;
                self.write_data(t, &mut w, coll, &obj, offset, &data, 0, len)?;
                self.put_work(t, obj, w);
            }
            Op::Zero { obj, offset, len } => {
                if offset.saturating_add(len) > max_object {
                    return Err(StoreError::invalid(format!(
                        "zero of {obj} ends past the largest object size {max_object}"
                    )));
                }
                let mut w = self.take_work(t, &obj)?;
                w.cur.exists = true;
                self.zero(t, &mut w, coll, &obj, offset, len)?;
                self.put_work(t, obj, w);
            }
            Op::Truncate { obj, size } => {
                if size > max_object {
                    return Err(StoreError::invalid(format!(
                        "truncate of {obj} to {size} is past the largest object size {max_object}"
                    )));
                }
                let mut w = self.take_existing(t, &obj, coll)?;
                self.truncate(t, &mut w, coll, &obj, size)?;
                self.put_work(t, obj, w);
            }
            Op::Remove { obj } => {
                let mut w = self.take_existing(t, &obj, coll)?;
                self.reset(t, &mut w);
                w.cur.exists = false;
                self.put_work(t, obj, w);
            }
            Op::SetAttrs { obj, attrs } => {
                let mut w = self.take_existing(t, &obj, coll)?;
                Arc::make_mut(&mut w.cur.attrs).extend(attrs);
                self.put_work(t, obj, w);
            }
            Op::RmAttr { obj, name } => {
                let mut w = self.take_existing(t, &obj, coll)?;
                if w.cur.attrs.contains_key(&name) {
                    Arc::make_mut(&mut w.cur.attrs).remove(&name);
                }
                self.put_work(t, obj, w);
            }
            Op::RmAttrs { obj } => {
                let mut w = self.take_existing(t, &obj, coll)?;
                if !w.cur.attrs.is_empty() {
                    w.cur.attrs = Arc::new(BTreeMap::new());
                }
                self.put_work(t, obj, w);
            }
            Op::OmapSetKeys { obj, entries } => {
                let mut w = self.take_existing(t, &obj, coll)?;
                let id = self.ensure_omap(&mut w);
                let overlay = t.omaps.entry(id).or_default();
                for (k, v) in entries {
                    t.kv.put(omap_entry_key(id, &k), v.clone());
                    overlay.entries.insert(k, Some(v));
                }
                self.put_work(t, obj, w);
            }
            Op::OmapRmKeys { obj, keys } => {
                let w = self.take_existing(t, &obj, coll)?;
                let id = w.cur.omap_id;
                if id != 0 {
                    let overlay = t.omaps.entry(id).or_default();
                    for k in keys {
                        t.kv.delete(omap_entry_key(id, &k));
                        overlay.entries.insert(k, None);
                    }
                }
                self.put_work(t, obj, w);
            }
            Op::OmapRmKeyRange { obj, first, last } => {
                let w = self.take_existing(t, &obj, coll)?;
                let id = w.cur.omap_id;
                if id != 0 && first < last {
                    t.kv.delete_range(omap_entry_key(id, &first), omap_entry_key(id, &last));
                    t.omaps.entry(id).or_default().remove_range(&first, &last);
                }
                self.put_work(t, obj, w);
            }
            Op::OmapClear { obj } => {
                let mut w = self.take_existing(t, &obj, coll)?;
                let id = w.cur.omap_id;
                if id != 0 {
                    t.kv.delete_range(omap_all(id), omap_all(id + 1));
                    t.omaps.entry(id).or_default().clear();
                    // No omap any more (BlueStore clears its flag too); a later key gets a
                    // fresh id.
                    w.cur.omap_id = 0;
                }
                self.put_work(t, obj, w);
            }
            Op::OmapSetHeader { obj, header } => {
                let mut w = self.take_existing(t, &obj, coll)?;
                let id = self.ensure_omap(&mut w);
                t.kv.put(omap_header_key(id), header.clone());
                t.omaps.entry(id).or_default().header = Some(Some(header));
                self.put_work(t, obj, w);
            }
            Op::Clone { src, dst } => {
                if src == dst {
                    return Err(StoreError::invalid(format!("clone of {src} onto itself")));
                }
                let s = self.take_existing(t, &src, coll)?;
                let mut d = self.take_work(t, &dst)?;
                let result = self.clone_object(t, coll, &src, &s, &dst, &mut d);
                self.put_work(t, src, s);
                self.put_work(t, dst, d);
                result?;
            }
            Op::CloneRange {
                src,
                dst,
                src_offset,
                len,
                dst_offset,
            } => {
                if dst_offset.saturating_add(len) > max_object
                    || src_offset.saturating_add(len) > max_object
                {
                    return Err(StoreError::invalid(format!(
                        "clone_range {src} → {dst} runs past the largest object size"
                    )));
                }
                let s = self.take_existing(t, &src, coll)?;
                if src == dst {
                    // One object: copy through a buffer (the ranges may overlap).
                    let mut w = s;
                    let data = Arc::new(self.read_current(&w, coll, &src, src_offset, len)?);
                    self.write_data(t, &mut w, coll, &dst, dst_offset, &data, 0, len)?;
                    self.put_work(t, dst, w);
                    return Ok(());
                }
                let mut d = self.take_work(t, &dst)?;
                d.cur.exists = true;
                let result =
                    self.clone_range(t, coll, &src, &s, &dst, &mut d, src_offset, len, dst_offset);
                self.put_work(t, src, s);
                self.put_work(t, dst, d);
                result?;
            }
            Op::Rename { from, to } => {
                if from == to {
                    return Ok(());
                }
                let w = self.take_existing(t, &from, coll)?;
                let target = self.take_work(t, &to)?;
                if target.cur.exists {
                    self.put_work(t, from, w);
                    self.put_work(t, to.clone(), target);
                    return Err(StoreError::ObjectExists {
                        coll: coll.into(),
                        obj: to,
                    });
                }
                // Keys of the target that existed in the kv still have to go.
                if target.base.exists {
                    t.orphaned.push((t.cid, target.kv_name.clone()));
                }
                let span = self.shared.params.shard_span;
                let cb = self.shared.params.csum_block;
                let vacated = Work {
                    entry: None,
                    kv_name: from.clone(),
                    base: Onode::missing(span, cb),
                    cur: Onode::missing(span, cb),
                    local: BufferSpace::default(),
                    remapped: Vec::new(),
                    drop_buffers: true,
                    data_changed: false,
                };
                self.put_work(t, to, w);
                self.put_work(t, from, vacated);
            }
            Op::CreateCollection | Op::RemoveCollection => unreachable!("handled by apply_op"),
        }
        Ok(())
    }

    // ---- objects of the transaction -------------------------------------------------------

    fn take_work(&mut self, t: &mut Txn, name: &str) -> Result<Work> {
        if let Some(w) = t.works.remove(&(t.cid, name.to_string())) {
            return Ok(w);
        }
        let entry = self.onode(t.cid, name)?;
        let base = entry.borrow().onode.clone();
        Ok(Work {
            entry: Some(entry),
            kv_name: name.to_string(),
            cur: base.clone(),
            base,
            local: BufferSpace::default(),
            remapped: Vec::new(),
            drop_buffers: false,
            data_changed: false,
        })
    }

    fn take_existing(&mut self, t: &mut Txn, name: &str, coll: &str) -> Result<Work> {
        let w = self.take_work(t, name)?;
        if !w.cur.exists {
            self.put_work(t, name.to_string(), w);
            return Err(StoreError::NoSuchObject {
                coll: coll.into(),
                obj: name.into(),
            });
        }
        Ok(w)
    }

    fn put_work(&mut self, t: &mut Txn, name: String, w: Work) {
        t.works.insert((t.cid, name), w);
    }

    fn ensure_omap(&mut self, w: &mut Work) -> u64 {
        if w.cur.omap_id == 0 {
            w.cur.omap_id = self.shared.alloc_omap_id();
        }
        w.cur.omap_id
    }

    /// Whether the collection holds an object, as this transaction would leave it.
    fn coll_nonempty(&mut self, t: &Txn) -> Result<bool> {
        let cid = t.cid;
        if t.works.iter().any(|((c, _), w)| *c == cid && w.cur.exists) {
            return Ok(true);
        }
        let decided = |name: &str| t.works.contains_key(&(cid, name.to_string()));
        for (name, entry) in self.cache.names_after(cid, None) {
            if !decided(name) && entry.borrow().onode.exists {
                return Ok(true);
            }
        }
        let prefix = super::format::onode_prefix(cid);
        for item in self
            .shared
            .kv
            .scan(&bluepoll_kv::KeyRange::prefix(&prefix), None)
        {
            let (key, _) = item?;
            let name = super::format::name_of_onode_key(&key)?;
            if decided(&name) || self.cache.peek(cid, &name).is_some() {
                continue;
            }
            return Ok(true);
        }
        Ok(false)
    }

    // ---- data ---------------------------------------------------------------------------------

    /// Frees (or drops a reference to) the device ranges a punch unmapped.
    fn drop_refs(&self, t: &mut Txn, ranges: &[(u64, u64)]) {
        let au = self.shared.params.au;
        for &(phys, len) in ranges {
            let first = phys / au;
            let units = len / au;
            let shared_here = self.shared.space.any_shared(first, units)
                || t.delta.refs.range(first..first + units).next().is_some();
            if !shared_here {
                t.delta.freed(phys, len, au);
                t.released.push((phys, len));
                continue;
            }
            for u in first..first + units {
                let extra = self.shared.space.extra_refs(u) as i64
                    + t.delta.refs.get(&u).copied().unwrap_or(0);
                if extra > 0 {
                    *t.delta.refs.entry(u).or_default() -= 1;
                } else {
                    t.delta.freed(u * au, au, au);
                    t.released.push((u * au, au));
                }
            }
        }
    }

    fn add_refs(&self, t: &mut Txn, phys: u64, len: u64) {
        let au = self.shared.params.au;
        for u in phys / au..(phys + len) / au {
            *t.delta.refs.entry(u).or_default() += 1;
        }
    }

    /// Unmaps `offset..offset + len` (allocation-unit aligned) of the work.
    fn punch(&self, t: &mut Txn, w: &mut Work, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let mut released = Vec::new();
        w.cur.extents.punch(offset, len, &mut released);
        self.drop_refs(t, &released);
        w.local.discard(offset, len);
        w.remapped.push((offset, len));
        w.data_changed = true;
    }

    /// Empties an object: no data, attributes or omap (remove, and the target of a clone).
    fn reset(&mut self, t: &mut Txn, w: &mut Work) {
        let end = mapped_end(&w.cur);
        let au = self.shared.params.au;
        self.punch(t, w, 0, end.next_multiple_of(au));
        w.drop_buffers = true;
        w.local = BufferSpace::default();
        let id = w.cur.omap_id;
        if id != 0 {
            t.kv.delete_range(omap_all(id), omap_all(id + 1));
            t.omaps.entry(id).or_default().clear();
        }
        let span = self.shared.params.shard_span;
        let cb = self.shared.params.csum_block;
        let extents =
            std::mem::replace(&mut w.cur.extents, super::extents::ExtentMap::new(span, cb));
        debug_assert!(extents.is_empty());
        w.cur.size = 0;
        w.cur.omap_id = 0;
        if !w.cur.attrs.is_empty() {
            w.cur.attrs = Arc::new(BTreeMap::new());
        }
    }

    /// The object's bytes `offset..offset + len` as this transaction sees them: its own
    /// writes, then cached buffers, then the device (checksums verified); holes are zeroes.
    fn read_current(
        &mut self,
        w: &Work,
        coll: &str,
        obj: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        let cb = self.shared.params.csum_block;
        let r0 = offset / cb * cb;
        let r1 = (offset + len).next_multiple_of(cb);
        let mut out = vec![0u8; (r1 - r0) as usize];
        for piece in w.cur.extents.pieces(r0, r1 - r0) {
            let Piece::Mapped {
                offset: po,
                len: pl,
                phys,
                csums,
            } = piece
            else {
                continue;
            };
            let slice = |o: u64, l: u64| ((o - r0) as usize, (o - r0 + l) as usize);
            let (a, b) = slice(po, pl);
            let mut covered = w.local.read(po, &mut out[a..b]);
            let mut missing = gaps(po, pl, &covered);
            if !w.drop_buffers
                && let Some(entry) = &w.entry
            {
                let entry = entry.borrow();
                for (s, l) in std::mem::take(&mut missing) {
                    if overlaps(&w.remapped, s, l) {
                        missing.push((s, l));
                        continue;
                    }
                    let (a, b) = slice(s, l);
                    let got = entry.buffers.read(s, &mut out[a..b]);
                    covered.extend(got.iter().copied());
                    missing.extend(gaps(s, l, &got));
                }
            }
            for (s, l) in missing {
                let (a, b) = slice(s, l);
                let at = phys + (s - po);
                self.perf.rmw_reads += 1;
                if let Err((failed_at, status)) = self.sync_io.read(at, &mut out[a..b]) {
                    return Err(StoreError::Io {
                        coll: coll.into(),
                        obj: obj.into(),
                        op: "read",
                        offset: s + (failed_at - at),
                        len: l,
                        phys: failed_at,
                        status,
                    });
                }
                let first = ((s - po) / cb) as usize;
                for (k, block) in out[a..b].chunks(cb as usize).enumerate() {
                    let actual = crc32c::crc32c(block);
                    let expected = csums[first + k];
                    if actual != expected {
                        self.perf.csum_errors += 1;
                        return Err(StoreError::ChecksumMismatch {
                            coll: coll.into(),
                            obj: obj.into(),
                            offset: s + k as u64 * cb,
                            phys: at + k as u64 * cb,
                            expected,
                            actual,
                        });
                    }
                }
            }
        }
        let skip = (offset - r0) as usize;
        out.drain(..skip);
        out.truncate(len as usize);
        Ok(out)
    }

    /// The object's bytes `r0..r1` with `len` bytes of `data` (from `data_offset`) written at
    /// `offset` inside: the partial ends padded with the current bytes. Returns the buffer and
    /// where `r0` is in it — the caller's own buffer, uncopied, when nothing needs padding.
    #[allow(clippy::too_many_arguments)]
    fn padded(
        &mut self,
        w: &Work,
        coll: &str,
        obj: &str,
        r0: u64,
        r1: u64,
        offset: u64,
        data: &Arc<Vec<u8>>,
        data_offset: usize,
        len: u64,
    ) -> Result<(Arc<Vec<u8>>, usize)> {
        let end = offset + len;
        if offset == r0 && end == r1 {
            return Ok((Arc::clone(data), data_offset));
        }
        let mut b = vec![0u8; (r1 - r0) as usize];
        if offset > r0 {
            let head = self.read_current(w, coll, obj, r0, offset - r0)?;
            b[..head.len()].copy_from_slice(&head);
        }
        if end < r1 {
            let tail = self.read_current(w, coll, obj, end, r1 - end)?;
            b[(end - r0) as usize..].copy_from_slice(&tail);
        }
        b[(offset - r0) as usize..(end - r0) as usize]
            .copy_from_slice(&data[data_offset..data_offset + len as usize]);
        Ok((Arc::new(b), 0))
    }

    /// Whether an overwrite of `r0..r1` may go in place: all of it mapped, none of it shared.
    fn can_defer(&self, t: &Txn, w: &Work, r0: u64, r1: u64) -> bool {
        let au = self.shared.params.au;
        let pieces = w.cur.extents.pieces(r0, r1 - r0);
        pieces.iter().all(|p| match p {
            Piece::Hole { .. } => false,
            Piece::Mapped { phys, len, .. } => {
                let first = phys / au;
                let units = (phys + len).div_ceil(au) - first;
                !self.shared.space.any_shared(first, units)
                    && t.delta.refs.range(first..first + units).next().is_none()
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn write_data(
        &mut self,
        t: &mut Txn,
        w: &mut Work,
        coll: &str,
        obj: &str,
        offset: u64,
        data: &Arc<Vec<u8>>,
        data_offset: usize,
        len: u64,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let p = self.shared.params;
        let (au, cb) = (p.au, p.csum_block);
        let end = offset + len;
        let d0 = offset / cb * cb;
        let d1 = end.next_multiple_of(cb);
        if p.deferred_size > 0 && len < p.deferred_size && self.can_defer(t, w, d0, d1) {
            let (block, base) =
                self.padded(w, coll, obj, d0, d1, offset, data, data_offset, len)?;
            let csums = csums_of(&block[base..base + (d1 - d0) as usize], cb);
            for piece in w.cur.extents.pieces(d0, d1 - d0) {
                if let Piece::Mapped {
                    offset: po,
                    len: pl,
                    phys,
                    ..
                } = piece
                {
                    t.deferred.push(DeferredWrite {
                        phys,
                        data: Arc::clone(&block),
                        data_offset: base + (po - d0) as usize,
                        len: pl as usize,
                    });
                }
            }
            w.cur.extents.set_csums(d0, &csums);
            w.local.insert(
                d0,
                Buf {
                    len: d1 - d0,
                    data: block,
                    data_offset: base,
                    pending: Some(deferred_tag(t.id)),
                },
            );
        } else {
            let a0 = offset / au * au;
            let a1 = end.next_multiple_of(au);
            let (block, base) =
                self.padded(w, coll, obj, a0, a1, offset, data, data_offset, len)?;
            let csums = csums_of(&block[base..base + (a1 - a0) as usize], cb);
            self.punch(t, w, a0, a1 - a0);
            let got = self.shared.space.allocate(a1 - a0)?;
            t.allocated.extend_from_slice(&got);
            let mut at = a0;
            for (phys, l) in got {
                let first = ((at - a0) / cb) as usize;
                let last = ((at - a0 + l) / cb) as usize;
                w.cur.extents.insert(at, l, phys, &csums[first..last]);
                t.delta.allocated(phys, l, au);
                t.writes.push(DataWrite {
                    phys,
                    data: Arc::clone(&block),
                    data_offset: base + (at - a0) as usize,
                    len: l,
                });
                at += l;
            }
            w.local.insert(
                a0,
                Buf {
                    len: a1 - a0,
                    data: block,
                    data_offset: base,
                    pending: Some(cow_tag(t.id)),
                },
            );
        }
        w.cur.size = w.cur.size.max(end);
        w.data_changed = true;
        Ok(())
    }

    /// Writes zeroes over `offset..offset + len` of the unit(s) around it, if any is mapped
    /// (an unmapped unit reads as zeroes already).
    fn zero_partial(
        &mut self,
        t: &mut Txn,
        w: &mut Work,
        coll: &str,
        obj: &str,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let au = self.shared.params.au;
        let a0 = offset / au * au;
        let a1 = (offset + len).next_multiple_of(au);
        let mapped = w
            .cur
            .extents
            .pieces(a0, a1 - a0)
            .iter()
            .any(|p| matches!(p, Piece::Mapped { .. }));
        if mapped {
            let zeros = Arc::new(vec![0u8; len as usize]);
            self.write_data(t, w, coll, obj, offset, &zeros, 0, len)?;
        }
        Ok(())
    }

    fn zero(
        &mut self,
        t: &mut Txn,
        w: &mut Work,
        coll: &str,
        obj: &str,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let au = self.shared.params.au;
        let end = offset + len;
        let inner0 = offset.next_multiple_of(au);
        let inner1 = end / au * au;
        let size = w.cur.size.max(end);
        if inner0 < inner1 {
            self.punch(t, w, inner0, inner1 - inner0);
            self.zero_partial(t, w, coll, obj, offset, inner0 - offset)?;
            self.zero_partial(t, w, coll, obj, inner1, end - inner1)?;
        } else {
            self.zero_partial(t, w, coll, obj, offset, len)?;
        }
        w.cur.size = size;
        w.data_changed = true;
        Ok(())
    }

    fn truncate(
        &mut self,
        t: &mut Txn,
        w: &mut Work,
        coll: &str,
        obj: &str,
        size: u64,
    ) -> Result<()> {
        if size >= w.cur.size {
            w.cur.size = size;
            return Ok(());
        }
        let au = self.shared.params.au;
        let keep = size.next_multiple_of(au);
        let end = mapped_end(&w.cur).max(w.cur.size.next_multiple_of(au));
        if end > keep {
            self.punch(t, w, keep, end - keep);
        }
        // The tail of the last unit kept must read as zeroes if the object grows again.
        self.zero_partial(t, w, coll, obj, size, keep - size)?;
        w.cur.size = size;
        w.data_changed = true;
        Ok(())
    }

    // ---- clones -------------------------------------------------------------------------------

    fn clone_object(
        &mut self,
        t: &mut Txn,
        coll: &str,
        src_name: &str,
        s: &Work,
        dst_name: &str,
        d: &mut Work,
    ) -> Result<()> {
        if d.cur.exists {
            self.reset(t, d);
        }
        d.cur.exists = true;
        d.drop_buffers = true;
        d.data_changed = true;
        let pending = !s.local.is_empty()
            || s.entry
                .as_ref()
                .is_some_and(|e| !s.drop_buffers && e.borrow().buffers.any_pending());
        if pending {
            // Data still on its way to the device cannot be shared yet: copy it.
            let size = s.cur.size;
            let data = Arc::new(self.read_current(s, coll, src_name, 0, size)?);
            self.write_data(t, d, coll, dst_name, 0, &data, 0, size)?;
        } else {
            let mapped: Vec<(u64, u64)> = s
                .cur
                .extents
                .iter()
                .map(|(_, e, _)| (e.phys, e.len as u64))
                .collect();
            for (phys, len) in mapped {
                self.add_refs(t, phys, len);
            }
            d.cur.extents = s.cur.extents.clone();
        }
        d.cur.size = s.cur.size;
        d.cur.attrs = Arc::clone(&s.cur.attrs);
        if s.cur.omap_id != 0 {
            let (header, entries) = self.omap_view(t, s.cur.omap_id)?;
            let id = self.ensure_omap(d);
            let overlay = t.omaps.entry(id).or_default();
            if let Some(h) = header {
                t.kv.put(omap_header_key(id), h.clone());
                overlay.header = Some(Some(h));
            }
            for (k, v) in entries {
                t.kv.put(omap_entry_key(id, &k), v.clone());
                overlay.entries.insert(k, Some(v));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn clone_range(
        &mut self,
        t: &mut Txn,
        coll: &str,
        src_name: &str,
        s: &Work,
        dst_name: &str,
        d: &mut Work,
        src_offset: u64,
        len: u64,
        dst_offset: u64,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let au = self.shared.params.au;
        let aligned = src_offset % au == 0 && dst_offset % au == 0 && len % au == 0;
        let pending = s.local.has_pending(src_offset, len)
            || s.entry.as_ref().is_some_and(|e| {
                !s.drop_buffers && e.borrow().buffers.has_pending(src_offset, len)
            });
        if aligned && !pending {
            let pieces = s.cur.extents.pieces(src_offset, len);
            for p in &pieces {
                if let Piece::Mapped { phys, len, .. } = p {
                    self.add_refs(t, *phys, *len);
                }
            }
            self.punch(t, d, dst_offset, len);
            for p in pieces {
                if let Piece::Mapped {
                    offset,
                    len,
                    phys,
                    csums,
                } = p
                {
                    d.cur
                        .extents
                        .insert(dst_offset + (offset - src_offset), len, phys, &csums);
                }
            }
            d.cur.size = d.cur.size.max(dst_offset + len);
        } else {
            let data = Arc::new(self.read_current(s, coll, src_name, src_offset, len)?);
            self.write_data(t, d, coll, dst_name, dst_offset, &data, 0, len)?;
        }
        d.data_changed = true;
        Ok(())
    }

    // ---- omap views ---------------------------------------------------------------------------

    /// An omap's header and entries as this transaction sees them (kv, shard overlay, then the
    /// transaction's own changes).
    fn omap_view(&self, t: &Txn, id: u64) -> Result<super::read::OmapContents> {
        let layers: Vec<&OmapOverlay> = self
            .omaps
            .get(&id)
            .into_iter()
            .chain(t.omaps.get(&id))
            .collect();
        // A layer that cleared the omap hides the committed state and every layer before it.
        let from = layers.iter().rposition(|l| l.cleared);
        let (mut header, mut entries) = match from {
            Some(_) => (None, BTreeMap::new()),
            None => super::read::omap_committed(&self.shared, id)?,
        };
        for layer in &layers[from.unwrap_or(0)..] {
            if let Some(h) = &layer.header {
                header = h.clone();
            }
            for (a, b) in &layer.removed_ranges {
                entries.retain(|k, _| !(k >= a && k < b));
            }
            for (k, v) in &layer.entries {
                match v {
                    Some(v) => entries.insert(k.clone(), v.clone()),
                    None => entries.remove(k),
                };
            }
        }
        Ok((header, entries))
    }

    // ---- commit -------------------------------------------------------------------------------

    /// Every op succeeded: the copies become the cached objects, the kv changes are listed.
    fn commit_prepare(&mut self, mut t: Txn, coll: &str) -> Prepared {
        let mut deletes = KvOps::default();
        let mut puts = KvOps::default();
        let delete_object = |ops: &mut KvOps, cid: CollId, name: &str| {
            ops.delete(onode_key(cid, name));
            let prefix = shard_prefix(cid, name);
            ops.delete_range(prefix.clone(), prefix_end(&prefix));
        };
        for (cid, name) in &t.orphaned {
            delete_object(&mut deletes, *cid, name);
        }
        let mut onodes = Vec::with_capacity(t.works.len());
        let mut buffer_onodes = Vec::new();
        let works = std::mem::take(&mut t.works);
        // Renamed entries move first, so a vacated name's new entry does not replace them.
        let (moved, stayed): (Vec<_>, Vec<_>) = works.into_iter().partition(|((_, name), w)| {
            w.entry.as_ref().is_some_and(|e| *e.borrow().name != **name)
        });
        for ((cid, name), mut w) in moved.into_iter().chain(stayed) {
            let renamed = w.kv_name != name;
            if w.base.exists && (!w.cur.exists || renamed) {
                delete_object(&mut deletes, cid, &w.kv_name);
            }
            if w.cur.exists {
                let fresh = renamed || !w.base.exists;
                let meta_changed = fresh
                    || w.base.size != w.cur.size
                    || w.base.omap_id != w.cur.omap_id
                    || !Arc::ptr_eq(&w.base.attrs, &w.cur.attrs);
                if meta_changed {
                    let record = OnodeRecord {
                        size: w.cur.size,
                        omap_id: w.cur.omap_id,
                        attrs: (*w.cur.attrs).clone(),
                    };
                    puts.put(onode_key(cid, &name), encode_onode(&record));
                }
                let prefix = shard_prefix(cid, &name);
                let (written, deleted) = if fresh {
                    (w.cur.extents.shard_indexes(), Vec::new())
                } else {
                    w.cur.extents.changed_shards(&w.base.extents)
                };
                for index in written {
                    puts.put(shard_key(&prefix, index), w.cur.extents.encode_shard(index));
                }
                for index in deleted {
                    puts.delete(shard_key(&prefix, index));
                }
            }
            // The cache.
            let entry = match w.entry {
                Some(e) => {
                    if *e.borrow().name != *name {
                        self.cache.rename(&e, &name);
                    }
                    e
                }
                None => self.cache.insert(cid, &name, w.cur.clone()),
            };
            {
                let mut e = entry.borrow_mut();
                e.onode = w.cur;
                if w.drop_buffers {
                    e.buffers = BufferSpace::default();
                } else {
                    for (s, l) in &w.remapped {
                        e.buffers.discard(*s, *l);
                    }
                }
                let local = w.local.take_all();
                let ranges: Vec<(u64, u64)> = local.iter().map(|(o, b)| (*o, b.len)).collect();
                for (offset, buf) in local {
                    e.buffers.insert(offset, buf);
                }
                if w.data_changed || !ranges.is_empty() {
                    e.data_seq += 1;
                }
                if !ranges.is_empty() {
                    buffer_onodes.push((Rc::clone(&entry), ranges));
                }
            }
            self.cache.recharge(&entry);
            onodes.push(entry);
        }
        // Omap overlays.
        let mut omaps = Vec::with_capacity(t.omaps.len());
        for (id, delta) in std::mem::take(&mut t.omaps) {
            let o = self.omaps.entry(id).or_default();
            o.pins += 1;
            if delta.cleared {
                o.clear();
            }
            for (a, b) in &delta.removed_ranges {
                o.remove_range(a, b);
            }
            if let Some(h) = delta.header {
                o.header = Some(h);
            }
            o.entries.extend(delta.entries);
            omaps.push(id);
        }
        // The collection. One made in this transaction (perhaps removed again in it, perhaps
        // after removing its previous incarnation) gets its entry here: the transaction joins
        // its sequencer, and a removed entry is forgotten once that sequencer empties.
        if t.coll_created || t.coll_removed {
            let c = self
                .colls
                .entry(coll.to_string())
                .or_insert(super::shard::Coll {
                    cid: t.cid,
                    exists: t.coll_exists,
                    osr: Default::default(),
                    handed: 0,
                });
            if c.cid != t.cid {
                // Transactions of the previous incarnation still in the sequencer find it by
                // their (old) id when their I/O lands or they commit: keep that name until
                // they are gone, or they would never move on (nor anything queued behind them).
                if c.osr.is_empty() {
                    self.cid_names.remove(&c.cid);
                }
                self.cache.drop_collection(c.cid);
            }
            c.cid = t.cid;
            c.exists = t.coll_exists;
            self.cid_names.insert(t.cid, coll.to_string());
            if t.coll_removed {
                self.cache.drop_collection(t.cid);
            }
        }
        self.shared.space.apply_refs(&t.delta.refs);
        let mut kv = std::mem::take(&mut t.kv);
        kv.extend(deletes);
        kv.extend(puts);
        t.delta.emit(&mut kv);
        Prepared {
            cid: t.cid,
            kv,
            writes: t.writes,
            deferred: t.deferred,
            released: t.released,
            onodes,
            omaps,
            buffer_onodes,
        }
    }
}

use std::rc::Rc;
