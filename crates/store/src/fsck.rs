//! `fsck`: checks an unmounted store — every record decodes, every extent lies where data may
//! be and overlaps neither BlueFS nor another object's unshared space, allocated space (the
//! freelist) equals referenced space (the onodes, with their reference counts), no extent
//! shard or omap is left without its object; with `deep`, every byte of object data is read and
//! checked against its checksums. `repair` fixes what can be fixed without guessing: leaked
//! space freed, space in use marked used, wrong reference counts set, orphaned records
//! deleted. Like mount, it first applies the deferred writes a crash left in the journal.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::error::{Result, StoreError};
use super::format::{
    PREFIX_COLL, PREFIX_OMAP, PREFIX_ONODE, PREFIX_SHARD, decode_coll, name_of_onode_key, omap_all,
    refs_key,
};
use super::kv_sync::KvOps;
use super::space::SpaceDelta;
use super::{StoreConfig, StoreDevices, device_io, open_bluefs, open_kv};
use bluepoll_kv::{KeyRange, WriteBatch};

/// What fsck found (and, with repair, fixed).
#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    /// Collections whose record decoded.
    pub collections: u64,
    /// Objects whose onode and extent map decoded, in an existing collection.
    pub objects: u64,
    /// Bytes of the main device mapped by objects (shared units once).
    pub referenced_bytes: u64,
    /// Bytes the freelist says are allocated.
    pub allocated_bytes: u64,
    /// Bytes of the main device BlueFS holds (per its log).
    pub bluefs_bytes: u64,
    /// Allocation units mapped by more than one object (clones).
    pub shared_units: u64,
    /// Deferred writes a crash had left in the journal, applied (and deleted) before checking.
    pub deferred_replayed: u64,
    /// Bytes of object data read and verified (deep).
    pub verified_bytes: u64,
    /// What is wrong, one message each (BlueFS's and RocksDB's findings included); at most the
    /// first 1000. Empty: the store is consistent.
    pub errors: Vec<String>,
    /// With `repair`: what was fixed, one message each (the errors stay listed above).
    pub repaired: Vec<String>,
}

impl FsckReport {
    /// Whether fsck found nothing wrong (before any repair).
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    fn error(&mut self, message: String) {
        // A badly damaged store could produce millions; keep the first thousand.
        if self.errors.len() < 1000 {
            self.errors.push(message);
        }
    }
}

/// Units as a bitmap.
struct Bits {
    words: Vec<u64>,
}

impl Bits {
    fn new(units: u64) -> Bits {
        Bits {
            words: vec![0; units.div_ceil(64) as usize],
        }
    }
    fn get(&self, u: u64) -> bool {
        self.words
            .get((u / 64) as usize)
            .is_some_and(|w| w & (1 << (u % 64)) != 0)
    }
    fn set(&mut self, u: u64) {
        if let Some(w) = self.words.get_mut((u / 64) as usize) {
            *w |= 1 << (u % 64);
        }
    }
}

