//! Per-core reactors: one pinned, run-to-completion loop per configured CPU.
//!
//! A reactor owns its pollers, timers and whatever they own (queue pairs, DMA pools, shards);
//! nothing it owns is shared with other threads. Each loop iteration drains the reactor's
//! mailboxes, runs every poller once, then fires due timers. Pollers never block: they submit to
//! queue pairs and poll them, doing whatever work is ready.
//!
//! Reactors talk only through bounded lock-free queues (crossbeam `ArrayQueue`): one per ordered
//! pair of reactors, plus one inbox per reactor for threads that are not reactors. A full queue
//! is backpressure: the message comes back to the sender.
//!
//! When a loop iteration finds no work, the reactor spins for `IdlePolicy::spin`, then yields for
//! as long again, then parks with exponential backoff up to `IdlePolicy::max_sleep` (never past
//! its next timer). A sender that finds the receiver parked unparks it, so messages never wait
//! for a backoff to expire.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod timer;

use std::collections::BinaryHeap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use bluepoll_base::sys::Clock;
use timer::{Timer, TimerKind};

/// Work sent to a reactor: runs once on that reactor's thread.
pub type Message = Box<dyn FnOnce(&mut Context<'_>) + Send>;

/// What a poller reports after one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Found nothing to do.
    Idle,
    /// Did some work; call again soon.
    Busy,
    /// Finished; drop this poller.
    Done,
}

/// Something the reactor calls on every loop iteration.
pub trait Poller {
    /// Does whatever work is ready without blocking, on the reactor's thread, once per loop
    /// iteration; [`Poll::Done`] drops the poller.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll;
}

impl<F: FnMut(&mut Context<'_>) -> Poll> Poller for F {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll {
        self(cx)
    }
}

/// What a periodic timer's callback wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerAction {
    /// Fire again at the next multiple of the period after the first deadline (periods
    /// missed in a stall are skipped, not made up).
    Continue,
    /// Fire no more: the timer is dropped.
    Cancel,
}

/// How a reactor waits when it has nothing to do.
#[derive(Clone, Copy, Debug)]
pub struct IdlePolicy {
    /// Keep spinning this long after the last useful iteration (lowest latency, burns the core).
    pub spin: Duration,
    /// Longest single sleep once spinning and yielding have not found work.
    pub max_sleep: Duration,
}

impl Default for IdlePolicy {
    fn default() -> Self {
        IdlePolicy {
            spin: Duration::from_micros(200),
            max_sleep: Duration::from_millis(1),
        }
    }
}

/// What [`Reactors::start`] starts: which CPUs, how reactors wait when idle, mailbox sizes.
#[derive(Clone, Debug)]
pub struct ReactorConfig {
    /// One reactor per entry, pinned to that CPU.
    pub cpus: Vec<usize>,
    /// How each reactor waits when it finds no work.
    pub idle: IdlePolicy,
    /// Capacity of each mailbox queue.
    pub mailbox_capacity: usize,
    /// Pin each reactor thread to its CPU (tests on shared machines may turn this off).
    pub pin: bool,
}

impl ReactorConfig {
    /// One pinned reactor per CPU in `cpus`, the default idle policy, mailboxes of 1024
    /// messages.
    pub fn new(cpus: Vec<usize>) -> ReactorConfig {
        ReactorConfig {
            cpus,
            idle: IdlePolicy::default(),
            mailbox_capacity: 1024,
            pin: true,
        }
    }
}

/// Why reactors could not start, or a message could not be sent to one.
#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    /// `ReactorConfig::cpus` is empty.
    #[error("no cpus given for reactors")]
    NoCpus,
    /// A CPU appears twice in `ReactorConfig::cpus`.
    #[error("cpu {cpu} is listed twice")]
    DuplicateCpu {
        /// The CPU listed twice.
        cpu: usize,
    },
    /// With pinning on, a CPU outside this process's affinity mask.
    #[error("cpu {cpu} is not available to this process (available: {available})")]
    CpuUnavailable {
        /// The first such CPU in `ReactorConfig::cpus`.
        cpu: usize,
        /// The CPUs the process may run on, comma-separated.
        available: String,
    },
    /// Pinning a reactor thread to its CPU failed; the reactors already started are stopped.
    #[error("could not pin a reactor thread to cpu {cpu}")]
    PinFailed {
        /// The CPU.
        cpu: usize,
    },
    /// The OS would not start a reactor thread; the reactors already started are stopped.
    #[error("could not start a reactor thread: {source}")]
    Spawn {
        /// The OS's error.
        #[source]
        source: std::io::Error,
    },
    /// A message for a reactor index that does not exist.
    #[error("reactor {index} does not exist ({count} reactors)")]
    NoSuchReactor {
        /// The index asked for.
        index: usize,
        /// How many reactors there are (indices are `0..count`).
        count: usize,
    },
    /// The inbox of reactor `index` already holds `mailbox_capacity` messages: the message was
    /// not queued (`send_boxed` hands it back).
    #[error("mailbox of reactor {index} is full")]
    MailboxFull {
        /// The reactor whose inbox is full.
        index: usize,
    },
    /// The reactors were asked to stop (or one exited while starting): nothing more is
    /// delivered.
    #[error("reactors are stopping")]
    Stopped,
}

