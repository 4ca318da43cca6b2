//! How rings are built: the flags a queue pair's rings use ([`RingPlan`]), which of them this
//! kernel accepts, and the probe that decides whether polled I/O (IOPOLL) works end to end.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, types};

use crate::dma::DmaBuf;
use crate::error::NvmeError;

/// How long the IOPOLL probe waits for its single read.
const PROBE_WAIT_LIMIT: Duration = Duration::from_secs(5);

/// How interrupt-driven completions get from the kernel into the completion ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TaskRunMode {
    /// `COOP_TASKRUN | TASKRUN_FLAG`: posted at our next kernel entry; no IPIs.
    Cooperative,
    /// The kernel's default: it interrupts the polling thread to post them.
    Interrupting,
}

/// Everything about how a queue pair's rings are built, decided once at open.
#[derive(Clone, Copy, Debug)]
pub(super) struct RingPlan {
    /// Whether the ring carrying reads and writes is an IOPOLL ring.
    pub(super) iopoll: bool,
    pub(super) sqpoll_idle_ms: Option<u32>,
    pub(super) taskrun: TaskRunMode,
    /// `SUBMIT_ALL` (5.18): one bad SQE does not strand the rest of the batch in the ring.
    pub(super) submit_all: bool,
}

impl RingPlan {
    pub(super) fn build(&self, entries: u32, iopoll: bool) -> io::Result<IoUring> {
        let mut builder = IoUring::builder();
        // CQ at twice the SQ: a completion never has to wait for the CQ to drain, even with
        // every command in flight and resubmissions racing their first CQEs.
        builder.dontfork().setup_cqsize(entries.saturating_mul(2));
        if self.submit_all {
            builder.setup_submit_all();
        }
        if iopoll {
            builder.setup_iopoll();
        }
        match self.sqpoll_idle_ms {
            Some(idle) => {
                // The SQ thread runs its own task work; the cooperative flags buy nothing there.
                builder.setup_sqpoll(idle);
            }
            None if self.taskrun == TaskRunMode::Cooperative => {
                builder.setup_coop_taskrun().setup_taskrun_flag();
            }
            None => {}
        }
        builder.build(entries)
    }
}

/// Picks the ring flags this kernel accepts, best first. Also where a kernel without io_uring
/// (ENOSYS, or EPERM from `kernel.io_uring_disabled`/seccomp) is reported, at open rather than at
/// the first queue pair.
pub(super) fn choose_ring_features(
    path: &Path,
    preferred: TaskRunMode,
) -> Result<(TaskRunMode, bool), NvmeError> {
    let candidates = [
        (preferred, true),
        (TaskRunMode::Interrupting, true),
        (TaskRunMode::Interrupting, false),
    ];
    let mut last_error = io::Error::from_raw_os_error(libc::EINVAL);
    for (taskrun, submit_all) in candidates {
        let plan = RingPlan {
            iopoll: false,
            sqpoll_idle_ms: None,
            taskrun,
            submit_all,
        };
        match plan.build(2, false) {
            Ok(_) => return Ok((taskrun, submit_all)),
            // An older kernel that does not know a flag says EINVAL; try with fewer.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last_error = e,
            Err(e) => {
                last_error = e;
                break;
            }
        }
    }
    Err(NvmeError::Unsupported {
        path: path.to_path_buf(),
        reason: format!(
            "cannot set up io_uring: {last_error}{}",
            setup_error_hint(&last_error)
        ),
    })
}

/// What usually lies behind an io_uring_setup or registration failure, for error messages.
pub(super) fn setup_error_hint(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::ENOMEM) => {
            " (for unprivileged users ring memory counts against RLIMIT_MEMLOCK; raise `ulimit -l`)"
        }
        Some(libc::EPERM) => {
            " (disabled by the kernel.io_uring_disabled sysctl or a seccomp filter)"
        }
        Some(libc::ENOSYS) => " (the kernel was built without io_uring)",
        _ => "",
    }
}

/// Reads one block through an IOPOLL ring: the end-to-end test of whether the filesystem and the
/// device complete polled I/O (where they cannot, the read fails with EOPNOTSUPP at completion,
/// not at setup). It reads the file's first data extent, since reading a hole issues no I/O and
/// would prove nothing.
pub(super) fn probe_iopoll(
    file: &File,
    plan: &RingPlan,
    block_size: u32,
    capacity_blocks: u64,
) -> io::Result<()> {
    let mut ring = plan.build(2, true)?;
    // SAFETY: lseek takes only integers, so no memory is passed; `file` is borrowed, so the fd is
    // open. It only moves the file position, which nothing here uses: every I/O carries its own
    // offset.
    let first_data = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_DATA) };
    let block = u64::try_from(first_data).map_or(0, |offset| offset / block_size as u64);
    let offset = if block < capacity_blocks {
        block * block_size as u64
    } else {
        0
    };
    let mut buf = DmaBuf::new(block_size as usize).map_err(io::Error::other)?;
    let read = opcode::Read::new(types::Fd(file.as_raw_fd()), buf.as_mut_ptr(), block_size)
        .offset(offset)
        .build()
        .user_data(0);
    // SAFETY: the SQE reads `block_size` bytes into `buf`, a DMA buffer of at least that many
    // bytes (rounded up to 4 KiB), and the fd stays open (`file` is borrowed for the whole
    // function). `buf` is not viewed as a slice again: it is dropped only after its CQE arrives
    // or when the push fails (the kernel never saw the SQE), and on every other way out it is
    // leaked, so the kernel can never write into memory that has been freed or reused.
    unsafe { ring.submission().push(&read) }
        .map_err(|_| io::Error::other("the probe ring has no free entry"))?;
    let deadline = Instant::now() + PROBE_WAIT_LIMIT;
    loop {
        // On an IOPOLL ring this also polls the device once for completions.
        match ring.submit_and_wait(0) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) => {}
            Err(e) => {
                std::mem::forget(buf);
                return Err(e);
            }
        }
        if let Some(cqe) = ring.completion().next() {
            return match cqe.result() {
                res if res >= 0 => Ok(()),
                res => Err(io::Error::from_raw_os_error(res.saturating_neg())),
            };
        }
        if Instant::now() >= deadline {
            std::mem::forget(buf);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the probe read did not complete",
            ));
        }
        std::thread::yield_now();
    }
}
