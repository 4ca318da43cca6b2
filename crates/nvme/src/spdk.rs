//! `spdk:TRANSPORT_ID` — an NVMe namespace driven by SPDK's userspace NVMe driver, as Ceph's
//! NVMEDevice drives it (built with `--features spdk`; docs/devices.md, spdk/README.md).
//!
//! The URI is SPDK's transport ID syntax plus two keys of ours, separated by spaces:
//! `spdk:trtype=PCIe traddr=0000:01:00.0 ns=1 class=nvme` (`ns` defaults to 1, `class` to
//! nvme). The first open initialises SPDK's environment (hugepages, the PCI bus); a controller
//! is attached once (`spdk_nvme_connect`, which probes and attaches that one transport ID) and
//! shared by its namespaces, and detached when the last is dropped.
//!
//! Each [`crate::QueuePair`] gets an SPDK I/O queue pair of its own, used only by the
//! thread that polls it: a poll submits everything queued since the last one and then calls
//! `spdk_nvme_qpair_process_completions` on that thread — no interrupt, no helper thread.
//! Data moves through bounce buffers from SPDK's DMA allocator (`spdk_dma_zmalloc`), since our
//! own DMA pools are not registered with SPDK's memory map; the copy happens before a write is
//! submitted and after a read has completed, so our buffers are never shared with the device.
//! Completion statuses map to [`Status`] exactly as the pcie backend maps its completion queue
//! entries.
//!
//! All of SPDK's FFI is in this module; the bindings are `spdk/bindings.rs`.

use std::collections::{HashMap, VecDeque};
use std::ffi::{CString, c_void};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::command::{Completion, IoCmd, Opcode, Status};
use super::device::{
    DeviceClass, Namespace, NamespaceInfo, OwnerSlot, PollResult, QueuePairBackend, QueuePairStats,
    SupportedOps,
};
use super::dma::DMA_ALIGN;
use super::error::NvmeError;
use bluepoll_base::sync::lock;

#[allow(
    clippy::all,
    non_camel_case_types,
    non_upper_case_globals,
    dead_code,
    unsafe_op_in_unsafe_fn
)]
mod ffi {
    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/spdk/bindings.rs"));
}

/// Largest transfer of one command here (and the size of each bounce buffer).
const MAX_TRANSFER: u32 = 128 << 10;
/// Deepest queue pair: SPDK's default I/O queue size.
const MAX_DEPTH: u32 = 256;

fn spdk_error(target: &str, reason: impl Into<String>) -> NvmeError {
    NvmeError::Spdk {
        target: target.to_string(),
        reason: reason.into(),
    }
}

/// What a `spdk:` URI asks for.
struct Target {
    /// The transport ID as SPDK parses it.
    trid: String,
    ns: u32,
    class: DeviceClass,
}

fn parse(uri: &str, rest: &str) -> Result<Target, NvmeError> {
    let bad = |reason: String| NvmeError::InvalidUri {
        uri: uri.to_string(),
        reason,
    };
    let mut trid = Vec::new();
    let (mut ns, mut class) = (1u32, DeviceClass::Nvme);
    for word in rest.split_whitespace() {
        let pair = word
            .split_once(['=', ':'])
            .map(|(k, v)| (k.to_ascii_lowercase(), v));
        match pair.as_ref().map(|(k, v)| (k.as_str(), *v)) {
            Some(("ns", v)) => {
                ns = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(format!("ns={v} is not a namespace id (1 or more)")))?
            }
            Some(("class", v)) => {
                class = DeviceClass::parse(v)
                    .ok_or_else(|| bad(format!("class={v} is not one of nvme, ssd, hdd")))?
            }
            Some(_) => trid.push(word),
            None => return Err(bad(format!("'{word}' is not KEY=VALUE"))),
        }
    }
    for key in ["trtype", "traddr"] {
        if !trid.iter().any(|w| w.to_ascii_lowercase().starts_with(key)) {
            return Err(bad(format!(
                "no {key}= (e.g. spdk:trtype=PCIe traddr=0000:01:00.0)"
            )));
        }
    }
    Ok(Target {
        trid: trid.join(" "),
        ns,
        class,
    })
}

