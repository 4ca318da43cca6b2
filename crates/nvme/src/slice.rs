//! Slices: [`Device::slice`] exposes bytes `[offset, offset + len)` of a device as a device of its
//! own, whose LBA 0 is the inner LBA `offset / block_size` — so one disk (or one simulated disk,
//! whose model every slice then shares) can hold several tiers or several filesystems.
//!
//! The slice's facts are the inner device's except `capacity_blocks` (`len / block_size`) and
//! `uri`, which is `INNER_URI[OFFSET+LEN]` in bytes (`mem:4G[1048576+2097152]`). That URI names
//! the slice in outputs; [`Device::open`] does not parse it. `fault_control()` is the inner
//! device's.
//!
//! A slice's queue pair validates commands against the slice's capacity, so a command past its
//! end completes with LBA Out of Range without touching the rest of the inner device; valid
//! commands are shifted and go straight to an inner queue pair, queued there until the slice's
//! poll rings the inner doorbell.

use std::collections::VecDeque;
use std::sync::Arc;

use super::command::{Completion, IoCmd, Opcode, Status};
use super::device::{
    Device, Namespace, NamespaceInfo, PollResult, QueueFull, QueuePair, QueuePairBackend,
    QueuePairStats,
};
use super::dma::DmaPool;
use super::error::NvmeError;
use super::fault::FaultControl;

pub(crate) fn slice(inner: &Device, offset: u64, len: u64) -> Result<Device, NvmeError> {
    let inner_info = inner.info();
    let bs = inner_info.block_size as u64;
    let refuse = |reason: String| NvmeError::InvalidSlice {
        uri: inner_info.uri.clone(),
        offset,
        len,
        reason,
    };
    if len == 0 {
        return Err(refuse("the slice is empty".into()));
    }
    if offset % bs != 0 || len % bs != 0 {
        return Err(refuse(format!(
            "offset and length must be multiples of the block size {bs}"
        )));
    }
    let capacity = inner_info.capacity_bytes();
    if offset.checked_add(len).is_none_or(|end| end > capacity) {
        return Err(refuse(format!(
            "it ends past the device's {capacity} bytes"
        )));
    }
    let mut info = inner_info.clone();
    info.uri = format!("{}[{offset}+{len}]", inner_info.uri);
    info.capacity_blocks = len / bs;
    Ok(Device::from_namespace(Arc::new(SliceNamespace {
        info,
        inner: inner.clone(),
        first_lba: offset / bs,
    })))
}

struct SliceNamespace {
    info: NamespaceInfo,
    inner: Device,
    first_lba: u64,
}

impl Namespace for SliceNamespace {
    fn info(&self) -> &NamespaceInfo {
        &self.info
    }

    fn wrapped(&self) -> Option<&Device> {
        Some(&self.inner)
    }

    fn create_queue_pair(
        self: Arc<Self>,
        depth: u32,
    ) -> Result<Box<dyn QueuePairBackend>, NvmeError> {
        Ok(Box::new(SliceQueuePair {
            inner: self.inner.queue_pair(depth)?,
            first_lba: self.first_lba,
            unrung: 0,
            failed: VecDeque::new(),
        }))
    }

    fn fault_control(&self) -> Option<FaultControl> {
        self.inner.fault_control()
    }
}

struct SliceQueuePair {
    inner: QueuePair,
    first_lba: u64,
    /// Commands queued on the inner queue pair since the last poll, for doorbell accounting.
    unrung: usize,
    /// Commands the inner queue pair refused.
    failed: VecDeque<Completion>,
}

impl QueuePairBackend for SliceQueuePair {
    #[inline]
    fn queue(&mut self, mut cmd: IoCmd) {
        if cmd.opcode != Opcode::Flush {
            cmd.lba += self.first_lba;
        }
        match self.inner.submit(cmd) {
            Ok(()) => self.unrung += 1,
            // Cannot happen (the inner queue pair is as deep as this one); if it did, the
            // caller gets the command back failed rather than lost.
            Err(QueueFull(cmd)) => self.failed.push_back(cmd.complete(Status::INTERNAL_ERROR)),
        }
    }

    #[inline]
    fn poll(
        &mut self,
        max: usize,
        out: &mut Vec<Completion>,
        stats: &mut QueuePairStats,
    ) -> PollResult {
        if self.unrung > 0 {
            stats.record_doorbell(self.unrung);
            self.unrung = 0;
        }
        let start = out.len();
        while out.len() - start < max {
            match self.failed.pop_front() {
                Some(c) => out.push(c),
                None => break,
            }
        }
        let failed = out.len() - start;
        let syscalls_before = self.inner.stats().syscalls;
        let result = self.inner.poll(max - failed, out);
        stats.syscalls += self.inner.stats().syscalls - syscalls_before;
        match result {
            Ok(n) => Ok(failed + n),
            Err(e) => Err(Box::new(e)),
        }
    }

