//! The read path: which objects a range touches, what the map and the parent say of them, and
//! synchronous and asynchronous reads.

use std::sync::{Arc, Mutex};

use super::{Image, data_object, pieces_of};
use crate::error::ImageError;

/// The pieces of one asynchronous read coming together.
struct Gather {
    out: Vec<u8>,
    left: usize,
    error: Option<ImageError>,
    done: Option<OnImageRead>,
}

/// Called with an asynchronous read's bytes.
type OnImageRead = Box<dyn FnOnce(Result<Vec<u8>, ImageError>) + Send>;

impl Gather {
    /// One piece of the read is in (`bytes` go at `at`; shorter than asked, the rest stays
    /// zeros); the last one answers.
    fn piece(gather: &Mutex<Gather>, at: usize, bytes: Result<Vec<u8>, ImageError>) {
        let mut state = bluepoll_base::sync::lock(gather);
        match bytes {
            Ok(bytes) => state.out[at..at + bytes.len()].copy_from_slice(&bytes),
            Err(e) => {
                state.error.get_or_insert(e);
            }
        }
        state.left -= 1;
        let last = state.left == 0;
        drop(state);
        if last {
            Gather::finish(gather);
        }
    }

    fn finish(gather: &Mutex<Gather>) {
        let mut state = bluepoll_base::sync::lock(gather);
        let result = match state.error.take() {
            Some(e) => Err(e),
            None => Ok(std::mem::take(&mut state.out)),
        };
        let done = state.done.take();
        drop(state);
        if let Some(done) = done {
            done(result);
        }
    }
}

impl Image {
    /// [`ImageError::Beyond`] unless `offset..offset + len` lies inside the image.
    pub(super) fn check_range(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.info.size => Ok(()),
            _ => Err(ImageError::Beyond {
                offset,
                len,
                size: self.info.size,
            }),
        }
    }

    /// [`pieces_of`] for this image's object size.
    pub(super) fn pieces(&self, offset: u64, len: u64) -> Vec<(u64, u64, u64, usize)> {
        pieces_of(self.info.object_size(), offset, len)
    }

    /// Whether the map says the object may exist (without a trusted map: maybe).
    fn may_exist(&self, index: u64) -> bool {
        self.object_map().is_none_or(|m| m.get(index).may_exist())
    }

    /// How far the parent shows through (0 for an image that is not a clone).
    pub(super) fn overlap(&self) -> u64 {
        self.parent
            .as_ref()
            .map_or(0, |p| p.link.overlap.min(self.info.size))
    }

    pub(super) fn parent_covers(&self, index: u64) -> bool {
        index * self.info.object_size() < self.overlap()
    }

    /// Fills `out` (image bytes at `offset`) from the parent where it shows through.
    pub(super) fn read_parent(&mut self, offset: u64, out: &mut [u8]) -> Result<(), ImageError> {
        let overlap = self.overlap();
        match &self.parent {
            Some(p) if offset < overlap => {
                self.stats.parent_reads += 1;
                p.read_into(overlap, offset, out)
            }
            _ => {
                self.stats.reads_from_map += 1;
                Ok(())
            }
        }
    }

    /// Reads `len` bytes at `offset`, blocking until they are in. Space never written reads as
    /// zeros (from the map alone, when this client trusts it); a clone reads what it has not
    /// written from its parent. Serves pending lock requests first when this client owns the
    /// lock. [`ImageError::Beyond`] when the range reaches past the image's end.
    pub fn read(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, ImageError> {
        self.check_range(offset, len)?;
        self.serve_lock_requests()?;
        let mut out = vec![0u8; len as usize];
        let object_size = self.info.object_size();
        for (index, within, n, at) in self.pieces(offset, len) {
            let piece = &mut out[at..at + n as usize];
            if self.may_exist(index) {
                self.stats.object_reads += 1;
                match self.store.read(&self.coll, &data_object(index), within, n) {
                    // Short: the object ends sooner; the rest reads as zeros.
                    Ok(bytes) => {
                        piece[..bytes.len()].copy_from_slice(&bytes);
                        continue;
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.read_parent(index * object_size + within, piece)?;
        }
        Ok(out)
    }

    /// Starts a read; `done` gets the bytes on a store reactor (it must not block), or on a
    /// thread of its own when a clone with an untrusted map finds an object missing and reads
    /// the parent for it. Reads see every request queued before them. What a clone reads from
    /// its parent by its map is read at once.
    pub fn read_async(
        &mut self,
        offset: u64,
        len: u64,
        done: impl FnOnce(Result<Vec<u8>, ImageError>) + Send + 'static,
    ) -> Result<(), ImageError> {
        self.check_range(offset, len)?;
        let mut out = vec![0u8; len as usize];
        let mut wanted = Vec::new();
        let object_size = self.info.object_size();
        for (index, within, n, at) in self.pieces(offset, len) {
            if self.may_exist(index) {
                self.stats.object_reads += 1;
                wanted.push((index, within, n, at));
            } else {
                self.read_parent(index * object_size + within, &mut out[at..at + n as usize])?;
            }
        }
        let gather = Arc::new(Mutex::new(Gather {
            out,
            left: wanted.len(),
            error: None,
            done: Some(Box::new(done)),
        }));
        if wanted.is_empty() {
            Gather::finish(&gather);
            return Ok(());
        }
        // A clone's object that turns out not to exist (the map said it may: it is not trusted)
        // is read from the parent — with blocking calls, which the reactor running the
        // callback cannot make, so on a thread of its own: rare, and never with a trusted map.
        let parent = self
            .parent
            .as_ref()
            .map(|p| (Arc::clone(&p.view), self.overlap()));
        for (index, within, n, at) in wanted {
            let g = Arc::clone(&gather);
            let parent = parent.clone();
            self.store
                .read_async(&self.coll, &data_object(index), within, n, move |r| {
                    let offset = index * object_size + within;
                    match r {
                        Ok(bytes) => Gather::piece(&g, at, Ok(bytes)),
                        Err(e) if e.is_not_found() => match parent {
                            Some((view, overlap)) if offset < overlap => {
                                let on_thread = Arc::clone(&g);
                                let read_from_parent = move || {
                                    let k = ((overlap - offset) as usize).min(n as usize);
                                    let mut bytes = vec![0u8; k];
                                    let read = view.read_into(offset, &mut bytes).map(|()| bytes);
                                    Gather::piece(&on_thread, at, read);
                                };
                                if let Err(e) = std::thread::Builder::new()
                                    .name("clone-parent-read".into())
                                    .spawn(read_from_parent)
                                {
                                    let reason = format!("no thread to read the parent: {e}");
                                    Gather::piece(&g, at, Err(ImageError::Conflict { reason }));
                                }
                            }
                            // Past the overlap, or not a clone: zeros, as `out` holds.
                            _ => Gather::piece(&g, at, Ok(Vec::new())),
                        },
                        Err(e) => Gather::piece(&g, at, Err(e.into())),
                    }
                })?;
        }
        Ok(())
    }

    /// Whether `read_async` of this image runs without blocking, as on a store reactor: its
    /// reads go to the store alone (a clone reads from its parent at once).
    pub fn reads_without_blocking(&self) -> bool {
        self.parent.is_none()
    }

    /// The indices of the objects `offset..offset + len` touches (none when `len` is 0).
    pub fn objects_of(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let object_size = self.info.object_size();
        match len {
            0 => 0..0,
            _ => offset / object_size..(offset + len - 1) / object_size + 1,
        }
    }
}