/// SPDK's environment, initialised once per process.
fn environment() -> Result<(), NvmeError> {
    static ENV: OnceLock<Result<(), String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let name = c"bluepoll";
        /// Room for a newer SPDK's longer options: its spdk_env_opts_init may clear the size
        /// it was built with, not the one we know.
        #[repr(C)]
        struct Room {
            opts: ffi::spdk_env_opts,
            spare: [u64; 32],
        }
        // SAFETY: Room is #[repr(C)] over spdk_env_opts, which bindgen generates as raw
        // pointers, integers and bools (no references, no enums, no function pointers), and
        // u64s: all-zero bytes are a valid value of every field (null, 0, false).
        let mut room: Room = unsafe { std::mem::zeroed() };
        let opts = &mut room.opts;
        opts.opts_size = std::mem::size_of::<ffi::spdk_env_opts>();
        // SAFETY: `opts` points into `room`, a local exclusively borrowed for the call, and is
        // followed by 256 spare bytes, so even an SPDK built with a larger spdk_env_opts than
        // our bindings writes inside `room`; it reads opts_size (set first) to know how much of
        // the struct we understand.
        unsafe { ffi::spdk_env_opts_init(opts) };
        opts.name = name.as_ptr();
        // SAFETY: `room.opts` was initialised by spdk_env_opts_init and is only read during the
        // call; its pointers are null (SPDK's defaults) or `name`, a static NUL-terminated C
        // string. SPDK copies what it keeps. OnceLock runs this at most once per process.
        let rc = unsafe { ffi::spdk_env_init(&room.opts) };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!(
                "spdk_env_init failed ({rc}): are hugepages reserved and the device bound to \
                 vfio-pci or uio (SPDK's scripts/setup.sh)?"
            ))
        }
    })
    .clone()
    .map_err(|reason| spdk_error("env", reason))
}

/// An attached controller; detached when the last namespace of it goes.
struct Controller {
    ptr: NonNull<ffi::spdk_nvme_ctrlr>,
    trid: String,
    /// The registry key: the parsed transport ID.
    key: String,
    /// When the admin queue was last polled (keep-alive, asynchronous events, hot removal);
    /// also serialises those polls, which SPDK requires.
    admin_polled: Mutex<std::time::Instant>,
}

/// How often some queue pair's poll also polls its controller's admin queue.
const ADMIN_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

impl Controller {
    /// Polls the admin queue if nobody has for a while (never blocks on another poller).
    fn poll_admin(&self) {
        let Ok(mut last) = self.admin_polled.try_lock() else {
            return;
        };
        if last.elapsed() < ADMIN_POLL_INTERVAL {
            return;
        }
        *last = std::time::Instant::now();
        // SAFETY: `self.ptr` came from spdk_nvme_connect and stays attached while this
        // Controller lives (it is detached only in Drop); SPDK requires admin completions to be
        // processed by one thread at a time, which the `admin_polled` mutex held here ensures.
        unsafe {
            ffi::spdk_nvme_ctrlr_process_admin_completions(self.ptr.as_ptr());
        }
    }
}

/// A C character array as text.
fn c_text(chars: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

// SAFETY: a controller handle may be used from any thread: the calls made with it here (get_ns,
// alloc/free of I/O queue pairs, detach) take SPDK's controller lock. I/O never goes through it,
// only through queue pairs, each used by one thread.
unsafe impl Send for Controller {}
// SAFETY: shared use from several threads makes only the calls above, which take SPDK's
// controller lock, and admin polling, which the `admin_polled` mutex serialises; no method gives
// out a Rust reference into SPDK's controller state.
unsafe impl Sync for Controller {}

impl Drop for Controller {
    fn drop(&mut self) {
        // Under the registry's lock: SPDK's connect and detach must not run concurrently.
        let mut table = lock(controllers());
        if table.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
            table.remove(&self.key);
        }
        // SAFETY: the handle came from spdk_nvme_connect and is detached only here. Every
        // namespace of this controller holds an Arc to it and every queue pair an Arc to its
        // namespace, so none is left to use it; the registry lock held above keeps a concurrent
        // connect from running during the detach, as SPDK requires.
        unsafe {
            ffi::spdk_nvme_detach(self.ptr.as_ptr());
        }
    }
}