    fn wait(&mut self, _stats: &mut QueuePairStats) {
        self.inner.wait();
    }

    fn register_pool(&mut self, pool: &DmaPool) -> Result<bool, NvmeError> {
        self.inner.register_pool(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DmaBuf;
    use crate::conformance::{check_backend_on, pattern};

    #[test]
    fn conforms_over_mem() {
        let dev = Device::open("mem:8M").unwrap();
        assert_eq!(
            check_backend_on(&dev.slice(3 << 20, 4 << 20).unwrap(), true),
            Vec::<&str>::new()
        );
        let dev = Device::open("mem:2M?block_size=512").unwrap();
        assert_eq!(
            check_backend_on(&dev.slice(512, 1 << 20).unwrap(), true),
            Vec::<&str>::new()
        );
        // A slice of a slice, and a slice of a simulated disk.
        let dev = Device::open("mem:8M").unwrap();
        let inner = dev.slice(1 << 20, 6 << 20).unwrap();
        assert_eq!(
            check_backend_on(&inner.slice(4096, 4 << 20).unwrap(), true),
            Vec::<&str>::new()
        );
        let dev = Device::open("sim:hdd,rpm=60000,seek_ms=0.05+mem:8M").unwrap();
        assert_eq!(
            check_backend_on(&dev.slice(4 << 20, 4 << 20).unwrap(), true),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn info_is_the_inner_devices_but_capacity_and_uri() {
        let dev = Device::open("fault:mem:8M").unwrap();
        let s = dev.slice(1 << 20, 2 << 20).unwrap();
        assert_eq!(s.info().uri, "fault:mem:8M[1048576+2097152]");
        assert_eq!(s.info().capacity_blocks, 512);
        assert_eq!(s.info().model, dev.info().model);
        assert!(s.info().volatile_write_cache);
        assert!(s.fault_control().is_some());
        let whole = dev.slice(0, 8 << 20).unwrap();
        assert_eq!(whole.info().capacity_blocks, dev.info().capacity_blocks);
    }

    #[test]
    fn a_write_lands_at_the_slice_offset_and_nowhere_else() {
        let dev = Device::open("mem:1M").unwrap();
        let s = dev.slice(64 << 10, 128 << 10).unwrap();
        let mut qp = s.queue_pair(4).unwrap();
        let mut buf = DmaBuf::new(8192).unwrap();
        pattern(1, &mut buf[..8192]);
        let expected = buf[..8192].to_vec();
        let c = qp.execute(IoCmd::write(3, 2, buf, 1)).unwrap();
        assert!(c.status.is_success());
        assert!(qp.execute(IoCmd::flush(2)).unwrap().status.is_success());

        let mut whole = dev.queue_pair(1).unwrap();
        let c = whole
            .execute(IoCmd::read(0, 256, DmaBuf::new(1 << 20).unwrap(), 3))
            .unwrap();
        let bytes = c.buf.unwrap();
        let at = (64 << 10) + 3 * 4096;
        assert!(bytes[at..at + 8192] == expected[..]);
        assert!(bytes[..at].iter().all(|&b| b == 0));
        assert!(bytes[at + 8192..1 << 20].iter().all(|&b| b == 0));

        // Past the slice's end, though inside the device: refused, nothing written.
        let c = qp
            .execute(IoCmd::write(32, 1, DmaBuf::new(4096).unwrap(), 4))
            .unwrap();
        assert_eq!(c.status, Status::LBA_OUT_OF_RANGE);
        let c = qp.execute(IoCmd::write_zeroes(31, 2, 5)).unwrap();
        assert_eq!(c.status, Status::LBA_OUT_OF_RANGE);
    }

    #[test]
    fn bad_slices_are_refused() {
        let dev = Device::open("mem:1M").unwrap();
        for (offset, len, needle) in [
            (0, 0, "empty"),
            (100, 4096, "multiples of the block size 4096"),
            (4096, 100, "multiples of the block size 4096"),
            (4096, 1 << 20, "ends past the device's 1048576 bytes"),
            (u64::MAX - 4095, 8192, "ends past"),
            (1 << 20, 4096, "ends past"),
        ] {
            let err = dev.slice(offset, len).unwrap_err();
            assert!(
                matches!(err, NvmeError::InvalidSlice { .. }),
                "{offset}+{len}: {err:?}"
            );
            let text = err.to_string();
            assert!(text.contains(needle), "{offset}+{len}: {text}");
            assert!(text.contains("mem:1M"), "{text}");
        }
    }
}
