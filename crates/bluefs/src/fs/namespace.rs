//! The namespace: directories, names, links, and opening files for reading and writing.

use bluepoll_base::id::now_ns;
use bluepoll_base::sync::lock;

use super::data::{map_range, place_log_only, push_extent, read_into};
use super::reader::FileReader;
use super::writer::FileWriter;
use super::{BlueFs, State};
use crate::error::{BlueFsError, Result};
use crate::format::{BLOCK_SIZE, Extent, Fnode, LogOp};

/// What [`BlueFs::stat`] says about a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStat {
    /// Inode number: stable for the file's life, across renames and links.
    pub ino: u64,
    /// Size in bytes, counting data a writer has flushed but not yet made durable (not what it
    /// still buffers).
    pub size: u64,
    /// Last modification as of the last commit, in ns since the Unix epoch.
    pub mtime_ns: u64,
    /// Names the file has.
    pub nlink: u32,
    /// Bytes allocated to the file (whole allocation units; at least `size`).
    pub allocated: u64,
}

/// Splits `dir/name` (a leading `/` is ignored; the name is what follows the last `/`).
fn split_path(path: &str) -> Result<(&str, &str)> {
    let trimmed = path.trim_start_matches('/');
    let Some((dir, name)) = trimmed.rsplit_once('/') else {
        return Err(BlueFsError::InvalidPath {
            path: path.into(),
            reason: "expected DIR/NAME",
        });
    };
    check_name(path, dir)?;
    check_name(path, name)?;
    Ok((dir, name))
}

fn check_name(path: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(BlueFsError::InvalidPath {
            path: path.into(),
            reason: "empty directory or file name",
        });
    }
    if name.len() > 1024 {
        return Err(BlueFsError::InvalidPath {
            path: path.into(),
            reason: "name longer than 1024 bytes",
        });
    }
    Ok(())
}

impl BlueFs {
    /// Creates directory `dir`. Directories do not nest: `dir` is one name, like `db.wal`.
    /// `Exists` if it does; `InvalidPath` if the name is empty or over 1024 bytes.
    pub fn mkdir(&self, dir: &str) -> Result<()> {
        check_name(dir, dir)?;
        let mut st = self.inner.lock_writable()?;
        if st.dirs.contains_key(dir) {
            return Err(BlueFsError::Exists { path: dir.into() });
        }
        self.inner.commit(
            &mut st,
            vec![LogOp::DirCreate { name: dir.into() }],
            Vec::new(),
        )
    }

    /// Removes directory `dir`: `NotFound` if there is none, `NotEmpty` if it holds files.
    pub fn rmdir(&self, dir: &str) -> Result<()> {
        let mut st = self.inner.lock_writable()?;
        match st.dirs.get(dir) {
            None => return Err(BlueFsError::NotFound { path: dir.into() }),
            Some(entries) if !entries.is_empty() => {
                return Err(BlueFsError::NotEmpty { path: dir.into() });
            }
            Some(_) => {}
        }
        self.inner.commit(
            &mut st,
            vec![LogOp::DirRemove { name: dir.into() }],
            Vec::new(),
        )
    }

    /// Whether directory `dir` exists.
    pub fn dir_exists(&self, dir: &str) -> bool {
        lock(&self.inner.state).dirs.contains_key(dir)
    }

    /// Directory names, sorted.
    pub fn list_dirs(&self) -> Vec<String> {
        lock(&self.inner.state).dirs.keys().cloned().collect()
    }

    /// File names in `dir`, sorted.
    pub fn readdir(&self, dir: &str) -> Result<Vec<String>> {
        let st = lock(&self.inner.state);
        st.dirs
            .get(dir)
            .map(|d| d.keys().cloned().collect())
            .ok_or_else(|| BlueFsError::NotFound { path: dir.into() })
    }

    /// Whether `path` (`dir/name`) names a file; false for an invalid path too.
    pub fn exists(&self, path: &str) -> bool {
        self.stat(path).is_ok()
    }

    /// Where a file's bytes live, in file order (for inspection tools and the corruption
    /// drill; the extents may change as soon as the lock is dropped).
    pub fn extents_of(&self, path: &str) -> Result<Vec<Extent>> {
        let (dir, name) = split_path(path)?;
        let st = lock(&self.inner.state);
        let ino = st.lookup(path, dir, name)?;
        let f = &st.files[&ino];
        Ok(f.fnode
            .extents
            .iter()
            .chain(&f.pending_extents)
            .cloned()
            .collect())
    }

    /// The log's extents and the bytes of it in use (frames end there).
    pub fn log_extents(&self) -> (Vec<Extent>, u64) {
        let st = lock(&self.inner.state);
        (st.log.fnode.extents.clone(), st.log.position)
    }

    /// Size, allocation, links and mtime of the file at `path`; `NotFound` if there is none.
    pub fn stat(&self, path: &str) -> Result<FileStat> {
        let (dir, name) = split_path(path)?;
        let st = lock(&self.inner.state);
        let ino = st.lookup(path, dir, name)?;
        let f = &st.files[&ino];
        Ok(FileStat {
            ino,
            size: f.size(),
            mtime_ns: f.fnode.mtime_ns,
            nlink: f.nlink,
            allocated: f.allocated(),
        })
    }