fn controllers() -> &'static Mutex<HashMap<String, Weak<Controller>>> {
    static CONTROLLERS: OnceLock<Mutex<HashMap<String, Weak<Controller>>>> = OnceLock::new();
    CONTROLLERS.get_or_init(Default::default)
}

fn attach(trid: &str) -> Result<Arc<Controller>, NvmeError> {
    let mut table = lock(controllers());
    let text = CString::new(trid).map_err(|_| spdk_error(trid, "NUL byte in the transport ID"))?;
    // SAFETY: spdk_nvme_transport_id is #[repr(C)] over C chars and C integers (bindgen maps
    // its enums to c_uint), so all-zero bytes are valid: empty strings, type 0. Parse fills it.
    let mut id: ffi::spdk_nvme_transport_id = unsafe { std::mem::zeroed() };
    // SAFETY: `id` is a local exclusively borrowed for the call, which writes only inside it;
    // `text` is a CString (NUL-terminated) that outlives the call.
    let rc = unsafe { ffi::spdk_nvme_transport_id_parse(&mut id, text.as_ptr()) };
    if rc != 0 {
        return Err(spdk_error(
            trid,
            format!("SPDK does not take this transport ID ({rc})"),
        ));
    }
    // One controller per endpoint however the URI spells it (key order, `:` or `=`, case).
    let key = format!(
        "{}|{}|{}|{}",
        id.trtype,
        c_text(&id.traddr).to_ascii_lowercase(),
        c_text(&id.trsvcid),
        c_text(&id.subnqn)
    );
    if let Some(c) = table.get(&key).and_then(Weak::upgrade) {
        return Ok(c);
    }
    // SAFETY: `id` was filled by the parser and is only read during the call; null options
    // (size 0) ask for SPDK's defaults. The registry lock held here keeps connect and detach
    // from running concurrently, as SPDK requires.
    let ptr = unsafe { ffi::spdk_nvme_connect(&id, std::ptr::null(), 0) };
    let ptr = NonNull::new(ptr).ok_or_else(|| {
        spdk_error(
            trid,
            "no controller attached (wrong address, or not bound to vfio-pci/uio)",
        )
    })?;
    let c = Arc::new(Controller {
        ptr,
        trid: trid.to_string(),
        key: key.clone(),
        admin_polled: Mutex::new(std::time::Instant::now()),
    });
    table.insert(key, Arc::downgrade(&c));
    Ok(c)
}

pub(crate) struct SpdkNamespace {
    info: NamespaceInfo,
    ctrlr: Arc<Controller>,
    ns: NonNull<ffi::spdk_nvme_ns>,
    owner: OwnerSlot,
}

// SAFETY: the namespace handle is only read through SPDK's query functions, which read
// identify data fixed while the controller is attached (and `ctrlr` keeps it attached); I/O
// through it goes to a queue pair owned by one thread.
unsafe impl Send for SpdkNamespace {}
// SAFETY: shared references on several threads only pass `ns` to SPDK's read-only query
// functions and to command submission on each thread's own queue pair; nothing writes the
// namespace structure while the controller is attached.
unsafe impl Sync for SpdkNamespace {}

