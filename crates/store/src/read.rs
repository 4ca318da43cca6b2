//! Reads and queries, answered on the shard that owns the collection, so they see every
//! transaction queued before them (read-your-writes): object state and attributes from the
//! cached onode, data from the buffers first (pending ones hold data not yet on the device),
//! then the device, verifying every checksum block; omap from the kv overlaid with the changes
//! of transactions not yet committed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::Shared;
use super::cache::{Buf, Onode, OnodeRef};
use super::error::{Result, StoreError};
use super::extents::{ExtentMap, Piece};
use super::format::{
    CollId, decode_onode, decode_shard, name_of_onode_key, omap_entry_key, omap_entry_prefix,
    omap_header_key, onode_key, onode_prefix, prefix_end, shard_prefix,
};
use super::shard::{MAX_IO, Shard};
use bluepoll_kv::KeyRange;
use bluepoll_nvme::{DmaBuf, Status};

/// What `stat` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectStat {
    /// The object's size in bytes.
    pub size: u64,
    /// Bytes of the device mapped by the object (shared units count for each object).
    pub allocated: u64,
    /// Whether the object has an omap: a header or an entry was set since it was made or its
    /// omap last cleared (removing the entries one by one leaves an empty omap).
    pub has_omap: bool,
}

/// Where a piece of an object's data lives on the main device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectExtent {
    /// Offset in the object.
    pub offset: u64,
    /// Bytes mapped (whole allocation units).
    pub length: u64,
    /// Byte offset on the main device.
    pub device_offset: u64,
}

/// Called with a read's bytes, on the shard's reactor.
pub type OnRead = Box<dyn FnOnce(Result<Vec<u8>>) + Send>;

/// A device read of a read request.
struct DevPiece {
    offset: u64,
    len: u64,
    phys: u64,
    csums: Vec<u32>,
}

pub(crate) struct ReadOp {
    entry: OnodeRef,
    coll: String,
    obj: String,
    /// Object offset of `out[0]` (checksum-block aligned).
    start: u64,
    out: Vec<u8>,
    /// The caller's bytes: `out[skip..skip + len]`.
    skip: usize,
    len: usize,
    pieces: Vec<DevPiece>,
    outstanding: u32,
    error: Option<StoreError>,
    seq: u64,
    data_seq: u64,
    started: Instant,
    done: Option<OnRead>,
}

/// Loads an object's onode and extent map from the kv (a missing object: `exists == false`).
pub(crate) fn load_onode(shared: &Shared, cid: CollId, name: &str) -> Result<Onode> {
    let p = shared.params;
    load_onode_from(&shared.kv, p.shard_span, p.csum_block, cid, name)
}

pub(crate) fn load_onode_from(
    kv: &bluepoll_kv::Kv,
    shard_span: u64,
    csum_block: u64,
    cid: CollId,
    name: &str,
) -> Result<Onode> {
    let Some(value) = kv.get(&onode_key(cid, name))? else {
        return Ok(Onode::missing(shard_span, csum_block));
    };
    let record = decode_onode(&value)?;
    let mut extents = ExtentMap::new(shard_span, csum_block);
    let prefix = shard_prefix(cid, name);
    let range = KeyRange {
        lower: Some(prefix.clone()),
        upper: Some(prefix_end(&prefix)),
        prefix: None,
    };
    for item in kv.scan(&range, None) {
        let (key, value) = item?;
        let index_bytes: [u8; 4] =
            key[key.len() - 4..]
                .try_into()
                .map_err(|_| StoreError::Corrupt {
                    reason: format!("extent shard key {key:02x?} is too short"),
                })?;
        let index = u32::from_be_bytes(index_bytes);
        let start = index as u64 * shard_span;
        let records =
            decode_shard(&value, start, csum_block as u32).map_err(|e| StoreError::Corrupt {
                reason: format!("object {name} (collection id {cid}): {e}"),
            })?;
        extents.load_shard(index, records);
    }
    Ok(Onode {
        exists: true,
        size: record.size,
        attrs: Arc::new(record.attrs),
        omap_id: record.omap_id,
        extents,
    })
}

/// An omap's header and entries.
pub(crate) type OmapContents = (Option<Vec<u8>>, BTreeMap<Vec<u8>, Vec<u8>>);

