//! A shard's in-memory objects: onodes with their data buffers, and omap changes not yet
//! committed.
//!
//! The cached onode of an object is always its newest state, including transactions still on
//! their way to the kv: a transaction changes a copy, and the copy replaces the cached state
//! when PREPARE succeeds. An entry is in use — and never evicted — while anything else holds a
//! reference to it: a transaction before KV_DONE, a buffer waiting for its data to land, a read
//! in flight. Unused entries are evicted least recently used first when the shard's cache is
//! over its memory target.
//!
//! Buffers hold object data by object offset: *pending* ones hold data whose device write has
//! not completed (copy-on-write in flight, or a deferred write not yet applied) — reads must
//! get it from here — and *clean* ones hold data the device also has.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use super::extents::ExtentMap;
use super::format::CollId;

/// An object's state.
#[derive(Clone, Debug)]
pub(crate) struct Onode {
    pub exists: bool,
    pub size: u64,
    pub attrs: Arc<BTreeMap<String, Vec<u8>>>,
    /// 0: no omap yet.
    pub omap_id: u64,
    pub extents: ExtentMap,
}

impl Onode {
    pub fn missing(span: u64, csum_block: u64) -> Onode {
        Onode {
            exists: false,
            size: 0,
            attrs: Arc::new(BTreeMap::new()),
            omap_id: 0,
            extents: ExtentMap::new(span, csum_block),
        }
    }

    fn memory(&self) -> usize {
        160 + self.extents.memory()
            + self
                .attrs
                .iter()
                .map(|(k, v)| 48 + k.len() + v.len())
                .sum::<usize>()
    }
}

pub(crate) type OnodeRef = Rc<RefCell<CachedOnode>>;

pub(crate) struct CachedOnode {
    pub cid: CollId,
    pub name: Rc<str>,
    pub onode: Onode,
    pub buffers: BufferSpace,
    /// Bumped by every change of the object's data; a read only caches what it read if the
    /// number is the same when it completes.
    pub data_seq: u64,
    /// A transaction that changed this object failed after PREPARE (the store has stopped):
    /// what memory shows of it was never stored, so it is not served any more.
    pub lost_changes: bool,
    tick: u64,
    charged: usize,
}

/// One buffer: `len` bytes of `data` from `data_offset`.
#[derive(Clone, Debug)]
pub(crate) struct Buf {
    pub len: u64,
    pub data: Arc<Vec<u8>>,
    pub data_offset: usize,
    /// The transaction whose device write this data waits for; None once the device has it.
    pub pending: Option<u64>,
}

impl Buf {
    pub fn bytes(&self) -> &[u8] {
        &self.data[self.data_offset..self.data_offset + self.len as usize]
    }
}

/// Buffers of one object, by object offset; they never overlap.
#[derive(Clone, Debug, Default)]
pub(crate) struct BufferSpace {
    bufs: BTreeMap<u64, Buf>,
    clean_bytes: usize,
    /// Pending buffers (so "any pending?" needs no walk).
    pending: usize,
}