impl SpdkNamespace {
    pub fn open(uri: &str, rest: &str) -> Result<SpdkNamespace, NvmeError> {
        let target = parse(uri, rest)?;
        environment()?;
        let ctrlr = attach(&target.trid)?;
        // SAFETY: ctrlr.ptr is an attached controller, kept so by the Arc held here; the call
        // only looks up the namespace structure.
        let ns = unsafe { ffi::spdk_nvme_ctrlr_get_ns(ctrlr.ptr.as_ptr(), target.ns) };
        let ns = NonNull::new(ns)
            .ok_or_else(|| spdk_error(&target.trid, format!("no namespace {}", target.ns)))?;
        // SAFETY: `ns` is non-null and belongs to the controller `ctrlr` keeps attached; these
        // calls only read its identify data.
        let (active, block_size, blocks, xfer, flags) = unsafe {
            (
                ffi::spdk_nvme_ns_is_active(ns.as_ptr()),
                ffi::spdk_nvme_ns_get_sector_size(ns.as_ptr()),
                ffi::spdk_nvme_ns_get_num_sectors(ns.as_ptr()),
                ffi::spdk_nvme_ns_get_max_io_xfer_size(ns.as_ptr()),
                ffi::spdk_nvme_ns_get_flags(ns.as_ptr()),
            )
        };
        if !active {
            return Err(spdk_error(
                &target.trid,
                format!("namespace {} is not active", target.ns),
            ));
        }
        if !block_size.is_power_of_two() || block_size < 512 || block_size as usize > DMA_ALIGN {
            return Err(spdk_error(
                &target.trid,
                format!("block size {block_size} is not one this engine supports (512..=4096)"),
            ));
        }
        let flush = flags & ffi::SPDK_NVME_NS_FLUSH_SUPPORTED != 0;
        let info = NamespaceInfo {
            uri: uri.to_string(),
            model: format!("SPDK NVMe ({})", ctrlr.trid),
            serial: String::new(),
            block_size,
            capacity_blocks: blocks,
            max_transfer_bytes: xfer.clamp(block_size, MAX_TRANSFER),
            buffer_alignment: DMA_ALIGN as u32,
            max_queue_depth: MAX_DEPTH,
            class: target.class,
            ops: SupportedOps {
                flush,
                write_zeroes: flags & ffi::SPDK_NVME_NS_WRITE_ZEROES_SUPPORTED != 0,
                trim: flags & ffi::SPDK_NVME_NS_DEALLOCATE_SUPPORTED != 0,
            },
            // Whether deallocated blocks read as zeroes is in identify data (DLFEAT) this
            // backend does not read; nothing may rely on it.
            trim_reads_zeroes: false,
            // A namespace that takes Flush has a volatile write cache (VWC) to flush.
            volatile_write_cache: flush,
        };
        Ok(SpdkNamespace {
            info,
            ctrlr,
            ns,
            owner: OwnerSlot::default(),
        })
    }
}

impl Namespace for SpdkNamespace {
    fn info(&self) -> &NamespaceInfo {
        &self.info
    }

    fn create_queue_pair(
        self: Arc<Self>,
        depth: u32,
    ) -> Result<Box<dyn QueuePairBackend>, NvmeError> {
        // SAFETY: the controller is attached (self.ctrlr keeps it so); null options (size 0) ask
        // for SPDK's defaults, a queue of MAX_DEPTH entries. Allocation takes SPDK's controller
        // lock, so concurrent calls from other threads are safe.
        let qpair = unsafe {
            ffi::spdk_nvme_ctrlr_alloc_io_qpair(self.ctrlr.ptr.as_ptr(), std::ptr::null(), 0)
        };
        let qpair = NonNull::new(qpair)
            .ok_or_else(|| spdk_error(&self.ctrlr.trid, "no I/O queue pair left"))?;
        Ok(Box::new(SpdkQueuePair {
            ns: self,
            qpair,
            queued: VecDeque::with_capacity(depth as usize),
            shared: Box::into_raw(Box::new(Shared {
                done: VecDeque::with_capacity(depth as usize),
                bounce: Vec::new(),
                completed: 0,
            })),
            in_flight: 0,
        }))
    }

    fn claim(&self, owner: &str) -> Result<(), NvmeError> {
        self.owner.take(&self.info.uri, owner)
    }

    fn release_claim(&self) {
        self.owner.clear();
    }
}

