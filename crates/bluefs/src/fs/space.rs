//! Space: which device a file's bytes go to, taking space for files and the log from the
//! allocators, and giving it back — after the commit that freed it is durable, and for files
//! still open only when their last handle closes.

use bluepoll_base::id::now_ns;
use bluepoll_base::sync::lock;
use std::sync::Arc;

use super::{FileMeta, Inner, State};
use crate::alloc::{AllocError, SharedSpace};
use crate::error::{BlueFsError, Result};
use crate::format::{DeviceId, Extent, Fnode, LogOp};

/// Where a file's data goes, from its name (docs/bluefs.md placement).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// `*.log` (RocksDB's WAL): WAL device first.
    Wal,
    /// Everything else: DB device first.
    Db,
    /// Files in a directory ending in `.slow`: SLOW device first.
    Slow,
}

impl FileKind {
    /// The kind of file `name` in directory `dir`: SLOW in a directory ending in `.slow`,
    /// else WAL for a name ending in `.log`, else DB. A rename can change it; space already
    /// allocated stays where it is.
    pub fn of(dir: &str, name: &str) -> FileKind {
        if dir.ends_with(".slow") {
            FileKind::Slow
        } else if name.ends_with(".log") {
            FileKind::Wal
        } else {
            FileKind::Db
        }
    }

    /// Devices to try, in order: the home device, then the fallbacks WAL → DB → SLOW.
    pub(super) fn preference(self) -> &'static [DeviceId] {
        match self {
            FileKind::Wal => &[DeviceId::Wal, DeviceId::Db, DeviceId::Slow],
            FileKind::Db => &[DeviceId::Db, DeviceId::Slow],
            FileKind::Slow => &[DeviceId::Slow, DeviceId::Db],
        }
    }

    /// Lowercase name (`wal`, `db`, `slow`), for messages.
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Wal => "wal",
            FileKind::Db => "db",
            FileKind::Slow => "slow",
        }
    }

    pub(super) const ALL: [FileKind; 3] = [FileKind::Wal, FileKind::Db, FileKind::Slow];
}

impl State {
    /// Gives space back to the allocators (after the commit that freed it is durable).
    fn release(&mut self, slow: Option<&Arc<dyn SharedSpace>>, extents: &[Extent]) {
        for e in extents {
            let result = match e.device {
                DeviceId::Slow => slow.map_or(Ok(()), |s| s.release(std::slice::from_ref(e))),
                id => self.allocators[id.index()]
                    .as_mut()
                    .map_or(Ok(()), |a| a.release(std::slice::from_ref(e))),
            };
            // A failed release means the space was already free: leaking it is safe, so it is
            // left for fsck to report rather than turning into an error here.
            let _ = result;
        }
    }
}

impl Inner {
    /// Takes `want` bytes for a file of `kind`, trying its devices in order. WAL and DB keep
    /// the log's reserve free.
    pub(super) fn allocate(
        &self,
        st: &mut State,
        kind: FileKind,
        want: u64,
    ) -> Result<Vec<Extent>> {
        let (device, extents) = self
            .allocate_from(st, kind.preference(), want, self.config.log_reserve)
            .map_err(|detail| BlueFsError::NoSpace {
                what: format!("{want} bytes of {} data", kind.name()),
                detail,
            })??;
        if device == DeviceId::Slow && kind != FileKind::Slow {
            st.spillover_bytes += extents.iter().map(|e| e.length).sum::<u64>();
            if !st.spillover_warned {
                st.spillover_warned = true;
                log::warn!(
                    "bluefs: {} data spilled over to the SLOW device (faster devices full)",
                    kind.name()
                );
            }
        }
        Ok(extents)
    }

    /// Space for the log: WAL, then DB, then SLOW, its reserve included.
    pub(super) fn allocate_log(&self, st: &mut State, want: u64) -> Result<Vec<Extent>> {
        let (_, extents) =
            self.allocate_from(st, &DeviceId::ALL, want, 0)
                .map_err(|detail| BlueFsError::NoSpace {
                    what: format!("{want} bytes of log"),
                    detail,
                })??;
        Ok(extents)
    }