/// An omap's committed header and entries.
pub(crate) fn omap_committed(shared: &Shared, id: u64) -> Result<OmapContents> {
    let header = shared.kv.get(&omap_header_key(id))?;
    let prefix = omap_entry_prefix(id);
    let mut entries = BTreeMap::new();
    for item in shared.kv.scan(&KeyRange::prefix(&prefix), None) {
        let (key, value) = item?;
        entries.insert(key[prefix.len()..].to_vec(), value);
    }
    Ok((header, entries))
}

impl Shard {
    fn existing(&mut self, coll: &str, obj: &str) -> Result<OnodeRef> {
        let cid = self.coll_id(coll)?;
        let entry = self.onode(cid, obj)?;
        if !entry.borrow().onode.exists {
            return Err(StoreError::NoSuchObject {
                coll: coll.into(),
                obj: obj.into(),
            });
        }
        Ok(entry)
    }

    pub fn stat(&mut self, coll: &str, obj: &str) -> Result<ObjectStat> {
        let entry = self.existing(coll, obj)?;
        let e = entry.borrow();
        Ok(ObjectStat {
            size: e.onode.size,
            allocated: e.onode.extents.iter().map(|(_, x, _)| x.len as u64).sum(),
            has_omap: e.onode.omap_id != 0,
        })
    }

    pub fn object_extents(&mut self, coll: &str, obj: &str) -> Result<Vec<ObjectExtent>> {
        let entry = self.existing(coll, obj)?;
        let e = entry.borrow();
        Ok(e.onode
            .extents
            .iter()
            .map(|(offset, x, _)| ObjectExtent {
                offset,
                length: x.len as u64,
                device_offset: x.phys,
            })
            .collect())
    }

    pub fn exists(&mut self, coll: &str, obj: &str) -> Result<bool> {
        let cid = self.coll_id(coll)?;
        let entry = self.onode(cid, obj)?;
        let exists = entry.borrow().onode.exists;
        Ok(exists)
    }

    pub fn getattrs(&mut self, coll: &str, obj: &str) -> Result<BTreeMap<String, Vec<u8>>> {
        let entry = self.existing(coll, obj)?;
        let attrs = (*entry.borrow().onode.attrs).clone();
        Ok(attrs)
    }