/// A bounce buffer from SPDK's DMA allocator, `MAX_TRANSFER` bytes.
struct Bounce(NonNull<u8>);

impl Bounce {
    fn new() -> Option<Bounce> {
        // SAFETY: a plain allocation request with a power-of-two alignment and a null physical
        // address out-parameter (not wanted); it passes no memory of ours, and a null result
        // (no memory) becomes None.
        let p = unsafe {
            ffi::spdk_dma_zmalloc(MAX_TRANSFER as usize, DMA_ALIGN, std::ptr::null_mut())
        };
        NonNull::new(p.cast::<u8>()).map(Bounce)
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        // SAFETY: the pointer came from spdk_dma_zmalloc and is freed once, here. A Bounce is
        // dropped only from the free list (when `shared` is freed, after the SPDK queue pair),
        // which holds only buffers of completed or refused commands, so the device no longer
        // touches it.
        unsafe { ffi::spdk_dma_free(self.0.as_ptr().cast()) }
    }
}

/// What the completion callback reaches: kept in a Box so its address is stable.
struct Shared {
    done: VecDeque<Completion>,
    /// Free bounce buffers.
    bounce: Vec<Bounce>,
    /// Callbacks run since the last poll looked (what `spdk_nvme_qpair_process_completions`
    /// returns counts the pieces SPDK split a command into, not commands).
    completed: usize,
}

/// One command handed to SPDK; its pointer is the callback's argument.
struct Pending {
    cmd: IoCmd,
    bounce: Option<Bounce>,
    /// The data bytes the command moves.
    len: usize,
    shared: *mut Shared,
}

struct SpdkQueuePair {
    ns: Arc<SpdkNamespace>,
    qpair: NonNull<ffi::spdk_nvme_qpair>,
    /// Commands waiting for the next poll (the doorbell).
    queued: VecDeque<IoCmd>,
    /// From Box::into_raw; freed in Drop after the queue pair (whose callbacks use it).
    shared: *mut Shared,
    /// Commands handed to SPDK whose callbacks have not run.
    in_flight: usize,
}

// SAFETY: an SPDK queue pair may be used from any thread, one at a time; a QueuePair (not Sync)
// is used by the thread that owns it, and its callbacks run on that thread inside
// process_completions. `shared` is a heap allocation owned by the queue pair, so moving the queue
// pair between threads moves its only users along.
unsafe impl Send for SpdkQueuePair {}

/// Called by SPDK from `spdk_nvme_qpair_process_completions`, on the polling thread.
unsafe extern "C" fn on_complete(arg: *mut c_void, cpl: *const ffi::spdk_nvme_cpl) {
    // SAFETY: `arg` is the Box<Pending> leaked by `submit` for a command SPDK accepted, and SPDK
    // calls back exactly once per accepted command, so the Box is reclaimed exactly once.
    let pending = unsafe { Box::from_raw(arg.cast::<Pending>()) };
    // SAFETY: SPDK passes a valid completion for the duration of the callback; status_raw is
    // the status half-word (phase tag in bit 0), the layout the pcie backend decodes.
    let status = Status::from_cqe_status(unsafe { (*cpl).__bindgen_anon_1.status_raw });
    let Pending {
        mut cmd,
        bounce,
        len,
        shared,
    } = *pending;
    // SAFETY: `shared` is the queue pair's allocation, freed only after the SPDK queue pair
    // (whose freeing runs the last callbacks); callbacks run on the polling thread, inside
    // process_completions or free_io_qpair, when no other reference to it is live.
    let shared = unsafe { &mut *shared };
    if let Some(b) = bounce {
        if cmd.opcode == Opcode::Read
            && status.is_success()
            && let Some(buf) = cmd.buf.as_mut()
        {
            let at = cmd.buf_offset as usize;
            // SAFETY: the bounce buffer holds MAX_TRANSFER >= len bytes from spdk_dma_zmalloc,
            // and the command has completed, so the device no longer writes it: this is the
            // first time it is viewed as a slice since the read was submitted, and the slice is
            // gone before the buffer returns to the free list.
            let data = unsafe { std::slice::from_raw_parts(b.0.as_ptr(), len) };
            buf[at..at + len].copy_from_slice(data);
        }
        shared.bounce.push(b);
    }
    shared.done.push_back(cmd.complete(status));
    shared.completed += 1;
}