/// Counters one reactor keeps; returned when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReactorStats {
    /// The reactor's index: its position in `ReactorConfig::cpus`.
    pub index: usize,
    /// The CPU it was configured for.
    pub cpu: usize,
    /// Loop iterations.
    pub iterations: u64,
    /// Iterations in which a poller, message or timer did work.
    pub busy_iterations: u64,
    /// Iterations that found nothing to do.
    pub idle_iterations: u64,
    /// Times the reactor parked its thread.
    pub sleeps: u64,
    /// Messages delivered to it, from other reactors and other threads.
    pub messages: u64,
    /// Timer callbacks run (each firing of a periodic timer counts).
    pub timers_fired: u64,
    /// Time spent in busy iterations, and the reactor's whole life (busy share = busy / total).
    pub busy_ns: u64,
    /// The reactor's whole life in wall-clock ns, from start to stop, time parked included.
    pub total_ns: u64,
}

impl ReactorStats {
    /// The share of its life the reactor spent in busy iterations, in 0..=1 (0 before it ran).
    pub fn busy_fraction(&self) -> f64 {
        if self.total_ns == 0 {
            0.0
        } else {
            self.busy_ns as f64 / self.total_ns as f64
        }
    }
}

/// State every reactor and every sender can reach.
struct Shared {
    count: usize,
    /// `mesh[from * count + to]`: the queue from reactor `from` to reactor `to`.
    mesh: Vec<ArrayQueue<Message>>,
    /// Inboxes for threads that are not reactors, one per reactor.
    external: Vec<ArrayQueue<Message>>,
    /// Set while a reactor is (about to be) parked; senders then unpark it.
    parked: Vec<AtomicBool>,
    threads: Vec<OnceLock<Thread>>,
    stop: AtomicBool,
}

impl Shared {
    fn wake(&self, index: usize) {
        if self.parked[index].load(Ordering::SeqCst) {
            if let Some(thread) = self.threads[index].get() {
                thread.unpark();
            }
        }
    }

    fn has_mail(&self, index: usize) -> bool {
        !self.external[index].is_empty()
            || (0..self.count).any(|from| !self.mesh[from * self.count + index].is_empty())
    }
}

/// Sends messages to a set of reactors from any thread (their inboxes for non-reactor
/// threads); cheap to clone. Sending after the reactors stopped is [`ReactorError::Stopped`].
#[derive(Clone)]
pub struct ReactorHandle {
    shared: Arc<Shared>,
}

impl ReactorHandle {
    /// How many reactors there are: indices are `0..len`.
    pub fn len(&self) -> usize {
        self.shared.count
    }

    /// Whether there are no reactors (never, for a set that started).
    pub fn is_empty(&self) -> bool {
        self.shared.count == 0
    }

    /// Queues `message` for reactor `index`; a full inbox is [`ReactorError::MailboxFull`] and
    /// the message is dropped (callers that must deliver retry with [`send_boxed`](Self::send_boxed)).
    pub fn send(
        &self,
        index: usize,
        message: impl FnOnce(&mut Context<'_>) + Send + 'static,
    ) -> Result<(), ReactorError> {
        self.send_boxed(index, Box::new(message))
            .map_err(|(error, _)| error)
    }

    /// Like [`send`](Self::send), but a message that could not be queued comes back with the
    /// reason, so the caller can try again.
    pub fn send_boxed(
        &self,
        index: usize,
        message: Message,
    ) -> Result<(), (ReactorError, Message)> {
        if index >= self.shared.count {
            let count = self.shared.count;
            return Err((ReactorError::NoSuchReactor { index, count }, message));
        }
        if self.shared.stop.load(Ordering::Relaxed) {
            return Err((ReactorError::Stopped, message));
        }
        match self.shared.external[index].push(message) {
            Ok(()) => {
                self.shared.wake(index);
                Ok(())
            }
            Err(message) => Err((ReactorError::MailboxFull { index }, message)),
        }
    }

    /// Whether the reactors were asked to stop.
    pub fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for ReactorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReactorHandle")
            .field("count", &self.shared.count)
            .finish()
    }
}

