//! One io_uring instance of a queue pair: its setup, the single `io_uring_enter` a poll makes,
//! and the waits that sleep in the kernel.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use io_uring::{EnterFlags, IoUring, types};

use super::namespace::UringNamespace;
use super::setup::setup_error_hint;
use crate::device::QueuePairStats;
use crate::error::NvmeError;

/// EINTR from io_uring_enter is retried at once, this many times, before waiting for the next
/// poll.
const MAX_ENTER_EINTR_RETRIES: u32 = 16;

/// How SQEs name the file: the registered slot when registration worked, the raw fd otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FileRef {
    Registered(u32),
    Raw(RawFd),
}

pub(super) struct Ring {
    pub(super) uring: IoUring,
    pub(super) file: FileRef,
    /// IOPOLL: completions appear only while we are in the kernel polling for them.
    pub(super) polled: bool,
    /// SQPOLL: a kernel thread consumes the SQ and posts completions on its own.
    kernel_submits: bool,
    /// SQEs handed to this ring whose CQE has not been reaped.
    pub(super) in_flight: u32,
}

impl Ring {
    pub(super) fn new(ns: &UringNamespace, entries: u32, iopoll: bool) -> Result<Ring, NvmeError> {
        let uring = ns
            .plan
            .build(entries, iopoll)
            .map_err(|e| NvmeError::QueuePairFailed {
                uri: ns.info.uri.clone(),
                reason: format!(
                    "io_uring_setup of {entries} entries failed: {e}{}",
                    setup_error_hint(&e)
                ),
            })?;
        let raw = ns.file.as_raw_fd();
        // A registered file skips the per-I/O fd lookup and reference count; without it (old
        // kernel, or RLIMIT_NOFILE accounting) the raw fd works the same, only slower.
        let file = match uring.submitter().register_files(&[raw]) {
            Ok(()) => FileRef::Registered(0),
            Err(_) => FileRef::Raw(raw),
        };
        Ok(Ring {
            polled: uring.params().is_setup_iopoll(),
            kernel_submits: uring.params().is_setup_sqpoll(),
            uring,
            file,
            in_flight: 0,
        })
    }

    /// Makes the one `io_uring_enter` this poll needs on this ring, if it needs any: to submit
    /// what the kernel has not consumed, to poll an IOPOLL device, to wake a sleeping SQ thread,
    /// or to run completion work the TASKRUN flag says is pending. Counts it in `stats`.
    ///
    /// EAGAIN and EBUSY are not errors: the kernel is short of resources or the CQ is full, and
    /// the next poll, after this one reaps, tries again.
    pub(super) fn enter_if_needed(&mut self, stats: &mut QueuePairStats) -> io::Result<()> {
        let sq = self.uring.submission();
        let unconsumed = sq.len() as u32;
        let mut flags = EnterFlags::empty();
        if (self.polled && !self.kernel_submits && self.in_flight > 0)
            || sq.taskrun()
            || sq.cq_overflow()
        {
            flags |= EnterFlags::GETEVENTS;
        }
        let to_submit = if self.kernel_submits {
            if unconsumed > 0 && sq.need_wakeup() {
                flags |= EnterFlags::SQ_WAKEUP;
            }
            0
        } else {
            unconsumed
        };
        drop(sq);
        if to_submit == 0 && flags.is_empty() {
            return Ok(());
        }
        let mut interrupted = 0;
        loop {
            stats.syscalls += 1;
            // SAFETY: no extended argument is passed (None), so the kernel reads no sigset of
            // ours. The `to_submit` SQEs between the kernel's head and our published tail were
            // fully written by `hand_over`, each pointing at a buffer held in the slab (never
            // dereferenced) until its CQE is reaped.
            let result = unsafe {
                self.uring
                    .submitter()
                    .enter::<libc::sigset_t>(to_submit, 0, flags.bits(), None)
            };
            match result {
                Ok(_) => return Ok(()),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) if interrupted < MAX_ENTER_EINTR_RETRIES => {
                        interrupted += 1;
                    }
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY) => return Ok(()),
                    _ => return Err(e),
                },
            }
        }
    }

    /// Sleeps in the kernel until a completion is ready or `timeout` passes. Only for rings
    /// whose completions the kernel posts on its own (not IOPOLL) and a kernel with EXT_ARG
    /// (5.11); returns false when it could not wait.
    pub(super) fn wait_for_completion(
        &mut self,
        timeout: Duration,
        stats: &mut QueuePairStats,
    ) -> bool {
        let params = self.uring.params();
        if self.polled || !params.is_feature_ext_arg() || self.in_flight == 0 {
            return false;
        }
        let timeout = types::Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&timeout);
        stats.waits += 1;
        // ETIME, EINTR and the rest only end the wait early; the caller polls again.
        let _ = self.uring.submitter().submit_with_args(1, &args);
        true
    }

    /// Waits a little for completions without spinning; used only while dropping.
    pub(super) fn wait_briefly(&mut self) {
        let params = self.uring.params();
        if !self.polled && params.is_feature_ext_arg() {
            let timeout = types::Timespec::new().nsec(10_000_000);
            let args = types::SubmitArgs::new().timespec(&timeout);
            // ETIME, EINTR and the rest only end this wait early; the caller loops.
            let _ = self.uring.submitter().submit_with_args(1, &args);
        } else {
            // IOPOLL rings poll once per call (GETEVENTS is added for them); others at least get
            // their SQ submitted and task work run.
            let _ = self.uring.submitter().submit_and_wait(0);
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Closing a ring tears it down asynchronously, and a registered file stays open until
        // that finishes; for an O_EXCL block device that would make an immediate reopen fail
        // with EBUSY. Unregistering first lets the file go now. Not with requests still in
        // flight (a queue pair that gave up waiting): older kernels block in unregister until
        // they finish.
        if let FileRef::Registered(_) = self.file
            && self.in_flight == 0
        {
            let _ = self.uring.submitter().unregister_files();
        }
    }
}