    /// Creates `path` (or truncates it to nothing if it exists) and opens it for writing.
    pub fn create(&self, path: &str) -> Result<FileWriter> {
        let (dir, name) = split_path(path)?;
        let mut st = self.inner.lock_writable()?;
        if !st.dirs.contains_key(dir) {
            return Err(BlueFsError::NotFound { path: dir.into() });
        }
        let ino = match st.dirs[dir].get(name).copied() {
            Some(ino) => {
                let f = &st.files[&ino];
                if f.writer {
                    return Err(BlueFsError::Busy {
                        path: path.into(),
                        reason: "already open for writing",
                    });
                }
                self.inner.shrink(&mut st, ino, 0)?;
                ino
            }
            None => {
                let ino = st.next_ino;
                let fnode = Fnode {
                    ino,
                    size: 0,
                    mtime_ns: now_ns(),
                    extents: Vec::new(),
                };
                self.inner.commit(
                    &mut st,
                    vec![
                        LogOp::FileUpdate(fnode),
                        LogOp::DirLink {
                            dir: dir.into(),
                            name: name.into(),
                            ino,
                        },
                    ],
                    Vec::new(),
                )?;
                st.next_ino += 1;
                ino
            }
        };
        st.files.get_mut(&ino).expect("just made").start_writer();
        Ok(FileWriter::new(
            self.clone(),
            path.into(),
            ino,
            0,
            Vec::new(),
        ))
    }

    /// Opens an existing file to append to it.
    pub fn open_append(&self, path: &str) -> Result<FileWriter> {
        let (dir, name) = split_path(path)?;
        let (ino, size, tail_extents) = {
            let mut st = self.inner.lock_writable()?;
            let ino = st.lookup(path, dir, name)?;
            let f = st.files.get_mut(&ino).expect("looked up");
            if f.writer {
                return Err(BlueFsError::Busy {
                    path: path.into(),
                    reason: "already open for writing",
                });
            }
            // The partial last block is read from the device below, and the writer rewrites
            // it: bytes the log alone holds must be there first.
            if !f.log_only.is_empty() {
                place_log_only(&self.inner.devices, f)?;
            }
            f.start_writer();
            let size = f.size();
            let tail_start = size / BLOCK_SIZE * BLOCK_SIZE;
            let tail = if size % BLOCK_SIZE != 0 {
                map_range(f.all_extents(), tail_start, BLOCK_SIZE)
            } else {
                None
            };
            (ino, size, tail)
        };
        let mut tail = Vec::new();
        if let Some(pieces) = tail_extents {
            let mut block = vec![0u8; BLOCK_SIZE as usize];
            if let Err(e) = read_into(&self.inner.devices, &pieces, &mut block) {
                self.inner.release_writer(ino);
                return Err(e);
            }
            tail = block[..(size % BLOCK_SIZE) as usize].to_vec();
        }
        Ok(FileWriter::new(self.clone(), path.into(), ino, size, tail))
    }

    /// Renames `old` to `new` (replacing it) and opens it for writing from size 0, keeping its
    /// allocated space (RocksDB recycles WAL files this way).
    pub fn reuse(&self, old: &str, new: &str) -> Result<FileWriter> {
        self.rename(old, new)?;
        let (dir, name) = split_path(new)?;
        let mut st = self.inner.lock_writable()?;
        let ino = st.lookup(new, dir, name)?;
        let f = &st.files[&ino];
        if f.writer {
            return Err(BlueFsError::Busy {
                path: new.into(),
                reason: "already open for writing",
            });
        }
        let mut fnode = f.fnode.clone();
        for e in &f.pending_extents {
            push_extent(&mut fnode.extents, *e);
        }
        fnode.size = 0;
        fnode.mtime_ns = now_ns();
        self.inner
            .commit(&mut st, vec![LogOp::FileUpdate(fnode)], Vec::new())?;
        let f = st.files.get_mut(&ino).expect("still there");
        f.pending_extents.clear();
        f.pending_size = None;
        f.start_writer();
        Ok(FileWriter::new(
            self.clone(),
            new.into(),
            ino,
            0,
            Vec::new(),
        ))
    }

    /// Opens `path` for reading from byte 0. While the reader is open, the file's space is
    /// not reused: removing the file or cutting it frees the space when the last handle
    /// closes, and a removed file stays readable. Readers see what writers flush.
    pub fn open_read(&self, path: &str) -> Result<FileReader> {
        let (dir, name) = split_path(path)?;
        let mut st = lock(&self.inner.state);
        let ino = st.lookup(path, dir, name)?;
        st.files.get_mut(&ino).expect("looked up").readers += 1;
        Ok(FileReader {
            fs: self.clone(),
            ino,
            position: 0,
        })
    }