/// A running set of reactors. Dropping it stops them.
pub struct Reactors {
    shared: Arc<Shared>,
    cpus: Vec<usize>,
    handles: Vec<JoinHandle<ReactorStats>>,
}

impl Reactors {
    /// Starts one reactor per CPU in `config.cpus` and returns once all are running (and pinned).
    pub fn start(config: ReactorConfig) -> Result<Reactors, ReactorError> {
        validate_cpus(&config)?;
        let count = config.cpus.len();
        let capacity = config.mailbox_capacity.max(1);
        let shared = Arc::new(Shared {
            count,
            mesh: (0..count * count)
                .map(|_| ArrayQueue::new(capacity))
                .collect(),
            external: (0..count).map(|_| ArrayQueue::new(capacity)).collect(),
            parked: (0..count).map(|_| AtomicBool::new(false)).collect(),
            threads: (0..count).map(|_| OnceLock::new()).collect(),
            stop: AtomicBool::new(false),
        });
        let mut reactors = Reactors {
            shared: Arc::clone(&shared),
            cpus: config.cpus.clone(),
            handles: Vec::new(),
        };
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), ReactorError>>();
        for (index, &cpu) in config.cpus.iter().enumerate() {
            let shared = Arc::clone(&shared);
            let ready = ready_tx.clone();
            let (idle, pin) = (config.idle, config.pin);
            let handle = thread::Builder::new()
                .name(format!("reactor-{index}"))
                .spawn(move || {
                    if pin && !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                        let _ = ready.send(Err(ReactorError::PinFailed { cpu }));
                        return ReactorStats {
                            index,
                            cpu,
                            ..Default::default()
                        };
                    }
                    let _ = shared.threads[index].set(thread::current());
                    let _ = ready.send(Ok(()));
                    drop(ready);
                    run(index, cpu, shared, idle)
                })
                .map_err(|source| ReactorError::Spawn { source })?;
            reactors.handles.push(handle);
        }
        drop(ready_tx);
        for _ in 0..count {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e), // dropping `reactors` stops the others
                Err(_) => return Err(ReactorError::Stopped),
            }
        }
        Ok(reactors)
    }

    /// How many reactors run: indices are `0..len`.
    pub fn len(&self) -> usize {
        self.shared.count
    }

    /// Whether there are no reactors (never, for a set that started).
    pub fn is_empty(&self) -> bool {
        self.shared.count == 0
    }

    /// The CPU each reactor is pinned to, by reactor index.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// Sends work to reactor `index` from a thread that is not a reactor.
    pub fn send(
        &self,
        index: usize,
        message: impl FnOnce(&mut Context<'_>) + Send + 'static,
    ) -> Result<(), ReactorError> {
        self.handle().send(index, message)
    }

    /// A handle that sends work to these reactors from any thread, for as long as they run.
    pub fn handle(&self) -> ReactorHandle {
        ReactorHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Stops every reactor after its current iteration and returns their counters.
    pub fn shutdown(mut self) -> Vec<ReactorStats> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Vec<ReactorStats> {
        self.shared.stop.store(true, Ordering::SeqCst);
        for index in 0..self.shared.count {
            if let Some(thread) = self.shared.threads[index].get() {
                thread.unpark();
            }
        }
        self.handles
            .drain(..)
            .enumerate()
            .map(|(index, h)| {
                h.join().unwrap_or(ReactorStats {
                    index,
                    ..Default::default()
                })
            })
            .collect()
    }
}

impl Drop for Reactors {
    fn drop(&mut self) {
        if !self.handles.is_empty() {
            self.stop_and_join();
        }
    }
}

impl fmt::Debug for Reactors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reactors")
            .field("cpus", &self.cpus)
            .finish()
    }
}

fn validate_cpus(config: &ReactorConfig) -> Result<(), ReactorError> {
    if config.cpus.is_empty() {
        return Err(ReactorError::NoCpus);
    }
    for (i, cpu) in config.cpus.iter().enumerate() {
        if config.cpus[..i].contains(cpu) {
            return Err(ReactorError::DuplicateCpu { cpu: *cpu });
        }
    }
    if config.pin {
        let available: Vec<usize> = available_cpus();
        if let Some(&cpu) = config.cpus.iter().find(|c| !available.contains(c)) {
            let list = available
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",");
            return Err(ReactorError::CpuUnavailable {
                cpu,
                available: list,
            });
        }
    }
    Ok(())
}

