//! Devices, namespaces and queue pairs.
//!
//! A [`Device`] is a shared handle to one namespace. Each thread that does I/O makes its own
//! [`QueuePair`] (not `Sync`): [`QueuePair::submit`] only queues a command, and
//! [`QueuePair::poll`] hands everything queued since the last poll to the device at once — one
//! doorbell write, one `io_uring_enter` — and then reaps completions. Nothing runs in the
//! background: the thread that polls is the thread that drives the device, as Ceph's NVMEDevice
//! does over SPDK.
//!
//! Every backend sees only commands that passed `check_command`: a command outside the
//! namespace, with a misaligned or short buffer, or an opcode the namespace lacks, completes with
//! the matching NVMe status at the next poll without reaching the backend.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use super::command::{Completion, IoCmd, Opcode, Status};
use super::dma::DmaPool;
use super::error::NvmeError;
use super::fault::FaultControl;
use super::uri::{SCHEMES, split_scheme};
use super::{fault, mem, null, pcie, sim, slice, uring};

/// What kind of medium a namespace is, for tier placement (WAL → nvme, DB → ssd, data → hdd).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceClass {
    /// NVMe flash, the fastest tier. The default of `mem:`, `null:`, `pcie:` and `spdk:`; what
    /// `uring:` reports when the disk behind the file is named `nvme*` in sysfs.
    Nvme,
    /// Other flash (SATA, SAS, virtio). What `uring:` reports for a disk sysfs says does not
    /// rotate, and when sysfs says nothing.
    Ssd,
    /// A rotating disk, the slowest tier. What `uring:` reports when sysfs marks the disk
    /// rotational.
    Hdd,
}

impl DeviceClass {
    /// Parses the lowercase name `class=` and `sim:` URIs use (`nvme`, `ssd` or `hdd`); `None`
    /// for anything else, including other spellings of those.
    pub fn parse(text: &str) -> Option<DeviceClass> {
        match text {
            "nvme" => Some(DeviceClass::Nvme),
            "ssd" => Some(DeviceClass::Ssd),
            "hdd" => Some(DeviceClass::Hdd),
            _ => None,
        }
    }

    /// The lowercase name [`parse`](Self::parse) accepts; also the `Display` form.
    pub fn name(self) -> &'static str {
        match self {
            DeviceClass::Nvme => "nvme",
            DeviceClass::Ssd => "ssd",
            DeviceClass::Hdd => "hdd",
        }
    }
}

impl fmt::Display for DeviceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Optional commands a namespace implements (Read and Write always are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SupportedOps {
    /// Flush: makes every write completed before it durable. A namespace without a volatile
    /// write cache may offer it as a no-op.
    pub flush: bool,
    /// Write Zeroes: sets a block range to zeroes without a data buffer.
    pub write_zeroes: bool,
    /// Trim (Dataset Management deallocate): the device may forget the blocks; whether they then
    /// read as zeroes is [`NamespaceInfo::trim_reads_zeroes`].
    pub trim: bool,
}

impl SupportedOps {
    /// Every optional command, as the RAM and null namespaces implement.
    pub const ALL: SupportedOps = SupportedOps {
        flush: true,
        write_zeroes: true,
        trim: true,
    };

    /// Whether a command with opcode `op` may be sent; a command this returns false for
    /// completes with [`Status::INVALID_OPCODE`] without reaching the backend.
    pub fn supports(&self, op: Opcode) -> bool {
        match op {
            Opcode::Read | Opcode::Write => true,
            Opcode::Flush => self.flush,
            Opcode::WriteZeroes => self.write_zeroes,
            Opcode::Trim => self.trim,
        }
    }
}

/// Facts about a namespace, fixed for its lifetime.
#[derive(Clone, Debug)]
pub struct NamespaceInfo {
    /// The URI it was opened with.
    pub uri: String,
    /// What the backend is, in a few words (model number for real controllers).
    pub model: String,
    /// The controller's serial number; empty where the backend has none.
    pub serial: String,
    /// Bytes per logical block.
    pub block_size: u32,
    /// Size of the namespace in logical blocks; LBAs run from 0 to `capacity_blocks - 1`.
    pub capacity_blocks: u64,
    /// Largest data transfer one command may carry.
    pub max_transfer_bytes: u32,
    /// Required alignment of a command's buffer address (a power of two).
    pub buffer_alignment: u32,
    /// Deepest queue pair the backend can create.
    pub max_queue_depth: u32,
    /// The tier the medium belongs to: reported by the backend or set with `class=`.
    pub class: DeviceClass,
    /// Which optional commands the namespace takes; others complete with Invalid Opcode.
    pub ops: SupportedOps,
    /// Whether a trimmed range reads back as zeroes (NVMe DLFEAT "deallocated reads zero").
    pub trim_reads_zeroes: bool,
    /// Whether completed writes can be lost at power loss until a Flush completes.
    pub volatile_write_cache: bool,
}

impl NamespaceInfo {
    /// Size of the namespace in bytes: `capacity_blocks * block_size`.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_blocks * self.block_size as u64
    }

    /// Whether the device's latencies are modelled by `sim:` rather than real
    /// ([`sim::is_simulated`]).
    pub fn is_simulated(&self) -> bool {
        sim::is_simulated(self)
    }
}

