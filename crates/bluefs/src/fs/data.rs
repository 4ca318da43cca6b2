//! File bytes on the devices: mapping a file's byte range onto its extents, and writing and
//! reading those device ranges.

use super::{FileMeta, Inner};
use crate::error::{BlueFsError, Result};
use crate::format::{BLOCK_SIZE, DeviceId, Extent};
use crate::io::BlockDevice;

/// Appends `e` to `list`, merging it into the last extent when contiguous.
pub(super) fn push_extent(list: &mut Vec<Extent>, e: Extent) {
    if let Some(last) = list.last_mut()
        && last.device == e.device
        && last.end() == e.offset
    {
        last.length += e.length;
        return;
    }
    list.push(e);
}

/// The device ranges behind bytes [offset, offset + len) of a file laid out on `extents`.
pub(super) fn map_range<'a>(
    extents: impl IntoIterator<Item = &'a Extent>,
    offset: u64,
    len: u64,
) -> Option<Vec<Extent>> {
    let mut out = Vec::new();
    let mut file_pos = 0u64;
    let (mut want, end) = (offset, offset + len);
    for e in extents {
        let e_end = file_pos + e.length;
        if want < e_end && want < end {
            let start_in = want - file_pos;
            let take = (e.length - start_in).min(end - want);
            out.push(Extent {
                device: e.device,
                offset: e.offset + start_in,
                length: take,
            });
            want += take;
        }
        file_pos = e_end;
        if want >= end {
            break;
        }
    }
    (want >= end).then_some(out)
}

/// Writes `data` at byte `offset` of a file laid out on `extents` and flushes the devices it
/// went to.
pub(super) fn write_durable(
    devices: &[Option<BlockDevice>; 3],
    extents: &[Extent],
    offset: u64,
    data: &[u8],
) -> Result<()> {
    let pieces =
        map_range(extents, offset, data.len() as u64).ok_or_else(|| BlueFsError::Corrupt {
            reason: format!(
                "write of {} bytes at {offset} past the file's allocation",
                data.len()
            ),
        })?;
    for id in write_pieces(devices, &with_data(&pieces, data))? {
        device_of(devices, id)?.flush()?;
    }
    Ok(())
}

/// Pairs each device range with its consecutive part of `data`.
pub(super) fn with_data<'d>(pieces: &[Extent], data: &'d [u8]) -> Vec<(Extent, &'d [u8])> {
    let mut at = 0usize;
    pieces
        .iter()
        .map(|p| {
            let bytes = &data[at..at + p.length as usize];
            at += p.length as usize;
            (*p, bytes)
        })
        .collect()
}

/// Writes a file's log-only bytes to its own extents (without a flush: the log still holds
/// them) and forgets them. Returns the devices written. A partial last block that the file
/// continues past (bytes written in place by a later, ordinary append) is read first and only
/// patched, so the padding does not overwrite them.
pub(super) fn place_log_only(
    devices: &[Option<BlockDevice>; 3],
    f: &mut FileMeta,
) -> Result<Vec<DeviceId>> {
    let mut touched = Vec::new();
    for r in &f.log_only {
        let padded = (r.bytes.len() as u64).next_multiple_of(BLOCK_SIZE);
        let pieces =
            map_range(f.all_extents(), r.from, padded).ok_or_else(|| BlueFsError::Corrupt {
                reason: format!(
                    "file {}: log-only bytes {}..{} past its allocation",
                    f.fnode.ino,
                    r.from,
                    r.end()
                ),
            })?;
        let mut data = vec![0u8; padded as usize];
        let last_block = r.end() / BLOCK_SIZE * BLOCK_SIZE;
        if r.end() % BLOCK_SIZE != 0 && f.size() > r.end() {
            let block = map_range(f.all_extents(), last_block, BLOCK_SIZE)
                .expect("inside the range mapped above");
            read_into(devices, &block, &mut data[(last_block - r.from) as usize..])?;
        }
        data[..r.bytes.len()].copy_from_slice(&r.bytes);
        for id in write_pieces(devices, &with_data(&pieces, &data))? {
            if !touched.contains(&id) {
                touched.push(id);
            }
        }
    }
    f.log_only.clear();
    Ok(touched)
}

/// Writes device ranges, all of one device's in flight together; returns the devices written.
pub(super) fn write_pieces(
    devices: &[Option<BlockDevice>; 3],
    writes: &[(Extent, &[u8])],
) -> Result<Vec<DeviceId>> {
    let mut touched = Vec::new();
    for id in DeviceId::ALL {
        let ranges: Vec<(u64, &[u8])> = writes
            .iter()
            .filter(|(p, _)| p.device == id)
            .map(|(p, bytes)| (p.offset, *bytes))
            .collect();
        if ranges.is_empty() {
            continue;
        }
        device_of(devices, id)?.write_many(&ranges)?;
        touched.push(id);
    }
    Ok(touched)
}

/// Reads device ranges, one after the other, into consecutive parts of `out`.
pub(super) fn read_into(
    devices: &[Option<BlockDevice>; 3],
    pieces: &[Extent],
    out: &mut [u8],
) -> Result<()> {
    let mut at = 0usize;
    for p in pieces {
        let len = p.length as usize;
        device_of(devices, p.device)?.read(p.offset, &mut out[at..at + len])?;
        at += len;
    }
    Ok(())
}

/// The device an extent names; an error when the filesystem references a device that was not
/// given at mount.
fn device_of(devices: &[Option<BlockDevice>; 3], id: DeviceId) -> Result<&BlockDevice> {
    devices[id.index()]
        .as_ref()
        .ok_or(BlueFsError::WrongDevice {
            device: id.name(),
            reason: "is referenced but was not given".into(),
        })
}

impl Inner {
    pub(super) fn device(&self, id: DeviceId) -> Result<&BlockDevice> {
        device_of(&self.devices, id)
    }
}
