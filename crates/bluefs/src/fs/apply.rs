//! The one apply function: how each log op changes the metadata, for the live filesystem after
//! a commit and for replay alike.

use std::collections::BTreeMap;

use super::data::push_extent;
use super::space::FileKind;
use super::{FileMeta, LOG_INO, State};
use crate::format::{Extent, LogOp};

impl State {
    /// Makes every state change an op describes; replay uses the same function.
    pub(super) fn apply(&mut self, op: &LogOp) -> std::result::Result<(), String> {
        match op {
            LogOp::Init { .. } | LogOp::Jump { .. } | LogOp::JumpSeq { .. } => {}
            LogOp::DirCreate { name } => {
                if self.dirs.insert(name.clone(), BTreeMap::new()).is_some() {
                    return Err(format!("directory {name} created twice"));
                }
            }
            LogOp::DirRemove { name } => match self.dirs.remove(name) {
                Some(d) if d.is_empty() => {}
                Some(_) => return Err(format!("directory {name} removed while not empty")),
                None => return Err(format!("directory {name} removed but never created")),
            },
            LogOp::DirLink { dir, name, ino } => {
                let Some(f) = self.files.get_mut(ino) else {
                    return Err(format!("{dir}/{name} links to missing file {ino}"));
                };
                let Some(d) = self.dirs.get_mut(dir) else {
                    return Err(format!("{dir}/{name} linked in a missing directory"));
                };
                if d.insert(name.clone(), *ino).is_some() {
                    return Err(format!("{dir}/{name} linked twice"));
                }
                f.nlink += 1;
                f.kind = FileKind::of(dir, name);
            }
            LogOp::DirUnlink { dir, name } => {
                let Some(ino) = self.dirs.get_mut(dir).and_then(|d| d.remove(name)) else {
                    return Err(format!("{dir}/{name} unlinked but not linked"));
                };
                if let Some(f) = self.files.get_mut(&ino) {
                    f.nlink = f.nlink.saturating_sub(1);
                }
            }
            LogOp::FileUpdate(fnode) => {
                if fnode.ino == LOG_INO {
                    self.log.fnode = fnode.clone();
                } else if let Some(f) = self.files.get_mut(&fnode.ino) {
                    f.fnode = fnode.clone();
                    f.trim_log_only(fnode.size);
                } else {
                    self.files
                        .insert(fnode.ino, FileMeta::new(fnode.clone(), FileKind::Db));
                }
            }
            LogOp::FileUpdateDelta {
                ino,
                size,
                mtime_ns,
                appended,
            }
            | LogOp::FileAppendChecked {
                ino,
                size,
                mtime_ns,
                appended,
                ..
            } => {
                self.grow_file(*ino, *size, *mtime_ns, appended)?;
            }
            LogOp::FileAppendInline {
                ino,
                size,
                mtime_ns,
                appended,
                data_from,
                data,
            } => {
                let f = self.grow_file(*ino, *size, *mtime_ns, appended)?;
                if f.fnode.allocated() < *size {
                    return Err(format!(
                        "inline append to file {ino} ends at {size}, past its allocation {}",
                        f.fnode.allocated()
                    ));
                }
                f.add_log_only(*data_from, data);
            }
            LogOp::FileRemove { ino } => match self.files.remove(ino) {
                Some(f) if f.readers > 0 || f.writer => {
                    self.orphans.insert(*ino, f);
                }
                Some(_) => {}
                None => return Err(format!("removal of missing file {ino}")),
            },
        }
        Ok(())
    }

    /// An append's metadata: new extents, size, mtime.
    fn grow_file(
        &mut self,
        ino: u64,
        size: u64,
        mtime_ns: u64,
        appended: &[Extent],
    ) -> std::result::Result<&mut FileMeta, String> {
        let Some(f) = self.files.get_mut(&ino) else {
            return Err(format!("append to missing file {ino}"));
        };
        for e in appended {
            push_extent(&mut f.fnode.extents, *e);
        }
        f.fnode.size = size;
        f.fnode.mtime_ns = mtime_ns;
        Ok(f)
    }
}