impl BufferSpace {
    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }

    pub fn clean_bytes(&self) -> usize {
        self.clean_bytes
    }

    fn account(&mut self, b: &Buf, add: bool) {
        match (b.pending.is_none(), add) {
            (true, true) => self.clean_bytes += b.len as usize,
            (true, false) => self.clean_bytes -= b.len as usize,
            (false, true) => self.pending += 1,
            (false, false) => self.pending -= 1,
        }
    }

    /// Removes what lies in `offset..offset + len`, keeping the parts of buffers outside it.
    pub fn discard(&mut self, offset: u64, len: u64) {
        if len == 0 || self.bufs.is_empty() {
            return;
        }
        let end = offset + len;
        let starts: Vec<u64> = {
            let before = self.bufs.range(..offset).next_back().map(|(s, _)| *s);
            before
                .into_iter()
                .chain(self.bufs.range(offset..end).map(|(s, _)| *s))
                .collect()
        };
        for s in starts {
            let b = self.bufs.remove(&s).expect("listed");
            let e = s + b.len;
            if e <= offset || s >= end {
                self.bufs.insert(s, b);
                continue;
            }
            self.account(&b, false);
            if s < offset {
                let left = Buf {
                    len: offset - s,
                    ..b.clone()
                };
                self.account(&left, true);
                self.bufs.insert(s, left);
            }
            if e > end {
                let right = Buf {
                    len: e - end,
                    data_offset: b.data_offset + (end - s) as usize,
                    ..b.clone()
                };
                self.account(&right, true);
                self.bufs.insert(end, right);
            }
        }
    }

    pub fn insert(&mut self, offset: u64, buf: Buf) {
        if buf.len == 0 {
            return;
        }
        self.discard(offset, buf.len);
        self.account(&buf, true);
        self.bufs.insert(offset, buf);
    }

    /// Copies what the buffers hold of `offset..offset + out.len()` into `out`; returns the
    /// ranges it filled, in order.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Vec<(u64, u64)> {
        let end = offset + out.len() as u64;
        let mut filled = Vec::new();
        let before = self.bufs.range(..offset).next_back();
        for (&s, b) in before.into_iter().chain(self.bufs.range(offset..end)) {
            let e = s + b.len;
            if e <= offset || s >= end {
                continue;
            }
            let from = s.max(offset);
            let to = e.min(end);
            let src = &b.bytes()[(from - s) as usize..(to - s) as usize];
            out[(from - offset) as usize..(to - offset) as usize].copy_from_slice(src);
            filled.push((from, to - from));
        }
        filled
    }

    /// Whether a pending buffer overlaps the range.
    pub fn has_pending(&self, offset: u64, len: u64) -> bool {
        let end = offset + len;
        let before = self.bufs.range(..offset).next_back();
        before
            .into_iter()
            .chain(self.bufs.range(offset..end))
            .any(|(&s, b)| b.pending.is_some() && s + b.len > offset && s < end)
    }

    pub fn any_pending(&self) -> bool {
        self.pending > 0
    }

    /// The data transaction tag `tag` wrote in `ranges` reached the device. Those buffers are
    /// dropped rather than kept clean: like BlueStore without buffered writes, written data is
    /// not cached (reads fill the cache); a hot object re-read is cached by its first read.
    pub fn landed(&mut self, tag: u64, ranges: &[(u64, u64)]) {
        for &(offset, len) in ranges {
            let end = offset + len;
            let starts: Vec<u64> = self
                .bufs
                .range(offset..end)
                .filter(|(_, b)| b.pending == Some(tag))
                .map(|(s, _)| *s)
                .collect();
            for s in starts {
                if let Some(b) = self.bufs.remove(&s) {
                    self.account(&b, false);
                }
            }
        }
    }

    /// Takes every buffer out.
    pub fn take_all(&mut self) -> Vec<(u64, Buf)> {
        self.clean_bytes = 0;
        self.pending = 0;
        std::mem::take(&mut self.bufs).into_iter().collect()
    }

    /// Drops every clean buffer (cache trimming).
    pub fn drop_clean(&mut self) {
        if self.clean_bytes > 0 {
            self.bufs.retain(|_, b| b.pending.is_some());
            self.clean_bytes = 0;
        }
    }
}

/// A shard's onodes: per collection, ordered by name (listing merges them with the kv), plus
/// a least-recently-used order for eviction.
pub(crate) struct OnodeCache {
    colls: HashMap<CollId, BTreeMap<Rc<str>, OnodeRef>>,
    lru: BTreeMap<u64, (CollId, Rc<str>)>,
    next_tick: u64,
    bytes: usize,
    target: usize,
}