    pub fn getattr(&mut self, coll: &str, obj: &str, name: &str) -> Result<Vec<u8>> {
        let entry = self.existing(coll, obj)?;
        let e = entry.borrow();
        e.onode
            .attrs
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::NoSuchAttr {
                coll: coll.into(),
                obj: obj.into(),
                name: name.into(),
            })
    }

    fn omap_id_of(&mut self, coll: &str, obj: &str) -> Result<u64> {
        let entry = self.existing(coll, obj)?;
        let id = entry.borrow().onode.omap_id;
        Ok(id)
    }

    pub fn omap_header(&mut self, coll: &str, obj: &str) -> Result<Option<Vec<u8>>> {
        let id = self.omap_id_of(coll, obj)?;
        if id == 0 {
            return Ok(None);
        }
        if let Some(o) = self.omaps.get(&id) {
            if let Some(h) = &o.header {
                return Ok(h.clone());
            }
            if o.cleared {
                return Ok(None);
            }
        }
        Ok(self.shared.kv.get(&omap_header_key(id))?)
    }

    pub fn omap_get_values(
        &mut self,
        coll: &str,
        obj: &str,
        keys: &[Vec<u8>],
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let id = self.omap_id_of(coll, obj)?;
        let mut out = BTreeMap::new();
        if id == 0 {
            return Ok(out);
        }
        let overlay = self.omaps.get(&id);
        for k in keys {
            let v = match overlay.and_then(|o| o.entries.get(k)) {
                Some(v) => v.clone(),
                None if overlay.is_some_and(|o| o.hides(k)) => None,
                None => self.shared.kv.get(&omap_entry_key(id, k))?,
            };
            if let Some(v) = v {
                out.insert(k.clone(), v);
            }
        }
        Ok(out)
    }

    /// Up to `max` entries with keys after `after` (all if None), in key order.
    pub fn omap_iterate(
        &mut self,
        coll: &str,
        obj: &str,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let id = self.omap_id_of(coll, obj)?;
        let mut out = Vec::new();
        if id == 0 || max == 0 {
            return Ok(out);
        }
        let overlay = self.omaps.get(&id).cloned().unwrap_or_default();
        let after_ok = |k: &[u8]| after.is_none_or(|a| k > a);
        let mut mine = overlay
            .entries
            .iter()
            .filter(|(k, _)| after_ok(k))
            .peekable();
        let prefix = omap_entry_prefix(id);
        let seek = after.map(|a| {
            let mut k = omap_entry_key(id, a);
            k.push(0);
            k
        });
        let mut committed = if overlay.cleared {
            None
        } else {
            Some(
                self.shared
                    .kv
                    .scan(&KeyRange::prefix(&prefix), seek.as_deref())
                    .peekable(),
            )
        };
        while out.len() < max {
            let next_committed = match committed.as_mut().and_then(|c| c.peek()) {
                Some(Ok((k, _))) => Some(k[prefix.len()..].to_vec()),
                Some(Err(_)) => {
                    let err = committed.as_mut().and_then(|c| c.next()).expect("peeked");
                    return Err(err.expect_err("an error").into());
                }
                None => None,
            };
            let next_mine = mine.peek().map(|(k, _)| (*k).clone());
            match (next_committed, next_mine) {
                (None, None) => break,
                (Some(c), m) if m.as_ref().is_none_or(|m| c < *m) => {
                    let (_, v) = committed
                        .as_mut()
                        .and_then(|it| it.next())
                        .expect("peeked")?;
                    if !overlay.hides(&c) {
                        out.push((c, v));
                    }
                }
                (c, Some(m)) => {
                    if c.as_ref() == Some(&m) {
                        committed.as_mut().and_then(|it| it.next());
                    }
                    let (_, v) = mine.next().expect("peeked");
                    if let Some(v) = v {
                        out.push((m, v.clone()));
                    }
                }
                (Some(_), None) => unreachable!("covered by the arm above"),
            }
        }
        Ok(out)
    }

    /// Up to `max` object names after `after`, in name order.
    pub fn list_objects(
        &mut self,
        coll: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<String>> {
        let cid = self.coll_id(coll)?;
        let mut out = Vec::new();
        let prefix = onode_prefix(cid);
        let seek = after.map(|a| {
            let mut k = onode_key(cid, a);
            k.push(0);
            k
        });
        let mut committed = self
            .shared
            .kv
            .scan(&KeyRange::prefix(&prefix), seek.as_deref())
            .peekable();
        let cached: Vec<(String, bool)> = self
            .cache
            .names_after(cid, after)
            .map(|(n, e)| (n.to_string(), e.borrow().onode.exists))
            .collect();
        let mut cached = cached.into_iter().peekable();
        while out.len() < max {
            let next_committed = match committed.peek() {
                Some(Ok((k, _))) => Some(name_of_onode_key(k)?),
                Some(Err(_)) => {
                    return Err(committed
                        .next()
                        .expect("peeked")
                        .expect_err("an error")
                        .into());
                }
                None => None,
            };
            let next_cached = cached.peek().map(|(n, _)| n.clone());
            match (next_committed, next_cached) {
                (None, None) => break,
                (Some(c), n) if n.as_ref().is_none_or(|n| c < *n) => {
                    committed.next();
                    out.push(c);
                }
                (c, Some(n)) => {
                    if c.as_ref() == Some(&n) {
                        committed.next();
                    }
                    let (name, exists) = cached.next().expect("peeked");
                    if exists {
                        out.push(name);
                    }
                }
                (Some(_), None) => unreachable!("covered by the arm above"),
            }
        }
        Ok(out)
    }

    /// Starts a read of `len` bytes at `offset` (clipped at the object's end); `done` gets the
    /// bytes once every device read has completed and verified.
    pub fn read(&mut self, coll: &str, obj: &str, offset: u64, len: u64, done: OnRead) {
        let started = Instant::now();
        let entry = match self.existing(coll, obj) {
            Ok(e) => e,
            Err(e) => return done(Err(e)),
        };
        let (size, data_seq) = {
            let e = entry.borrow();
            (e.onode.size, e.data_seq)
        };
        self.perf.reads += 1;
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return done(Ok(Vec::new()));
        }
        let cb = self.shared.params.csum_block;
        let start = offset / cb * cb;
        let stop = end.next_multiple_of(cb);
        let mut out = vec![0u8; (stop - start) as usize];
        let mut pieces = Vec::new();
        {
            let e = entry.borrow();
            for piece in e.onode.extents.pieces(start, stop - start) {
                match piece {
                    Piece::Hole { len, .. } => self.perf.read_hole_bytes += len,
                    Piece::Mapped {
                        offset: po,
                        len: pl,
                        phys,
                        csums,
                    } => {
                        let (a, b) = ((po - start) as usize, (po - start + pl) as usize);
                        let filled = e.buffers.read(po, &mut out[a..b]);
                        let mut at = po;
                        let mut gaps = Vec::new();
                        for (s, l) in filled {
                            self.perf.read_cache_bytes += l;
                            if s > at {
                                gaps.push((at, s - at));
                            }
                            at = s + l;
                        }
                        if at < po + pl {
                            gaps.push((at, po + pl - at));
                        }
                        for (s, l) in gaps {
                            // One device read per MAX_IO bytes.
                            let mut k = s;
                            while k < s + l {
                                let n = (s + l - k).min(MAX_IO);
                                let first = ((k - po) / cb) as usize;
                                pieces.push(DevPiece {
                                    offset: k,
                                    len: n,
                                    phys: phys + (k - po),
                                    csums: csums[first..first + (n / cb) as usize].to_vec(),
                                });
                                k += n;
                            }
                        }
                    }
                }
            }
        }
        self.perf.read_bytes += end - offset;
        let skip = (offset - start) as usize;
        let want = (end - offset) as usize;
        if pieces.is_empty() {
            out.drain(..skip);
            out.truncate(want);
            self.perf
                .read_latency
                .record(started.elapsed().as_nanos() as u64);
            return done(Ok(out));
        }
        self.reads_started += 1;
        let seq = self.reads_started;
        self.reads_in_flight.insert(seq);
        let id = self.next_read_id();
        let to_submit: Vec<(usize, u64, u64)> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (i, p.phys, p.len))
            .collect();
        self.reads.insert(
            id,
            ReadOp {
                entry,
                coll: coll.into(),
                obj: obj.into(),
                start,
                out,
                skip,
                len: want,
                outstanding: pieces.len() as u32,
                pieces,
                error: None,
                seq,
                data_seq,
                started,
                done: Some(done),
            },
        );
        for (i, phys, len) in to_submit {
            self.submit_read(id, i, phys, len);
        }
    }

    /// A device read of a read request completed.
    pub(crate) fn read_piece_done(
        &mut self,
        read: u64,
        piece: usize,
        status: Status,
        buf: Option<DmaBuf>,
        phys: u64,
    ) {
        let cb = self.shared.params.csum_block;
        let Some(op) = self.reads.get_mut(&read) else {
            return;
        };
        let p = &op.pieces[piece];
        if !status.is_success() {
            op.error.get_or_insert(StoreError::Io {
                coll: op.coll.clone(),
                obj: op.obj.clone(),
                op: "read",
                offset: p.offset,
                len: p.len,
                phys,
                status,
            });
        } else if let Some(buf) = buf {
            let a = (p.offset - op.start) as usize;
            let dst = &mut op.out[a..a + p.len as usize];
            dst.copy_from_slice(&buf[..p.len as usize]);
            for (k, block) in dst.chunks(cb as usize).enumerate() {
                let actual = crc32c::crc32c(block);
                if actual != p.csums[k] && op.error.is_none() {
                    op.error = Some(StoreError::ChecksumMismatch {
                        coll: op.coll.clone(),
                        obj: op.obj.clone(),
                        offset: p.offset + k as u64 * cb,
                        phys: p.phys + k as u64 * cb,
                        expected: p.csums[k],
                        actual,
                    });
                    self.perf.csum_errors += 1;
                }
            }
        }
        op.outstanding -= 1;
        if op.outstanding > 0 {
            return;
        }
        let mut op = self.reads.remove(&read).expect("present");
        self.reads_in_flight.remove(&op.seq);
        let done = op.done.take().expect("once");
        self.perf
            .read_latency
            .record(op.started.elapsed().as_nanos() as u64);
        if let Some(e) = op.error.take() {
            return done(Err(e));
        }
        // Keep what the device returned, unless the object changed meanwhile.
        if op.entry.borrow().data_seq == op.data_seq && self.shared.config.cache_bytes > 0 {
            let data = Arc::new(op.out.clone());
            {
                let mut e = op.entry.borrow_mut();
                for p in &op.pieces {
                    e.buffers.insert(
                        p.offset,
                        Buf {
                            len: p.len,
                            data: Arc::clone(&data),
                            data_offset: (p.offset - op.start) as usize,
                            pending: None,
                        },
                    );
                }
            }
            self.cache.recharge(&op.entry);
        }
        let mut out = op.out;
        out.drain(..op.skip);
        out.truncate(op.len);
        done(Ok(out));
    }

    /// Collections of this shard that exist now.
    pub fn collections(&self) -> Vec<String> {
        self.colls
            .iter()
            .filter(|(_, c)| c.exists)
            .map(|(n, _)| n.clone())
            .collect()
    }
}
