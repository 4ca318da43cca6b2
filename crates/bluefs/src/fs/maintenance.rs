//! Maintenance and inspection: usage, compaction on demand, taking grown devices into use,
//! fsck.

use bluepoll_base::sync::lock;
use std::collections::HashMap;

use super::space::FileKind;
use super::{BlueFs, Inner, LOG_INO};
use crate::error::Result;
use crate::format::{self, BLOCK_SIZE, DeviceId, Label, RESERVED_PREFIX};

/// Space on one device, in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceUsage {
    /// The device size the filesystem uses: what its label records (a device grown since is
    /// taken into use by `expand`). For shared SLOW space, the owner's size.
    pub size: u64,
    /// Free bytes, the log's reserve included (for shared SLOW space: free for either owner).
    pub free: u64,
    /// Bytes allocated to files of each kind (WAL, DB, SLOW order) and to the log.
    pub by_kind: [u64; 3],
    /// Bytes allocated to the log on this device.
    pub log: u64,
}

/// A snapshot of where the filesystem's space is, from [`BlueFs::usage`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Indexed by DeviceId; None where the device is absent.
    pub devices: [Option<DeviceUsage>; 3],
    /// Bytes of WAL/DB files that had to go to the SLOW device.
    pub spillover_bytes: u64,
    /// Files with a name (files removed while still open are not counted).
    pub files: u64,
    /// Bytes allocated to the log, on all devices.
    pub log_bytes: u64,
    /// Bytes of the log in use: where the next frame goes.
    pub log_position: u64,
    /// Log compactions since mount.
    pub compactions: u64,
}

/// What [`BlueFs::fsck`] checked and found.
#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    /// Files with a name.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// One line per problem, naming the file, extent or device; empty when the metadata is
    /// consistent.
    pub errors: Vec<String>,
}

impl BlueFs {
    /// Where the space is, per device and in total, and the log's size (taken under the lock:
    /// consistent, and stale as soon as it returns).
    pub fn usage(&self) -> Usage {
        let st = lock(&self.inner.state);
        let mut usage = Usage {
            spillover_bytes: st.spillover_bytes,
            files: st.files.len() as u64,
            log_bytes: st.log.fnode.allocated(),
            log_position: st.log.position,
            compactions: st.compactions,
            ..Usage::default()
        };
        for id in DeviceId::ALL {
            if self.inner.devices[id.index()].is_none() {
                continue;
            }
            // The size in use (what the label records), not a larger size the device may have
            // grown to before `expand`.
            let (size, free) = match id {
                DeviceId::Slow => self
                    .inner
                    .slow
                    .as_ref()
                    .map_or((0, 0), |s| (s.device_size(), s.free_bytes())),
                _ => st.allocators[id.index()]
                    .as_ref()
                    .map_or((0, 0), |a| (a.size(), a.free_bytes())),
            };
            usage.devices[id.index()] = Some(DeviceUsage {
                size,
                free,
                ..DeviceUsage::default()
            });
        }
        for f in st.files.values().chain(st.orphans.values()) {
            let kind = FileKind::ALL.iter().position(|k| *k == f.kind).unwrap_or(1);
            for e in f.all_extents() {
                if let Some(d) = usage.devices[e.device.index()].as_mut() {
                    d.by_kind[kind] += e.length;
                }
            }
        }
        for e in &st.log.fnode.extents {
            if let Some(d) = usage.devices[e.device.index()].as_mut() {
                d.log += e.length;
            }
        }
        usage
    }

    /// Rewrites the log from live metadata now (synchronously).
    pub fn compact(&self) -> Result<()> {
        self.inner.compact(false)
    }

    /// Compacts while other threads keep committing; the switch takes the lock briefly.
    pub fn compact_async(&self) -> Result<()> {
        self.inner.compact(true)
    }

    /// Takes the space of grown devices into use and records their new sizes in their labels.
    /// Returns (device, old size, new size) for each device that grew.
    pub fn expand(&self) -> Result<Vec<(DeviceId, u64, u64)>> {
        let mut grown = Vec::new();
        let mut st = self.inner.lock_writable()?;
        for id in DeviceId::ALL {
            let Some(dev) = &self.inner.devices[id.index()] else {
                continue;
            };
            let new_size = dev.size();
            let old_size = match id {
                DeviceId::Slow => match &self.inner.slow {
                    Some(s) => s.device_size(),
                    None => continue,
                },
                _ => st.allocators[id.index()].as_ref().map_or(0, |a| a.size()),
            };
            if new_size <= old_size {
                continue;
            }
            match id {
                DeviceId::Slow => {
                    if let Some(s) = &self.inner.slow {
                        s.grow(new_size)?;
                    }
                }
                _ => {
                    if let Some(a) = st.allocators[id.index()].as_mut() {
                        a.grow(new_size)?;
                    }
                }
            }
            if id != DeviceId::Slow || self.inner.owns_slow_label() {
                // Only the recorded size changes; the label keeps its creation time.
                let mut block = vec![0u8; BLOCK_SIZE as usize];
                dev.read(format::LABEL_OFFSET, &mut block)?;
                let label = Label {
                    device_size: new_size,
                    ..format::decode_label(&block)?
                };
                dev.write(format::LABEL_OFFSET, &format::encode_label(&label))?;
                dev.flush()?;
            }
            grown.push((id, old_size, new_size));
        }
        drop(st);
        Ok(grown)
    }