/// CPUs this process may run on (its affinity mask).
pub fn available_cpus() -> Vec<usize> {
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_default()
}

/// A reactor's own state, apart from its pollers (so pollers can borrow it while being run).
struct Core {
    index: usize,
    cpu: usize,
    shared: Arc<Shared>,
    /// The reactor's clock and the start of this loop iteration on it (ns).
    clock: Clock,
    started: Instant,
    now_ns: u64,
    timers: BinaryHeap<Timer>,
    next_timer_seq: u64,
    new_pollers: Vec<Box<dyn Poller>>,
    stats: ReactorStats,
}

/// What pollers, timers and messages get: the reactor they run on.
pub struct Context<'a> {
    core: &'a mut Core,
}

impl Context<'_> {
    /// This reactor's index (0-based, in the order of `ReactorConfig::cpus`).
    pub fn index(&self) -> usize {
        self.core.index
    }

    /// The CPU this reactor was configured for (and pinned to, unless `ReactorConfig::pin` is
    /// off).
    pub fn cpu(&self) -> usize {
        self.core.cpu
    }

    /// How many reactors the set has: the indices [`send`](Self::send) takes are `0..count`.
    pub fn reactor_count(&self) -> usize {
        self.core.shared.count
    }

    /// The time at the start of this loop iteration: cheap, and the same for every poller.
    pub fn now(&self) -> Instant {
        self.core.started + Duration::from_nanos(self.core.now_ns)
    }

    /// [`now`](Self::now) as nanoseconds since the reactor started, on its TSC-backed clock.
    pub fn now_ns(&self) -> u64 {
        self.core.now_ns
    }

    /// Adds a poller; it runs from the next loop iteration on.
    pub fn add_poller(&mut self, poller: impl Poller + 'static) {
        self.core.new_pollers.push(Box::new(poller));
    }

    /// Runs `f` once on this reactor after `delay`.
    pub fn after(&mut self, delay: Duration, f: impl FnOnce(&mut Context<'_>) + 'static) {
        let deadline = self.core.now_ns + delay.as_nanos() as u64;
        self.push_timer(deadline, TimerKind::Once(Box::new(f)));
    }

    /// Runs `f` every `period` until it returns [`TimerAction::Cancel`].
    pub fn every(
        &mut self,
        period: Duration,
        f: impl FnMut(&mut Context<'_>) -> TimerAction + 'static,
    ) {
        let period = period.max(Duration::from_micros(1));
        let deadline = self.core.now_ns + period.as_nanos() as u64;
        self.push_timer(
            deadline,
            TimerKind::Every {
                period: period.as_nanos() as u64,
                f: Box::new(f),
            },
        );
    }

    fn push_timer(&mut self, deadline: u64, kind: TimerKind) {
        let seq = self.core.next_timer_seq;
        self.core.next_timer_seq += 1;
        self.core.timers.push(Timer {
            deadline,
            seq,
            kind,
        });
    }

    /// Sends work to reactor `to` over this reactor's queue to it; a full queue hands it back.
    pub fn send(&mut self, to: usize, message: Message) -> Result<(), Message> {
        let shared = &self.core.shared;
        if to >= shared.count {
            return Err(message);
        }
        shared.mesh[self.core.index * shared.count + to].push(message)?;
        shared.wake(to);
        Ok(())
    }

    /// Asks every reactor to stop after its current iteration.
    pub fn stop_all(&mut self) {
        self.core.shared.stop.store(true, Ordering::SeqCst);
        for index in 0..self.core.shared.count {
            self.core.shared.wake(index);
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &ReactorStats {
        &self.core.stats
    }
}

/// Most messages one mailbox delivers per iteration, so a flood cannot starve pollers.
const MAIL_BUDGET: usize = 256;

fn run(index: usize, cpu: usize, shared: Arc<Shared>, idle: IdlePolicy) -> ReactorStats {
    let started = Instant::now();
    let clock = Clock::start();
    let mut core = Core {
        index,
        cpu,
        shared,
        clock,
        started,
        now_ns: 0,
        timers: BinaryHeap::new(),
        next_timer_seq: 0,
        new_pollers: Vec::new(),
        stats: ReactorStats {
            index,
            cpu,
            ..Default::default()
        },
    };
    let mut pollers: Vec<Box<dyn Poller>> = Vec::new();
    let mut idle_since: Option<u64> = None;
    let mut backoff = Duration::from_micros(20);
    // Held for the loop's life: cloning the Arc every pass would bounce its counter between
    // all reactors' caches.
    let shared = Arc::clone(&core.shared);

    while !shared.stop.load(Ordering::Relaxed) {
        let iteration_start = core.clock.now_ns();
        core.now_ns = iteration_start;
        let mut busy = deliver_mail(&mut core, &shared);

        let mut i = 0;
        while i < pollers.len() {
            match pollers[i].poll(&mut Context { core: &mut core }) {
                Poll::Idle => i += 1,
                Poll::Busy => {
                    busy = true;
                    i += 1;
                }
                Poll::Done => {
                    // The last poller moves into slot i and is polled next; dropping the
                    // finished one here releases what it owns on this thread.
                    pollers.swap_remove(i);
                    busy = true;
                }
            }
        }
        pollers.append(&mut core.new_pollers);
        busy |= fire_timers(&mut core);

        core.stats.iterations += 1;
        let elapsed = core.clock.now_ns().saturating_sub(iteration_start);
        if busy {
            core.stats.busy_iterations += 1;
            core.stats.busy_ns += elapsed;
            idle_since = None;
            backoff = Duration::from_micros(20);
            continue;
        }
        core.stats.idle_iterations += 1;
        let since = *idle_since.get_or_insert(core.now_ns);
        let idle_for = Duration::from_nanos(core.now_ns - since);
        if idle_for < idle.spin {
            std::hint::spin_loop();
        } else if idle_for < idle.spin * 2 {
            thread::yield_now();
        } else {
            let mut sleep = backoff.min(idle.max_sleep);
            if let Some(next) = core.timers.peek() {
                sleep = sleep.min(Duration::from_nanos(
                    next.deadline.saturating_sub(core.clock.now_ns()),
                ));
            }
            core.shared.parked[index].store(true, Ordering::SeqCst);
            // Re-check after announcing we park: a sender that pushed before seeing the flag
            // would not unpark us.
            if !core.shared.has_mail(index) && !core.shared.stop.load(Ordering::SeqCst) {
                core.stats.sleeps += 1;
                thread::park_timeout(sleep);
            }
            core.shared.parked[index].store(false, Ordering::SeqCst);
            backoff = (backoff * 2).min(idle.max_sleep);
        }
    }
    // Pollers (queue pairs, buffers) are dropped here, on their own thread.
    drop(pollers);
    // Wall time, so time spent parked counts as idle.
    core.stats.total_ns = started.elapsed().as_nanos() as u64;
    core.stats
}

fn deliver_mail(core: &mut Core, shared: &Shared) -> bool {
    let mut delivered = 0;
    let me = core.index;
    let queues = (0..shared.count)
        .map(|from| &shared.mesh[from * shared.count + me])
        .chain(std::iter::once(&shared.external[me]));
    for queue in queues {
        for _ in 0..MAIL_BUDGET {
            let Some(message) = queue.pop() else { break };
            message(&mut Context { core });
            delivered += 1;
        }
    }
    core.stats.messages += delivered as u64;
    delivered > 0
}

/// Fires the timers that were due when the pass began. A timer armed by a callback (even with
/// zero delay) waits for the next iteration, so timers cannot keep the reactor from its mail and
/// pollers.
fn fire_timers(core: &mut Core) -> bool {
    let now = core.now_ns;
    let mut due = Vec::new();
    while core.timers.peek().is_some_and(|t| t.deadline <= now) {
        if let Some(timer) = core.timers.pop() {
            due.push(timer);
        }
    }
    let fired = !due.is_empty();
    for timer in due {
        core.stats.timers_fired += 1;
        match timer.kind {
            TimerKind::Once(f) => f(&mut Context { core }),
            TimerKind::Every { period, mut f } => {
                if f(&mut Context { core }) == TimerAction::Continue {
                    // Keep the original cadence (no drift), skipping periods missed in a stall
                    // instead of firing them back to back.
                    let missed = now.saturating_sub(timer.deadline) / period;
                    let deadline = timer.deadline + (missed + 1) * period;
                    let seq = core.next_timer_seq;
                    core.next_timer_seq += 1;
                    core.timers.push(Timer {
                        deadline,
                        seq,
                        kind: TimerKind::Every { period, f },
                    });
                }
            }
        }
    }
    fired
}

#[cfg(test)]
mod tests;
