//! `uring:PATH` — a regular file or a block device driven through io_uring.
//!
//! ```text
//! uring:PATH[?size=N][&block_size=N][&direct=1|0][&poll=auto|on|off][&sqpoll=0|1]
//!           [&sqpoll_idle_ms=N][&taskrun=coop|ipi][&flush=async|inline][&class=nvme|ssd|hdd]
//! ```
//!
//! - `size=N`: a missing file is created, a smaller one extended (sparse); nothing is ever
//!   shrunk. On a block device it limits the namespace to the first N bytes.
//! - `block_size=N`: default 4096 for files, the logical block size for devices; with O_DIRECT
//!   it may not be finer than the alignment the kernel demands (`statx` STATX_DIOALIGN).
//! - `direct=0`: buffered I/O through the page cache instead of O_DIRECT.
//! - `poll=auto` uses IOPOLL when the device has poll queues and a probe read completes polled;
//!   `poll=on` insists (and fails at open if it cannot); `poll=off` never polls.
//! - `sqpoll=1`: a kernel thread consumes the submission ring; `sqpoll_idle_ms` (default 100) is
//!   how long it spins before sleeping.
//! - `taskrun=coop` (default) lets completions wait for our next kernel entry (the ring's
//!   TASKRUN flag says when one is due); `taskrun=ipi` has the kernel interrupt the poller to post
//!   them at once (see "Ring flags" below).
//! - `class=`: overrides what sysfs says about the disk behind PATH.
//!
//! Block devices are opened O_EXCL: a mounted or otherwise claimed device is refused.
//!
//! Every queue pair owns its ring; queue pairs share nothing but the open file, so reactors on
//! different cores never contend. `queue` only records a command. `poll` writes every recorded
//! command into the submission ring, publishes the tail once, makes at most one `io_uring_enter`
//! for the whole batch and then reaps completions straight from the shared completion ring.
//!
//! Ring flags. Interrupt-driven completions reach the ring through task work run by the
//! submitting thread. By default the kernel forces that with an IPI whenever the thread is in user
//! space. We ask for `COOP_TASKRUN | TASKRUN_FLAG` instead: the work runs at our next kernel entry
//! (any syscall, or any interrupt on our core), and the `IORING_SQ_TASKRUN` flag tells `poll` when
//! completions are waiting with nobody to post them, so a poll with nothing to submit enters the
//! kernel only then. Measured with `measure_per_io_cost` (4 KiB O_DIRECT reads at QD32, virtio
//! disk, Linux 6.18, four runs each): 2.7–3.3 µs of kernel CPU per I/O against 3.1–4.6 µs with
//! IPIs, for 0.05–0.12 instead of 0.03–0.07 syscalls per I/O; page-cache hits complete inside
//! the submitting enter and cost the same (~750 ns) either way. `DEFER_TASKRUN` is not used: it
//! needs `SINGLE_ISSUER`, and a queue pair is `Send`, free to be created on one thread and polled
//! on another.
//!
//! IOPOLL rings only take reads and writes; flush, write-zeroes and trim then travel on a small
//! second, interrupt-driven ring of the same queue pair.
//!
//! Layout: `options` is the URI, `backing` the file or device behind it, `setup` how rings are
//! built and what the kernel supports, `namespace` opening and queue pair creation, `ring` one
//! io_uring instance, `slab` the commands a queue pair holds, `fixed` registered buffers, `sqe`
//! commands into SQEs and CQEs into statuses, and `queue_pair` the I/O path.

mod backing;
mod fixed;
mod namespace;
mod options;
mod queue_pair;
mod ring;
mod setup;
mod slab;
mod sqe;
#[cfg(test)]
mod tests;

pub(crate) use self::namespace::UringNamespace;