/// A backend's namespace: shared by every queue pair made from it.
pub(crate) trait Namespace: Send + Sync {
    fn info(&self) -> &NamespaceInfo;

    /// A queue pair of `depth` entries (already checked against `max_queue_depth`).
    fn create_queue_pair(
        self: Arc<Self>,
        depth: u32,
    ) -> Result<Box<dyn QueuePairBackend>, NvmeError>;

    fn fault_control(&self) -> Option<FaultControl> {
        None
    }

    /// The device a wrapper (fault, sim, slice) passes its commands to.
    fn wrapped(&self) -> Option<&Device> {
        None
    }

    /// Makes `owner` the namespace's only owner, or says who already is. Wrappers ask what
    /// they wrap; a namespace with no data to protect (null) accepts everyone.
    fn claim(&self, owner: &str) -> Result<(), NvmeError> {
        self.wrapped().map_or(Ok(()), |d| d.ns.claim(owner))
    }

    /// Ends the claim `claim` made.
    fn release_claim(&self) {
        if let Some(d) = self.wrapped() {
            d.ns.release_claim();
        }
    }
}

/// The owner of a namespace that keeps data, within this process (a file also carries an
/// advisory lock, for other processes).
#[derive(Default)]
pub(crate) struct OwnerSlot(std::sync::Mutex<Option<String>>);

impl OwnerSlot {
    pub fn take(&self, uri: &str, owner: &str) -> Result<(), NvmeError> {
        let mut slot = bluepoll_base::sync::lock(&self.0);
        if let Some(holder) = slot.as_ref() {
            return Err(NvmeError::Busy {
                uri: uri.to_string(),
                holder: format!("{holder} in this process"),
            });
        }
        *slot = Some(owner.to_string());
        Ok(())
    }

    pub fn clear(&self) {
        *bluepoll_base::sync::lock(&self.0) = None;
    }
}

/// A device's claim: while it lives, nobody else (no other claim in this process, no other
/// process through the file's advisory lock) can claim the device. Dropping it releases.
pub struct DeviceClaim {
    ns: Arc<dyn Namespace>,
}

impl Drop for DeviceClaim {
    fn drop(&mut self) {
        self.ns.release_claim();
    }
}

impl fmt::Debug for DeviceClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceClaim")
            .field("uri", &self.ns.info().uri)
            .finish()
    }
}

/// What a backend's `poll` returns. The error is boxed so the common `Ok(n)` comes back in
/// registers: a poll happens on every doorbell round, and a 50-byte result passed through memory
/// cost ~14% of the null device's per-I/O time (a store-forwarding stall on reading it back).
pub(crate) type PollResult = Result<usize, Box<NvmeError>>;

/// A backend's half of a queue pair. [`QueuePair`] does the accounting and validation around it.
pub(crate) trait QueuePairBackend: Send {
    /// Queues a valid command. The wrapper guarantees at most `depth` commands are outstanding.
    fn queue(&mut self, cmd: IoCmd);