impl SpdkQueuePair {
    fn shared(&mut self) -> &mut Shared {
        // SAFETY: `shared` came from Box::into_raw and is freed only in Drop; callbacks (the only
        // other users) run only inside process_completions and free_io_qpair, and every borrow
        // this returns ends before those calls.
        unsafe { &mut *self.shared }
    }

    /// Hands one command to SPDK; gives it back if SPDK has no room for it now.
    fn submit(&mut self, cmd: IoCmd) -> Result<(), IoCmd> {
        let ns = self.ns.ns.as_ptr();
        let qpair = self.qpair.as_ptr();
        let len = cmd.blocks as usize * self.ns.info.block_size as usize;
        let moves_data = matches!(cmd.opcode, Opcode::Read | Opcode::Write);
        let bounce = if moves_data {
            match self.shared().bounce.pop().or_else(Bounce::new) {
                Some(b) => Some(b),
                None => return Err(cmd),
            }
        } else {
            None
        };
        if let (Some(b), Opcode::Write, Some(buf)) = (&bounce, cmd.opcode, cmd.buf.as_ref()) {
            let at = cmd.buf_offset as usize;
            // SAFETY: the bounce buffer holds MAX_TRANSFER >= len bytes (check_command keeps data
            // commands within max_transfer_bytes <= MAX_TRANSFER) and is not yet handed to SPDK,
            // so no device reads or writes it while this slice lives.
            let dst = unsafe { std::slice::from_raw_parts_mut(b.0.as_ptr(), len) };
            dst.copy_from_slice(&buf[at..at + len]);
        }
        let payload = bounce
            .as_ref()
            .map_or(std::ptr::null_mut(), |b| b.0.as_ptr().cast::<c_void>());
        let (opcode, lba, blocks) = (cmd.opcode, cmd.lba, cmd.blocks);
        // SAFETY: spdk_nvme_dsm_range is #[repr(C)] over integers (bindgen may give the
        // attributes field a union of integers instead), so all-zero bytes are valid; zero
        // attributes mean "none". Only the two fields we set are named.
        let mut range: ffi::spdk_nvme_dsm_range = unsafe { std::mem::zeroed() };
        range.length = blocks;
        range.starting_lba = lba;
        let pending = Box::into_raw(Box::new(Pending {
            cmd,
            bounce,
            len,
            shared: self.shared,
        }));
        let arg = pending.cast::<c_void>();
        let cb: ffi::spdk_nvme_cmd_cb = Some(on_complete);
        // SAFETY: ns and qpair are live (self holds the namespace, which holds the controller),
        // and this thread is the queue pair's only user. The payload is a bounce buffer from
        // spdk_dma_zmalloc of at least the command's bytes (or null for commands without data),
        // moved into `pending` so it lives until on_complete; our own DmaBuf is never given to
        // SPDK. `arg` stays valid until on_complete takes it back; `range` is a local read
        // during the call.
        let rc = unsafe {
            match opcode {
                Opcode::Read => {
                    ffi::spdk_nvme_ns_cmd_read(ns, qpair, payload, lba, blocks, cb, arg, 0)
                }
                Opcode::Write => {
                    ffi::spdk_nvme_ns_cmd_write(ns, qpair, payload, lba, blocks, cb, arg, 0)
                }
                Opcode::Flush => ffi::spdk_nvme_ns_cmd_flush(ns, qpair, cb, arg),
                Opcode::WriteZeroes => {
                    ffi::spdk_nvme_ns_cmd_write_zeroes(ns, qpair, lba, blocks, cb, arg, 0)
                }
                Opcode::Trim => ffi::spdk_nvme_ns_cmd_dataset_management(
                    ns,
                    qpair,
                    ffi::SPDK_NVME_DSM_ATTR_DEALLOCATE,
                    &range,
                    1,
                    cb,
                    arg,
                ),
            }
        };
        if rc == 0 {
            self.in_flight += 1;
            return Ok(());
        }
        // SAFETY: `pending` came from Box::into_raw above, and SPDK refused the command (non-zero
        // return), so it will never call back with `arg`: the Box is reclaimed exactly once.
        let pending = unsafe { Box::from_raw(pending) };
        let Pending { cmd, bounce, .. } = *pending;
        if let Some(b) = bounce {
            self.shared().bounce.push(b);
        }
        if rc == -libc::ENOMEM {
            return Err(cmd);
        }
        self.shared()
            .done
            .push_back(cmd.complete(Status::INTERNAL_ERROR));
        Ok(())
    }
}