impl OnodeCache {
    pub fn new(target: usize) -> OnodeCache {
        OnodeCache {
            colls: HashMap::new(),
            lru: BTreeMap::new(),
            next_tick: 1,
            bytes: 0,
            target,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.lru.len()
    }

    fn touch(&mut self, entry: &OnodeRef) {
        let mut e = entry.borrow_mut();
        self.lru.remove(&e.tick);
        e.tick = self.next_tick;
        self.next_tick += 1;
        self.lru.insert(e.tick, (e.cid, Rc::clone(&e.name)));
    }

    pub fn get(&mut self, cid: CollId, name: &str) -> Option<OnodeRef> {
        let entry = self.colls.get(&cid)?.get(name)?.clone();
        self.touch(&entry);
        Some(entry)
    }

    /// The entry, without counting it as a use.
    pub fn peek(&self, cid: CollId, name: &str) -> Option<&OnodeRef> {
        self.colls.get(&cid)?.get(name)
    }

    pub fn insert(&mut self, cid: CollId, name: &str, onode: Onode) -> OnodeRef {
        let name: Rc<str> = Rc::from(name);
        let entry = Rc::new(RefCell::new(CachedOnode {
            cid,
            name: Rc::clone(&name),
            onode,
            buffers: BufferSpace::default(),
            data_seq: 0,
            lost_changes: false,
            tick: 0,
            charged: 0,
        }));
        if let Some(old) = self
            .colls
            .entry(cid)
            .or_default()
            .insert(name, Rc::clone(&entry))
        {
            self.forget(&old);
        }
        self.touch(&entry);
        self.recharge(&entry);
        entry
    }

    fn forget(&mut self, entry: &OnodeRef) {
        let e = entry.borrow();
        self.lru.remove(&e.tick);
        self.bytes -= e.charged;
    }

    /// Moves an entry to a new name (rename); an entry already there is replaced.
    pub fn rename(&mut self, entry: &OnodeRef, to: &str) {
        let (cid, old) = {
            let e = entry.borrow();
            (e.cid, Rc::clone(&e.name))
        };
        let names = self.colls.entry(cid).or_default();
        let present = names.get(&old).is_some_and(|x| Rc::ptr_eq(x, entry));
        if present {
            names.remove(&old);
        }
        let to: Rc<str> = Rc::from(to);
        let replaced = names.insert(Rc::clone(&to), Rc::clone(entry));
        let already_there = replaced.as_ref().is_some_and(|r| Rc::ptr_eq(r, entry));
        if !present && !already_there {
            // Not under its name: another rename of the same commit took that name and forgot
            // this entry (a → b with c → a). It is back in the map: count it again.
            self.bytes += entry.borrow().charged;
        }
        if let Some(r) = replaced
            && !Rc::ptr_eq(&r, entry)
        {
            self.forget(&r);
        }
        {
            let mut e = entry.borrow_mut();
            self.lru.remove(&e.tick);
            e.name = to;
        }
        self.touch(entry);
    }

    /// Re-counts an entry's memory after a change.
    pub fn recharge(&mut self, entry: &OnodeRef) {
        let mut e = entry.borrow_mut();
        let now = e.name.len() + e.onode.memory() + e.buffers.clean_bytes();
        self.bytes = self.bytes + now - e.charged;
        e.charged = now;
    }

    /// Cached entries of a collection from `after` (exclusive), in name order.
    pub fn names_after<'a>(
        &'a self,
        cid: CollId,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Rc<str>, &'a OnodeRef)> + 'a {
        use std::ops::Bound;
        let lower: Bound<&str> = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        self.colls
            .get(&cid)
            .into_iter()
            .flat_map(move |m| m.range::<str, _>((lower, Bound::Unbounded)))
    }

    /// Drops every entry of a collection (it was removed; its objects were all gone).
    pub fn drop_collection(&mut self, cid: CollId) {
        if let Some(m) = self.colls.remove(&cid) {
            for entry in m.values() {
                self.forget(entry);
            }
        }
    }

    pub fn over_target(&self) -> bool {
        self.bytes > self.target
    }

    /// Brings the cache under its target, least recently used first: an entry's clean buffers
    /// go first, then the entry itself if nothing uses it. Looks at a bounded number of entries
    /// per call, so a cache full of busy objects costs a little per poll, not a stall. Returns
    /// how many entries were evicted.
    pub fn trim(&mut self) -> u64 {
        let mut evicted = 0;
        let mut budget = self.lru.len().min(64);
        while self.bytes > self.target && budget > 0 {
            budget -= 1;
            let Some((&tick, _)) = self.lru.iter().next() else {
                break;
            };
            let (cid, name) = self.lru.remove(&tick).expect("first");
            let Some(entry) = self.colls.get(&cid).and_then(|m| m.get(&name)).cloned() else {
                continue;
            };
            entry.borrow_mut().buffers.drop_clean();
            self.recharge(&entry);
            // Ours and the map's reference: anything more means it is in use.
            let in_use = Rc::strong_count(&entry) > 2 || entry.borrow().buffers.any_pending();
            if in_use || self.bytes <= self.target {
                let mut e = entry.borrow_mut();
                e.tick = self.next_tick;
                self.next_tick += 1;
                self.lru.insert(e.tick, (cid, name));
                continue;
            }
            if let Some(m) = self.colls.get_mut(&cid) {
                m.remove(&name);
            }
            let charged = entry.borrow().charged;
            self.bytes -= charged;
            evicted += 1;
        }
        evicted
    }
}

/// Omap changes of transactions not yet committed, so reads see them.
#[derive(Clone, Debug, Default)]
pub(crate) struct OmapOverlay {
    /// Transactions that changed it and have not reached KV_DONE.
    pub pins: u32,
    /// Everything committed before was cleared.
    pub cleared: bool,
    /// Some(None): header removed.
    pub header: Option<Option<Vec<u8>>>,
    /// Some(value): set; None: removed.
    pub entries: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Committed keys in these ranges are gone (unless set again in `entries`).
    pub removed_ranges: Vec<(Vec<u8>, Vec<u8>)>,
}

impl OmapOverlay {
    /// Whether a committed key is hidden by this overlay (absent an entry for it).
    pub fn hides(&self, key: &[u8]) -> bool {
        self.cleared
            || self
                .removed_ranges
                .iter()
                .any(|(a, b)| key >= a.as_slice() && key < b.as_slice())
    }