    /// Hands everything queued to the device in one go, then moves up to `max` completions into
    /// `out`, returning how many. Counts doorbells and syscalls in `stats`.
    fn poll(
        &mut self,
        max: usize,
        out: &mut Vec<Completion>,
        stats: &mut QueuePairStats,
    ) -> PollResult;

    /// Called by a caller with nothing to do but wait for completions that are not arriving:
    /// a backend whose completions come from the kernel sleeps there until one is ready (or
    /// briefly); others just yield the CPU. Busy-polling here would keep the CPU from the
    /// kernel worker that has to finish the command when it runs on the same CPU.
    fn wait(&mut self, _stats: &mut QueuePairStats) {
        std::thread::yield_now();
    }

    /// Makes a pool's buffers cheaper to use (registered with the kernel or the IOMMU). Returns
    /// whether the backend did anything with it.
    fn register_pool(&mut self, _pool: &DmaPool) -> Result<bool, NvmeError> {
        Ok(false)
    }
}

/// A handle to an open namespace; cheap to clone and shared between threads.
#[derive(Clone)]
pub struct Device {
    ns: Arc<dyn Namespace>,
}

impl Device {
    /// Opens a device by URI: `mem:SIZE`, `null:SIZE`, `uring:PATH`, `pcie:DDDD:BB:DD.F`,
    /// `spdk:TRANSPORT_ID` (with the `spdk` feature), `fault:[OPTIONS+]URI`,
    /// `sim:CLASS[,OPTIONS]+URI`.
    /// See docs/devices.md for every parameter.
    pub fn open(uri: &str) -> Result<Device, NvmeError> {
        let (scheme, rest) = split_scheme(uri)?;
        let ns: Arc<dyn Namespace> = match scheme {
            "mem" => Arc::new(mem::MemNamespace::open(uri, rest)?),
            "null" => Arc::new(null::NullNamespace::open(uri, rest)?),
            "uring" => Arc::new(uring::UringNamespace::open(uri, rest)?),
            "pcie" => Arc::new(pcie::PcieNamespace::open(uri, rest)?),
            #[cfg(feature = "spdk")]
            "spdk" => Arc::new(super::spdk::SpdkNamespace::open(uri, rest)?),
            #[cfg(not(feature = "spdk"))]
            "spdk" => {
                return Err(NvmeError::Spdk {
                    target: rest.to_string(),
                    reason: "this build has no SPDK backend: build with `--features spdk` \
                             against an installed SPDK (spdk/README.md)"
                        .into(),
                });
            }
            "fault" => fault::open(uri, rest)?,
            "sim" => sim::open(uri, rest)?,
            other => {
                return Err(NvmeError::UnknownScheme {
                    scheme: other.to_string(),
                    uri: uri.to_string(),
                    expected: SCHEMES,
                });
            }
        };
        Ok(Device { ns })
    }

    pub(crate) fn from_namespace(ns: Arc<dyn Namespace>) -> Device {
        Device { ns }
    }

    /// Facts about the namespace, fixed from open to the last handle's drop.
    pub fn info(&self) -> &NamespaceInfo {
        self.ns.info()
    }

    /// A new queue pair for the calling thread, holding up to `depth` outstanding commands.
    /// Fails with [`NvmeError::InvalidQueueDepth`] when `depth` is 0 or above
    /// [`NamespaceInfo::max_queue_depth`], or with the backend's error when it cannot make one
    /// (a refused io_uring setup, for example, is [`NvmeError::QueuePairFailed`]).
    pub fn queue_pair(&self, depth: u32) -> Result<QueuePair, NvmeError> {
        let info = self.ns.info();
        if depth == 0 || depth > info.max_queue_depth {
            return Err(NvmeError::InvalidQueueDepth {
                uri: info.uri.clone(),
                requested: depth,
                max: info.max_queue_depth,
            });
        }
        debug_assert!(info.buffer_alignment.is_power_of_two() && info.block_size.is_power_of_two());
        let backend = Arc::clone(&self.ns).create_queue_pair(depth)?;
        Ok(QueuePair {
            backend,
            limits: Limits::of(info),
            uri: info.uri.clone(),
            depth,
            outstanding: 0,
            idle_polls: 0,
            rejected: VecDeque::new(),
            stats: QueuePairStats::default(),
        })
    }