impl QueuePairBackend for SpdkQueuePair {
    fn queue(&mut self, cmd: IoCmd) {
        self.queued.push_back(cmd);
    }

    fn poll(
        &mut self,
        max: usize,
        out: &mut Vec<Completion>,
        stats: &mut QueuePairStats,
    ) -> PollResult {
        let mut handed = 0;
        while let Some(cmd) = self.queued.pop_front() {
            match self.submit(cmd) {
                Ok(()) => handed += 1,
                Err(cmd) => {
                    // No room in SPDK's queue (or no DMA memory) now: retry at the next poll.
                    self.queued.push_front(cmd);
                    break;
                }
            }
        }
        if handed > 0 {
            stats.record_doorbell(handed);
        }
        if self.in_flight > 0 {
            // SAFETY: the queue pair is live (freed only in Drop) and used only by this thread;
            // 0 = reap all. The callbacks it runs borrow `shared`, which no borrow of ours
            // overlaps during the call.
            let rc = unsafe { ffi::spdk_nvme_qpair_process_completions(self.qpair.as_ptr(), 0) };
            if rc < 0 {
                return Err(Box::new(NvmeError::QueuePairFailed {
                    uri: self.ns.info.uri.clone(),
                    reason: format!("spdk_nvme_qpair_process_completions: {rc}"),
                }));
            }
            let completed = std::mem::take(&mut self.shared().completed);
            self.in_flight = self.in_flight.saturating_sub(completed);
        }
        self.ns.ctrlr.poll_admin();
        let shared = self.shared();
        let n = max.min(shared.done.len());
        out.extend(shared.done.drain(..n));
        Ok(n)
    }
}

impl Drop for SpdkQueuePair {
    fn drop(&mut self) {
        // SAFETY: the handle came from spdk_nvme_ctrlr_alloc_io_qpair and is freed once, here,
        // while the controller is still attached (self.ns holds it). Freeing aborts what is
        // still in flight, calling on_complete for each while `shared` is still alive; nothing
        // uses the handle afterwards.
        unsafe {
            ffi::spdk_nvme_ctrlr_free_io_qpair(self.qpair.as_ptr());
        }
        // SAFETY: from Box::into_raw in create_queue_pair, reclaimed once, here; the SPDK queue
        // pair is gone, so no callback can reach it any more.
        drop(unsafe { Box::from_raw(self.shared) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_split_into_transport_id_and_our_keys() {
        let t = parse("u", "trtype=PCIe traddr=0000:01:00.0 ns=2 class=ssd").unwrap();
        assert_eq!(t.trid, "trtype=PCIe traddr=0000:01:00.0");
        assert_eq!((t.ns, t.class), (2, DeviceClass::Ssd));
        assert!(parse("u", "trtype=PCIe").is_err());
        assert!(parse("u", "traddr=0000:01:00.0").is_err());
        let upper = parse("u", "trtype:PCIe traddr:0000:01:00.0 NS=3").unwrap();
        assert_eq!(upper.ns, 3);
        assert!(parse("u", "trtype=PCIe traddr=0000:01:00.0 ns=0").is_err());
        assert!(parse("u", "trtype=PCIe traddr=0000:01:00.0 junk").is_err());
    }
}
