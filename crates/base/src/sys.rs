//! Small OS queries the layers above need, each a thin safe wrapper over one libc call.

use std::time::Duration;

/// The CPU the calling thread is running on right now.
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments and only returns a number or -1.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// CPU time and scheduling counters of one thread (or process), as fio's `cpu` line reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuUsage {
    /// CPU time spent running user code.
    pub user: Duration,
    /// CPU time the kernel spent on the thread's (or process's) behalf.
    pub system: Duration,
    /// Voluntary plus involuntary context switches.
    pub context_switches: u64,
    /// Page faults that had to wait for I/O.
    pub major_faults: u64,
    /// Page faults served without I/O.
    pub minor_faults: u64,
}

impl CpuUsage {
    /// Usage accumulated since `earlier`.
    pub fn since(&self, earlier: &CpuUsage) -> CpuUsage {
        CpuUsage {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            context_switches: self
                .context_switches
                .saturating_sub(earlier.context_switches),
            major_faults: self.major_faults.saturating_sub(earlier.major_faults),
            minor_faults: self.minor_faults.saturating_sub(earlier.minor_faults),
        }
    }
}

/// Usage of the calling thread.
pub fn thread_cpu_usage() -> CpuUsage {
    rusage(libc::RUSAGE_THREAD)
}

fn rusage(who: libc::c_int) -> CpuUsage {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage for the call's duration.
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return CpuUsage::default();
    }
    let tv =
        |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32).saturating_mul(1000));
    CpuUsage {
        user: tv(usage.ru_utime),
        system: tv(usage.ru_stime),
        context_switches: (usage.ru_nvcsw + usage.ru_nivcsw) as u64,
        major_faults: usage.ru_majflt as u64,
        minor_faults: usage.ru_minflt as u64,
    }
}

/// Sends what the socket takes at once of `bufs` (in order, as one message), without blocking:
/// MSG_DONTWAIT applies to this call only, so the socket stays blocking for its other users.
/// How many bytes went; 0 when the send buffer is full.
pub fn send_without_blocking(
    socket: &std::net::TcpStream,
    bufs: &[std::io::IoSlice<'_>],
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: msghdr is plain old data; all-zero (no name, no control data) is a valid value.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with iovec on Unix; the kernel only reads them.
    message.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    message.msg_iovlen = bufs.len() as _;
    // SAFETY: the descriptor is open for the borrow of `socket`; `message` points at `bufs`,
    // which outlive the call and are only read. MSG_NOSIGNAL: a closed peer is an EPIPE error,
    // not a signal that kills an embedding process.
    let sent = unsafe {
        libc::sendmsg(
            socket.as_raw_fd(),
            &message,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if sent >= 0 {
        return Ok(sent as usize);
    }
    let error = std::io::Error::last_os_error();
    match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(0),
        _ => Err(error),
    }
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
    // SAFETY: signal() is async-signal-safe; restoring the default makes a second Ctrl-C kill
    // the process at once, for when a graceful stop is not wanted.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
}

/// Installs a SIGINT handler (once) that sets the returned flag instead of killing the process,
/// so a long run can stop its jobs and still print what it measured.
pub fn interrupt_flag() -> &'static std::sync::atomic::AtomicBool {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let handler = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only touches an atomic and calls an async-signal-safe function.
        unsafe {
            libc::signal(libc::SIGINT, handler);
        }
    });
    &INTERRUPTED
}

/// A cheap monotonic nanosecond clock for timestamping every I/O.
///
/// On x86-64 with an invariant TSC (`constant_tsc` and `nonstop_tsc` in /proc/cpuinfo) it reads
/// the TSC (~10 ns here, against ~26 ns for `Instant::now` through the vDSO), scaled by a rate
/// calibrated once per process against the monotonic clock, as fio's `clocksource=cpu` and SPDK's
/// `spdk_get_ticks` do. Elsewhere it falls back to `Instant`. Readings are only compared with
/// readings from the same thread, so TSC skew between cores cannot matter.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: std::time::Instant,
    tsc: Option<TscScale>,
}

#[derive(Clone, Copy, Debug)]
struct TscScale {
    base_ticks: u64,
    /// Nanoseconds per tick in 32.32 fixed point.
    ns_per_tick_fp: u64,
}

impl Clock {
    /// A clock whose zero is now.
    pub fn start() -> Clock {
        let base = std::time::Instant::now();
        let tsc = tsc_ns_per_tick_fp().map(|ns_per_tick_fp| TscScale {
            base_ticks: read_tsc(),
            ns_per_tick_fp,
        });
        Clock { base, tsc }
    }

    /// Nanoseconds since `start`.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        match self.tsc {
            Some(scale) => {
                let ticks = read_tsc().wrapping_sub(scale.base_ticks);
                ((ticks as u128 * scale.ns_per_tick_fp as u128) >> 32) as u64
            }
            None => self.base.elapsed().as_nanos() as u64,
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn read_tsc() -> u64 {
    // SAFETY: RDTSC is available on every x86-64 CPU and only reads a counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn read_tsc() -> u64 {
    0
}

/// The TSC rate, measured once per process over 20 ms; None when the TSC is not invariant.
fn tsc_ns_per_tick_fp() -> Option<u64> {
    static RATE: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *RATE.get_or_init(|| {
        if !cfg!(target_arch = "x86_64") {
            return None;
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        let flags = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
        let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
        if !(has("constant_tsc") && has("nonstop_tsc")) {
            return None;
        }
        let (t0, c0) = (std::time::Instant::now(), read_tsc());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (ns, ticks) = (t0.elapsed().as_nanos() as u64, read_tsc().wrapping_sub(c0));
        if ticks == 0 || ns == 0 {
            return None;
        }
        Some(((ns as u128) << 32).checked_div(ticks as u128)? as u64)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn thread_usage_grows_with_work() {
        let before = super::thread_cpu_usage();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let used = super::thread_cpu_usage().since(&before);
        assert!(used.user + used.system > std::time::Duration::ZERO);
        assert!(super::current_cpu().is_some());
    }

    #[test]
    fn clock_tracks_the_monotonic_clock() {
        let clock = super::Clock::start();
        let wall = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (ours, theirs) = (clock.now_ns() as f64, wall.elapsed().as_nanos() as f64);
        assert!(
            (ours - theirs).abs() / theirs < 0.02,
            "clock {ours} ns vs monotonic {theirs} ns"
        );
        let a = clock.now_ns();
        assert!(clock.now_ns() >= a);
    }
}