    /// The fault injector, when this is a `fault:` device (or a wrapper or slice of one).
    pub fn fault_control(&self) -> Option<FaultControl> {
        self.ns.fault_control()
    }

    /// Claims the device for `owner` (a name shown to whoever finds it taken): a store or a
    /// filesystem claims its devices while mounted, so a second mount — from this process or,
    /// for files and block devices, any other — fails with [`NvmeError::Busy`] instead of
    /// corrupting the first one's data. Advisory: plain readers are not stopped.
    pub fn claim(&self, owner: &str) -> Result<DeviceClaim, NvmeError> {
        self.ns.claim(owner)?;
        Ok(DeviceClaim {
            ns: Arc::clone(&self.ns),
        })
    }

    /// A device whose LBAs `0..len / block_size` are bytes `offset..offset + len` of this one.
    /// `offset` and `len` must be whole blocks inside the device (else
    /// [`NvmeError::InvalidSlice`]). Its URI is `URI[OFFSET+LEN]`, a label that
    /// [`Device::open`] does not parse; every other fact but the capacity is this device's.
    pub fn slice(&self, offset: u64, len: u64) -> Result<Device, NvmeError> {
        slice::slice(self, offset, len)
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("uri", &self.info().uri)
            .finish()
    }
}

/// Counters a queue pair keeps; plain integers since a queue pair belongs to one thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueuePairStats {
    /// Commands accepted by `submit`.
    pub submitted: u64,
    /// Completions returned by `poll`.
    pub completed: u64,
    /// Completions whose status was not success.
    pub errors: u64,
    /// Calls to `poll`.
    pub polls: u64,
    /// Polls that returned at least one completion.
    pub polls_with_completions: u64,
    /// Times queued commands were handed to the device (SQ tail doorbell writes).
    pub doorbells: u64,
    /// Commands handed over by those doorbells.
    pub doorbell_commands: u64,
    /// Kernel entries made while polling (io_uring_enter); zero for pure userspace backends.
    pub syscalls: u64,
    /// Sleeps in the kernel by [`QueuePair::wait`] (not counted in `syscalls`).
    pub waits: u64,
}

impl QueuePairStats {
    /// Counts one doorbell write that handed `commands` commands to the device.
    #[inline]
    pub(crate) fn record_doorbell(&mut self, commands: usize) {
        self.doorbells += 1;
        self.doorbell_commands += commands as u64;
    }
}

/// Returned by [`QueuePair::submit`] when `depth` commands are already outstanding; hands the
/// command back untouched.
#[derive(Debug)]
pub struct QueueFull(pub IoCmd);

impl fmt::Display for QueueFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "queue full: {} command (tag {}) not queued",
            self.0.opcode, self.0.tag
        )
    }
}

impl std::error::Error for QueueFull {}

/// The namespace facts validation needs, copied so the hot path does not chase pointers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub block_size: u32,
    pub capacity_blocks: u64,
    pub max_transfer_bytes: u32,
    pub buffer_alignment: u32,
    pub ops: SupportedOps,
}

impl Limits {
    pub fn of(info: &NamespaceInfo) -> Limits {
        Limits {
            block_size: info.block_size,
            capacity_blocks: info.capacity_blocks,
            max_transfer_bytes: info.max_transfer_bytes,
            buffer_alignment: info.buffer_alignment,
            ops: info.ops,
        }
    }
}