    /// Renames atomically, replacing `to` if it exists.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (from_dir, from_name) = split_path(from)?;
        let (to_dir, to_name) = split_path(to)?;
        let mut st = self.inner.lock_writable()?;
        let ino = st.lookup(from, from_dir, from_name)?;
        if !st.dirs.contains_key(to_dir) {
            return Err(BlueFsError::NotFound {
                path: to_dir.into(),
            });
        }
        if from_dir == to_dir && from_name == to_name {
            return Ok(());
        }
        let mut ops = Vec::new();
        let mut released = Vec::new();
        if let Some(&target) = st.dirs[to_dir].get(to_name) {
            if target == ino {
                // Two links to the same file: just drop the old name.
                ops.push(LogOp::DirUnlink {
                    dir: from_dir.into(),
                    name: from_name.into(),
                });
                return self.inner.commit(&mut st, ops, released);
            }
            ops.push(LogOp::DirUnlink {
                dir: to_dir.into(),
                name: to_name.into(),
            });
            st.unlink_ops(target, &mut ops, &mut released);
        }
        ops.push(LogOp::DirLink {
            dir: to_dir.into(),
            name: to_name.into(),
            ino,
        });
        ops.push(LogOp::DirUnlink {
            dir: from_dir.into(),
            name: from_name.into(),
        });
        self.inner.commit(&mut st, ops, released)
    }

    /// A second name for a file.
    pub fn link(&self, from: &str, to: &str) -> Result<()> {
        let (from_dir, from_name) = split_path(from)?;
        let (to_dir, to_name) = split_path(to)?;
        let mut st = self.inner.lock_writable()?;
        let ino = st.lookup(from, from_dir, from_name)?;
        match st.dirs.get(to_dir) {
            None => {
                return Err(BlueFsError::NotFound {
                    path: to_dir.into(),
                });
            }
            Some(d) if d.contains_key(to_name) => {
                return Err(BlueFsError::Exists { path: to.into() });
            }
            Some(_) => {}
        }
        self.inner.commit(
            &mut st,
            vec![LogOp::DirLink {
                dir: to_dir.into(),
                name: to_name.into(),
                ino,
            }],
            Vec::new(),
        )
    }

    /// Removes the name `path`. The file goes with its last name, and its space once no
    /// handle has it open. `NotFound` if there is no such name.
    pub fn unlink(&self, path: &str) -> Result<()> {
        let (dir, name) = split_path(path)?;
        let mut st = self.inner.lock_writable()?;
        let ino = st.lookup(path, dir, name)?;
        let mut ops = vec![LogOp::DirUnlink {
            dir: dir.into(),
            name: name.into(),
        }];
        let mut released = Vec::new();
        st.unlink_ops(ino, &mut ops, &mut released);
        self.inner.commit(&mut st, ops, released)
    }

    /// Sets a file's size: shrinking releases whole allocation units past the new end;
    /// growing writes zeroes.
    pub fn truncate(&self, path: &str, size: u64) -> Result<()> {
        let (dir, name) = split_path(path)?;
        let current = {
            let st = lock(&self.inner.state);
            let ino = st.lookup(path, dir, name)?;
            let f = &st.files[&ino];
            if f.writer {
                return Err(BlueFsError::Busy {
                    path: path.into(),
                    reason: "open for writing; truncate through the writer",
                });
            }
            f.size()
        };
        if size > current {
            let mut w = self.open_append(path)?;
            w.append_zeroes(size - current)?;
            return w.close();
        }
        let mut st = self.inner.lock_writable()?;
        let ino = st.lookup(path, dir, name)?;
        self.inner.shrink(&mut st, ino, size)
    }

    /// Takes the advisory lock on `path`, creating the file if needed (RocksDB's LOCK file).
    pub fn lock_file(&self, path: &str) -> Result<()> {
        if !self.exists(path) {
            self.create(path)?.close()?;
        }
        let mut st = lock(&self.inner.state);
        if !st.locks.insert(path.to_string()) {
            return Err(BlueFsError::Busy {
                path: path.into(),
                reason: "is locked",
            });
        }
        Ok(())
    }

    /// Releases the advisory lock [`lock_file`](Self::lock_file) took on `path`; `NotFound` if
    /// it is not locked.
    pub fn unlock_file(&self, path: &str) -> Result<()> {
        if lock(&self.inner.state).locks.remove(path) {
            Ok(())
        } else {
            Err(BlueFsError::NotFound { path: path.into() })
        }
    }
}

impl State {
    fn lookup(&self, path: &str, dir: &str, name: &str) -> Result<u64> {
        self.dirs
            .get(dir)
            .and_then(|d| d.get(name))
            .copied()
            .ok_or_else(|| BlueFsError::NotFound { path: path.into() })
    }

    /// Ops (and space to free) for dropping one link of `ino`: when it was the last, the file
    /// goes, and its space with it unless it is open (then when the last handle closes).
    fn unlink_ops(&self, ino: u64, ops: &mut Vec<LogOp>, released: &mut Vec<Extent>) {
        let f = &self.files[&ino];
        if f.nlink <= 1 {
            ops.push(LogOp::FileRemove { ino });
            if f.readers == 0 && !f.writer {
                released.extend(f.all_extents().copied());
            }
        }
    }
}