    /// Tries `devices` in order, leaving `keep_free` bytes on WAL and DB. The outer error lists
    /// what each device had when all were full; the inner one is any other allocator failure.
    fn allocate_from(
        &self,
        st: &mut State,
        devices: &[DeviceId],
        want: u64,
        keep_free: u64,
    ) -> std::result::Result<Result<(DeviceId, Vec<Extent>)>, String> {
        let mut tried = Vec::new();
        for &id in devices {
            if self.devices[id.index()].is_none() {
                continue;
            }
            let result = match (id, &self.slow, st.allocators.get_mut(id.index())) {
                (DeviceId::Slow, Some(s), _) => s.allocate(want),
                (DeviceId::Slow, None, _) => continue,
                (_, _, Some(Some(a))) => a.allocate_keeping(want, keep_free),
                _ => continue,
            };
            match result {
                Ok(extents) => return Ok(Ok((id, extents))),
                Err(AllocError::NoSpace { free, .. }) => {
                    tried.push(format!("{} {free} bytes free", id.name()))
                }
                Err(e) => return Ok(Err(e.into())),
            }
        }
        Err(if tried.is_empty() {
            "no device may hold it".into()
        } else {
            tried.join(", ")
        })
    }

    pub(super) fn release_now(&self, st: &mut State, extents: &[Extent]) {
        st.release(self.slow.as_ref(), extents);
    }

    pub(super) fn release_writer(&self, ino: u64) {
        let mut st = lock(&self.state);
        if let Some(f) = st.files.get_mut(&ino) {
            f.writer = false;
        } else if let Some(mut f) = st.orphans.remove(&ino) {
            f.writer = false;
            self.close_orphan(&mut st, ino, f);
        }
    }

    pub(super) fn release_reader(&self, ino: u64) {
        let mut st = lock(&self.state);
        if let Some(f) = st.files.get_mut(&ino) {
            f.readers = f.readers.saturating_sub(1);
            if f.readers == 0 && !f.deferred_release.is_empty() {
                let deferred = std::mem::take(&mut f.deferred_release);
                self.release_now(&mut st, &deferred);
            }
        } else if let Some(mut f) = st.orphans.remove(&ino) {
            f.readers = f.readers.saturating_sub(1);
            self.close_orphan(&mut st, ino, f);
        }
    }

    /// A removed file lost a handle: put it back until the last one, then free its space (its
    /// removal is already in the log).
    fn close_orphan(&self, st: &mut State, ino: u64, f: FileMeta) {
        if f.readers > 0 || f.writer {
            st.orphans.insert(ino, f);
        } else {
            let extents: Vec<Extent> = f
                .all_extents()
                .chain(&f.deferred_release)
                .copied()
                .collect();
            self.release_now(st, &extents);
        }
    }

    /// Shrinks `ino` to `size`: whole allocation units past the end are released.
    pub(super) fn shrink(&self, st: &mut State, ino: u64, size: u64) -> Result<()> {
        let f = &st.files[&ino];
        let mut kept = Vec::new();
        let mut released = Vec::new();
        let mut pos = 0u64;
        for e in f.all_extents() {
            let unit = self.unit_of(e.device);
            let keep = size
                .saturating_sub(pos)
                .next_multiple_of(unit)
                .min(e.length);
            if keep > 0 {
                kept.push(Extent { length: keep, ..*e });
            }
            if keep < e.length {
                released.push(Extent {
                    device: e.device,
                    offset: e.offset + keep,
                    length: e.length - keep,
                });
            }
            pos += e.length;
        }
        let fnode = Fnode {
            ino,
            size: size.min(f.size()),
            mtime_ns: now_ns(),
            extents: kept,
        };
        let readers = f.readers > 0;
        let now = if readers {
            Vec::new()
        } else {
            released.clone()
        };
        self.commit(st, vec![LogOp::FileUpdate(fnode)], now)?;
        let f = st.files.get_mut(&ino).expect("still there");
        f.pending_extents.clear();
        f.pending_size = None;
        f.data_generation += 1;
        if readers {
            f.deferred_release.extend(released);
        }
        Ok(())
    }

    pub(super) fn unit_of(&self, id: DeviceId) -> u64 {
        match id {
            DeviceId::Slow => self
                .slow
                .as_ref()
                .map_or(self.config.alloc_units[id.index()], |s| s.unit()),
            _ => self.config.alloc_units[id.index()],
        }
    }
}