/// Decides whether a device may see `cmd`, and if not, the NVMe status it completes with.
#[inline]
pub(crate) fn check_command(limits: &Limits, cmd: &IoCmd) -> Result<(), Status> {
    if !limits.ops.supports(cmd.opcode) {
        return Err(Status::INVALID_OPCODE);
    }
    if cmd.opcode == Opcode::Flush {
        return Ok(());
    }
    if cmd.blocks == 0 {
        return Err(Status::INVALID_FIELD);
    }
    match cmd.lba.checked_add(cmd.blocks as u64) {
        Some(end) if end <= limits.capacity_blocks => {}
        _ => return Err(Status::LBA_OUT_OF_RANGE),
    }
    if cmd.opcode.transfers_data() {
        let bytes = cmd.blocks as u64 * limits.block_size as u64;
        if bytes > limits.max_transfer_bytes as u64 {
            return Err(Status::INVALID_FIELD);
        }
        let Some(buf) = &cmd.buf else {
            return Err(Status::INVALID_FIELD);
        };
        if (cmd.buf_offset as u64).saturating_add(bytes) > buf.len() as u64 {
            return Err(Status::INVALID_FIELD);
        }
        // Alignments are powers of two; a mask avoids a division on every command.
        if (buf.addr() + cmd.buf_offset as usize) & (limits.buffer_alignment as usize - 1) != 0 {
            return Err(Status::PRP_OFFSET_INVALID);
        }
    }
    Ok(())
}

/// One thread's submission/completion queue pair on a device.
pub struct QueuePair {
    backend: Box<dyn QueuePairBackend>,
    limits: Limits,
    uri: String,
    depth: u32,
    outstanding: u32,
    /// Empty polls in a row, for `poll_waiting`.
    idle_polls: u32,
    /// Commands that failed validation, completing at the next poll.
    rejected: VecDeque<Completion>,
    stats: QueuePairStats,
}

impl QueuePair {
    /// Queues a command. It reaches the device at the next [`poll`](Self::poll).
    ///
    /// Fails only when `depth` commands are outstanding. An invalid command is accepted and
    /// completes with an error status.
    #[inline]
    pub fn submit(&mut self, cmd: IoCmd) -> Result<(), QueueFull> {
        if self.outstanding == self.depth {
            return Err(QueueFull(cmd));
        }
        self.outstanding += 1;
        self.stats.submitted += 1;
        match check_command(&self.limits, &cmd) {
            Ok(()) => self.backend.queue(cmd),
            Err(status) => self.rejected.push_back(cmd.complete(status)),
        }
        Ok(())
    }

    /// Hands every queued command to the device, then appends up to `max` completions to `out`.
    /// Returns the number appended. An error means the queue pair itself broke; completions it
    /// appended before breaking stay in `out` and are accounted (they are no longer outstanding).
    #[inline]
    pub fn poll(&mut self, max: usize, out: &mut Vec<Completion>) -> Result<usize, NvmeError> {
        self.stats.polls += 1;
        let start = out.len();
        while out.len() - start < max {
            match self.rejected.pop_front() {
                Some(c) => out.push(c),
                None => break,
            }
        }
        let rejected = out.len() - start;
        let result = self.backend.poll(max - rejected, out, &mut self.stats);
        // Account whatever reached `out`, whether or not the backend then failed.
        let reaped = out.len() - start;
        if reaped > 0 {
            self.outstanding -= reaped as u32;
            self.stats.completed += reaped as u64;
            self.stats.polls_with_completions += 1;
            self.stats.errors += out[start..]
                .iter()
                .filter(|c| !c.status.is_success())
                .count() as u64;
        }
        match result {
            Ok(_) => Ok(reaped),
            Err(e) => Err(*e),
        }
    }

    /// Polls until nothing is outstanding, appending every completion to `out`.
    pub fn drain(&mut self, out: &mut Vec<Completion>) -> Result<(), NvmeError> {
        while self.outstanding > 0 {
            self.poll_waiting(usize::MAX, out)?;
        }
        Ok(())
    }

    /// `poll` for a caller with nothing else to do but wait: after `SPIN_POLLS` polls in a row
    /// that found nothing, each further empty poll also [`wait`](Self::wait)s. Userspace devices
    /// complete within a few polls; kernel-backed ones then sleep instead of spinning.
    pub fn poll_waiting(
        &mut self,
        max: usize,
        out: &mut Vec<Completion>,
    ) -> Result<usize, NvmeError> {
        const SPIN_POLLS: u32 = 64;
        let reaped = self.poll(max, out)?;
        if reaped > 0 {
            self.idle_polls = 0;
        } else {
            self.idle_polls = self.idle_polls.saturating_add(1);
            if self.idle_polls > SPIN_POLLS {
                self.wait();
            }
        }
        Ok(reaped)
    }