    /// Checks the metadata: every extent inside its device, no two extents overlapping, every
    /// directory entry naming a live file, link counts right.
    pub fn fsck(&self) -> FsckReport {
        let st = lock(&self.inner.state);
        let mut report = FsckReport {
            files: st.files.len() as u64,
            dirs: st.dirs.len() as u64,
            errors: Vec::new(),
        };
        let mut spans: Vec<(DeviceId, u64, u64, u64)> = Vec::new();
        for f in st.files.values().chain(st.orphans.values()) {
            for e in f.all_extents().chain(&f.deferred_release) {
                spans.push((e.device, e.offset, e.end(), f.fnode.ino));
            }
            if f.size() > f.allocated() {
                report.errors.push(format!(
                    "file {}: size {} exceeds its {} allocated bytes",
                    f.fnode.ino,
                    f.size(),
                    f.allocated()
                ));
            }
        }
        for e in &st.log.fnode.extents {
            spans.push((e.device, e.offset, e.end(), LOG_INO));
        }
        for (device, start, end, ino) in &spans {
            let size = self.inner.devices[device.index()]
                .as_ref()
                .map_or(0, |d| d.size());
            if *start < RESERVED_PREFIX || *end > size {
                report.errors.push(format!(
                    "file {ino}: extent {start}..{end} lies outside the {} device",
                    device.name()
                ));
            }
        }
        spans.sort();
        for pair in spans.windows(2) {
            if pair[0].0 == pair[1].0 && pair[0].2 > pair[1].1 {
                report.errors.push(format!(
                    "files {} and {} overlap on the {} device at {}",
                    pair[0].3,
                    pair[1].3,
                    pair[0].0.name(),
                    pair[1].1
                ));
            }
        }
        let mut links: HashMap<u64, u32> = HashMap::new();
        for (dir, entries) in &st.dirs {
            for (name, ino) in entries {
                if !st.files.contains_key(ino) {
                    report
                        .errors
                        .push(format!("{dir}/{name} names missing file {ino}"));
                }
                *links.entry(*ino).or_default() += 1;
            }
        }
        for (ino, f) in &st.files {
            let counted = links.get(ino).copied().unwrap_or(0);
            if counted != f.nlink || counted == 0 {
                report.errors.push(format!(
                    "file {ino}: {counted} directory entries, link count {}",
                    f.nlink
                ));
            }
        }
        // Allocated (per the allocators) must equal referenced, device by device.
        for id in [DeviceId::Wal, DeviceId::Db] {
            let Some(a) = &st.allocators[id.index()] else {
                continue;
            };
            let referenced: u64 = spans.iter().filter(|s| s.0 == id).map(|s| s.2 - s.1).sum();
            let usable = a.size() / a.unit() * a.unit()
                - RESERVED_PREFIX.next_multiple_of(a.unit()).min(a.size());
            if usable - a.free_bytes() != referenced {
                report.errors.push(format!(
                    "{} device: {} bytes allocated but {referenced} referenced",
                    id.name(),
                    usable - a.free_bytes()
                ));
            }
        }
        report
    }

    /// Every file as `dir/name`, sorted.
    pub fn list_files(&self) -> Vec<String> {
        let st = lock(&self.inner.state);
        st.dirs
            .iter()
            .flat_map(|(d, entries)| entries.keys().map(move |n| format!("{d}/{n}")))
            .collect()
    }

    /// Reads a whole file.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let r = self.open_read(path)?;
        let mut data = vec![0u8; r.size() as usize];
        let n = r.read_at(0, &mut data)?;
        data.truncate(n);
        Ok(data)
    }

    /// Drops pooled queue pairs; after a power cut of a fault device they are dead.
    pub fn reset_queue_pairs(&self) {
        for d in self.inner.devices.iter().flatten() {
            d.reset_queue_pairs();
        }
    }
}

impl Inner {
    fn owns_slow_label(&self) -> bool {
        !self.slow_shared
    }
}