/// Checks the store on `devices`, which must not be mounted (they are claimed for the duration,
/// EBUSY otherwise).
///
/// Checked: every record decodes; every extent lies in the data area, aligned, and overlaps
/// neither BlueFS's space nor another object's unshared space; the space the freelist says is
/// allocated equals the space objects map, and the recorded reference counts of shared units
/// equal the mappings; no extent shard or omap is left without its object; BlueFS's own
/// metadata. With `deep`, every byte of object data is read and checked against its checksums,
/// and every block of RocksDB's tables against theirs.
///
/// With `repair`, what can be fixed without guessing is fixed in one synced RocksDB write:
/// leaked space freed, space in use marked used, wrong reference counts set, orphaned extent
/// shards and omaps deleted. Like mount, fsck first applies the deferred writes a crash left in
/// the journal and deletes them, so it writes to the store even without `repair`.
///
/// An `Err` means the store could not be opened (no label, wrong devices, an unreadable
/// superblock or freelist); everything found once it was open is in the report.
pub fn fsck(
    devices: &StoreDevices,
    config: &StoreConfig,
    deep: bool,
    repair: bool,
) -> Result<FsckReport> {
    let mut report = FsckReport::default();
    let _claims = devices.claim(&super::owner_name("fsck"))?;
    let opened = open_bluefs(devices, config)?;
    let label = opened.label.clone();
    for e in opened.fs.fsck().errors {
        report.error(format!("BlueFS: {e}"));
    }
    let (kv, loaded, replayed) = open_kv(&opened.fs, &opened.space, &label, config, &devices.slow)?;
    report.deferred_replayed = replayed;
    if deep {
        // Every block of every table, filters and index blocks included: a scan only reads
        // what it needs, and a damaged filter block would make point lookups miss keys.
        if let Err(e) = kv.verify_checksums() {
            report.error(format!("RocksDB: {e}"));
        }
    }
    let au = label.min_alloc_size as u64;
    let cb = label.csum_block as u64;
    let span = loaded.superblock.shard_span as u64;
    let units = label.device_size / au;
    let first_unit = label.data_start / au;

    let mut bluefs = Bits::new(units);
    for &(o, l) in &opened.bluefs_extents {
        report.bluefs_bytes += l;
        for u in o / au..(o + l).div_ceil(au) {
            bluefs.set(u);
        }
    }
    let mut allocated = Bits::new(units);
    for &(o, l) in &loaded.allocated {
        report.allocated_bytes += l;
        for u in o / au..(o + l) / au {
            allocated.set(u);
        }
    }

    // Collections.
    let mut colls: HashMap<u32, String> = HashMap::new();
    for item in kv.scan(&KeyRange::prefix(&[PREFIX_COLL]), None) {
        let (key, value) = item?;
        let name = String::from_utf8_lossy(&key[1..]).into_owned();
        match decode_coll(&value) {
            Ok(cid) => {
                colls.insert(cid, name);
            }
            Err(e) => report.error(format!("collection '{name}': {e}")),
        }
    }
    report.collections = colls.len() as u64;

    // Objects and their extents.
    let mut referenced = Bits::new(units);
    let mut extra: HashMap<u64, u32> = HashMap::new();
    let mut objects: HashSet<(u32, String)> = HashSet::new();
    let mut omaps: HashSet<u64> = HashSet::new();
    let mut fixes = KvOps::default();
    let mut delta = SpaceDelta::default();
    for item in kv.scan(&KeyRange::prefix(&[PREFIX_ONODE]), None) {
        let (key, _) = item?;
        let cid = u32::from_be_bytes(key[1..5].try_into().map_err(|_| StoreError::Corrupt {
            reason: format!("onode key {key:02x?} is too short"),
        })?);
        let name = match name_of_onode_key(&key) {
            Ok(n) => n,
            Err(e) => {
                report.error(format!("onode key {key:02x?}: {e}"));
                continue;
            }
        };
        let Some(coll) = colls.get(&cid).cloned() else {
            report.error(format!(
                "object '{name}' is in collection id {cid}, which does not exist"
            ));
            continue;
        };
        let onode = match super::read::load_onode_from(&kv, span, cb, cid, &name) {
            Ok(o) => o,
            Err(e) => {
                report.error(format!("object '{coll}/{name}': {e}"));
                continue;
            }
        };
        report.objects += 1;
        objects.insert((cid, name.clone()));
        if onode.omap_id != 0 {
            omaps.insert(onode.omap_id);
        }
        let size_end = onode.size.next_multiple_of(au);
        for (offset, e, csums) in onode.extents.iter() {
            let len = e.len as u64;
            let what = || {
                format!(
                    "object '{coll}/{name}' extent at {offset} (device byte {})",
                    e.phys
                )
            };
            if offset % au != 0 || len % au != 0 || e.phys % au != 0 {
                report.error(format!("{}: not aligned to the {au}-byte unit", what()));
                continue;
            }
            if e.phys < label.data_start || e.phys + len > label.device_size {
                report.error(format!("{}: outside the data area", what()));
                continue;
            }
            if offset >= size_end {
                report.error(format!(
                    "{}: lies past the object's end ({} bytes)",
                    what(),
                    onode.size
                ));
            }
            for u in e.phys / au..(e.phys + len) / au {
                if bluefs.get(u) {
                    report.error(format!("{}: overlaps BlueFS's space at unit {u}", what()));
                }
                if referenced.get(u) {
                    *extra.entry(u).or_default() += 1;
                } else {
                    referenced.set(u);
                    report.referenced_bytes += au;
                }
            }
            if deep {
                let mut data = vec![0u8; len as usize];
                match device_io(&devices.slow, false, e.phys, &mut data) {
                    Err(err) => report.error(format!("{}: read failed: {err}", what())),
                    Ok(()) => {
                        report.verified_bytes += len;
                        for (k, block) in data.chunks(cb as usize).enumerate() {
                            let actual = crc32c::crc32c(block);
                            if actual != csums[k] {
                                report.error(format!(
                                    "object '{coll}/{name}': checksum mismatch at object offset {} \
                                     (device byte {}): stored {:#010x}, read {actual:#010x}",
                                    offset + k as u64 * cb,
                                    e.phys + k as u64 * cb,
                                    csums[k]
                                ));
                            }
                        }
                    }
                }
            }
        }
    }

    // Extent shards without their object.
    for item in kv.scan(&KeyRange::prefix(&[PREFIX_SHARD]), None) {
        let (key, _) = item?;
        let Some((cid, name)) = parse_shard_key(&key) else {
            report.error(format!("extent shard key {key:02x?} does not decode"));
            continue;
        };
        if !objects.contains(&(cid, name.clone())) {
            report.error(format!(
                "extent shard of '{name}' (collection id {cid}) has no object"
            ));
            if repair {
                fixes.delete(key.clone());
                report
                    .repaired
                    .push(format!("deleted an orphaned extent shard of '{name}'"));
            }
        }
    }

    // Omaps without their object.
    let mut orphan_omaps: BTreeMap<u64, u64> = BTreeMap::new();
    for item in kv.scan(&KeyRange::prefix(&[PREFIX_OMAP]), None) {
        let (key, _) = item?;
        if key.len() < 10 {
            report.error(format!("omap key {key:02x?} is too short"));
            continue;
        }
        let id = u64::from_be_bytes(key[1..9].try_into().expect("8"));
        if !omaps.contains(&id) {
            *orphan_omaps.entry(id).or_default() += 1;
        }
    }
    for (id, n) in orphan_omaps {
        report.error(format!("omap {id} ({n} records) belongs to no object"));
        if repair {
            fixes.delete_range(omap_all(id), omap_all(id + 1));
            report.repaired.push(format!("deleted orphaned omap {id}"));
        }
    }

    // Allocated == referenced.
    let mut leaked = 0u64;
    let mut unmarked = 0u64;
    for u in first_unit.min(units)..units {
        match (allocated.get(u), referenced.get(u)) {
            (true, false) => {
                leaked += 1;
                if repair {
                    delta.freed(u * au, au, au);
                }
            }
            (false, true) => {
                unmarked += 1;
                if repair {
                    delta.allocated(u * au, au, au);
                }
            }
            _ => {}
        }
    }
    for u in 0..first_unit.min(units) {
        if allocated.get(u) {
            report.error(format!("unit {u} before the data area is marked allocated"));
        }
    }
    if leaked > 0 {
        report.error(format!(
            "{} bytes ({leaked} units) are allocated but referenced by no object (leaked)",
            leaked * au
        ));
        if repair {
            report
                .repaired
                .push(format!("freed {} leaked bytes", leaked * au));
        }
    }
    if unmarked > 0 {
        report.error(format!(
            "{} bytes ({unmarked} units) are in use by objects but free in the freelist",
            unmarked * au
        ));
        if repair {
            report
                .repaired
                .push(format!("marked {} bytes used", unmarked * au));
        }
    }

    // Reference counts.
    report.shared_units = extra.len() as u64;
    let all_units: HashSet<u64> = extra.keys().chain(loaded.refs.keys()).copied().collect();
    for u in all_units {
        let want = extra.get(&u).copied().unwrap_or(0);
        let have = loaded.refs.get(&u).copied().unwrap_or(0);
        if want != have {
            report.error(format!(
                "unit {u} (device byte {}): {want} extra references, recorded {have}",
                u * au
            ));
            if repair {
                let d = want as i64 - have as i64;
                fixes.merge(refs_key(u).to_vec(), (d as u64).to_le_bytes().to_vec());
                report
                    .repaired
                    .push(format!("set unit {u}'s reference count"));
            }
        }
    }

    if repair && (!fixes.is_empty() || !delta.is_empty()) {
        delta.emit(&mut fixes);
        let mut batch = WriteBatch::new();
        fixes.apply_to(&mut batch);
        kv.submit(batch, true)?;
    }
    drop(kv);
    drop(opened);
    Ok(report)
}

/// (collection id, object name) of an `X` key.
fn parse_shard_key(key: &[u8]) -> Option<(u32, String)> {
    if key.len() < 10 || key[0] != PREFIX_SHARD {
        return None;
    }
    let cid = u32::from_be_bytes(key[1..5].try_into().ok()?);
    let body = &key[5..key.len() - 4];
    let mut name = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            0 => return String::from_utf8(name).ok().map(|n| (cid, n)),
            1 => {
                name.push(body.get(i + 1)?.checked_sub(1)?);
                i += 2;
            }
            b => {
                name.push(b);
                i += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_keys_decode_back_to_their_object() {
        for name in ["a", "a\0b", "\x01\x01", ""] {
            let key =
                super::super::format::shard_key(&super::super::format::shard_prefix(7, name), 3);
            assert_eq!(parse_shard_key(&key), Some((7, name.to_string())));
        }
    }
}