    /// Runs one command to completion on an idle queue pair (tools and tests; the data path
    /// keeps many commands in flight instead).
    pub fn execute(&mut self, cmd: IoCmd) -> Result<Completion, NvmeError> {
        let uri = self.uri.clone();
        let broken = |reason: String| NvmeError::QueuePairFailed {
            uri: uri.clone(),
            reason,
        };
        if self.outstanding != 0 {
            return Err(broken(format!(
                "execute() needs an idle queue pair; {} commands are outstanding",
                self.outstanding
            )));
        }
        if self.submit(cmd).is_err() {
            return Err(broken("an idle queue pair refused a command".into()));
        }
        let mut out = Vec::with_capacity(1);
        self.drain(&mut out)?;
        out.pop()
            .ok_or_else(|| broken("the command's completion never came back".into()))
    }

    /// Waits for completions without spinning, for callers that have nothing else to do (after
    /// polls that found none): sleeps in the kernel on backends whose completions come from it
    /// (io_uring), yields elsewhere. Returns at once when nothing is outstanding.
    pub fn wait(&mut self) {
        if self.outstanding > 0 && self.rejected.is_empty() {
            self.backend.wait(&mut self.stats);
        }
    }

    /// Registers a pool's region with the device (io_uring fixed buffers, IOMMU mapping), so
    /// commands using its buffers skip per-I/O pinning or mapping. Returns whether it helped.
    pub fn register_pool(&mut self, pool: &DmaPool) -> Result<bool, NvmeError> {
        self.backend.register_pool(pool)
    }

    /// Commands submitted and not yet returned by `poll`.
    #[inline]
    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }

    /// The most commands that may be outstanding at once, as given to [`Device::queue_pair`];
    /// a [`submit`](Self::submit) beyond it returns [`QueueFull`].
    #[inline]
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Counters since the queue pair was created.
    #[inline]
    pub fn stats(&self) -> &QueuePairStats {
        &self.stats
    }
}

impl fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuePair")
            .field("uri", &self.uri)
            .field("depth", &self.depth)
            .field("outstanding", &self.outstanding)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend whose poll always fails: the queue pair broke.
    struct Broken;

    impl QueuePairBackend for Broken {
        fn queue(&mut self, _cmd: IoCmd) {}

        fn poll(
            &mut self,
            _max: usize,
            _out: &mut Vec<Completion>,
            _stats: &mut QueuePairStats,
        ) -> PollResult {
            Err(Box::new(NvmeError::QueuePairFailed {
                uri: "test:".into(),
                reason: "gone".into(),
            }))
        }
    }

    /// Regression (review finding): completions handed out before the backend failed were left
    /// counted as outstanding.
    #[test]
    fn completions_returned_before_a_backend_error_are_accounted() {
        let info = NamespaceInfo {
            uri: "test:".into(),
            model: "test".into(),
            serial: String::new(),
            block_size: 4096,
            capacity_blocks: 16,
            max_transfer_bytes: 1 << 20,
            buffer_alignment: 4,
            max_queue_depth: 8,
            class: DeviceClass::Nvme,
            ops: SupportedOps::ALL,
            trim_reads_zeroes: true,
            volatile_write_cache: false,
        };
        let mut qp = QueuePair {
            backend: Box::new(Broken),
            limits: Limits::of(&info),
            uri: info.uri.clone(),
            depth: 4,
            outstanding: 0,
            idle_polls: 0,
            rejected: VecDeque::new(),
            stats: QueuePairStats::default(),
        };
        // Out of range: rejected by validation, completes at the next poll.
        qp.submit(IoCmd::write_zeroes(100, 1, 7)).unwrap();
        let mut out = Vec::new();
        assert!(qp.poll(8, &mut out).is_err());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Status::LBA_OUT_OF_RANGE);
        assert_eq!(qp.outstanding(), 0);
        assert_eq!((qp.stats().completed, qp.stats().errors), (1, 1));
    }
}