    pub fn clear(&mut self) {
        self.cleared = true;
        self.header = Some(None);
        self.entries.clear();
        self.removed_ranges.clear();
    }

    pub fn remove_range(&mut self, first: &[u8], last: &[u8]) {
        let doomed: Vec<Vec<u8>> = self
            .entries
            .range(first.to_vec()..last.to_vec())
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.entries.remove(&k);
        }
        self.removed_ranges.push((first.to_vec(), last.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(len: u64, byte: u8, pending: Option<u64>) -> Buf {
        Buf {
            len,
            data: Arc::new(vec![byte; len as usize]),
            data_offset: 0,
            pending,
        }
    }

    #[test]
    fn buffers_overlay_split_and_land() {
        let mut s = BufferSpace::default();
        s.insert(0, buf(16384, 1, None));
        s.insert(4096, buf(4096, 2, Some(7)));
        assert_eq!(s.clean_bytes(), 12288);
        let mut out = vec![0u8; 12288];
        let filled = s.read(0, &mut out);
        assert_eq!(filled, vec![(0, 4096), (4096, 4096), (8192, 4096)]);
        assert_eq!((out[0], out[4096], out[8192]), (1, 2, 1));
        assert!(s.has_pending(0, 8192) && !s.has_pending(8192, 8192));
        s.landed(7, &[(4096, 4096)]);
        assert!(!s.any_pending());
        assert_eq!(s.clean_bytes(), 12288);
        s.discard(2048, 4096);
        let mut out = vec![9u8; 16384];
        let filled = s.read(0, &mut out);
        assert_eq!(filled, vec![(0, 2048), (8192, 8192)]);
        assert_eq!(s.clean_bytes(), 10240);
    }

    #[test]
    fn renames_that_swap_names_keep_the_memory_count() {
        let mut c = OnodeCache::new(1 << 30);
        let a = c.insert(1, "a", Onode::missing(65536, 4096));
        let b = c.insert(1, "b", Onode::missing(65536, 4096));
        let before = c.bytes();
        // One commit's moves, in name order: b → a (forgets a, which is moving too), a → z.
        c.rename(&b, "a");
        c.rename(&a, "z");
        c.recharge(&a);
        c.recharge(&b);
        assert_eq!(c.bytes(), before);
        assert_eq!(c.len(), 2);
        drop((a, b));
        c.target = 0;
        c.trim();
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }

    #[test]
    fn the_cache_evicts_only_what_nobody_uses() {
        let mut c = OnodeCache::new(0);
        let a = c.insert(1, "a", Onode::missing(65536, 4096));
        let b = c.insert(1, "b", Onode::missing(65536, 4096));
        drop(b);
        assert_eq!(c.trim(), 1);
        assert!(c.get(1, "b").is_none());
        assert!(c.get(1, "a").is_some());
        c.rename(&a, "z");
        assert!(c.get(1, "a").is_none());
        let names: Vec<String> = c.names_after(1, None).map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, vec!["z"]);
        drop(a);
        c.trim();
        assert_eq!(c.len(), 0);
        assert_eq!(c.bytes(), 0);
    }
}
