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
    pub user: Duration,
    pub system: Duration,
    /// Voluntary plus involuntary context switches.
    pub context_switches: u64,
    pub major_faults: u64,
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
}
