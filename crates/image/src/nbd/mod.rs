//! An NBD server exporting images (docs/image.md): the fixed newstyle handshake (NBD_OPT_GO, _INFO,
//! _LIST, _EXPORT_NAME, _ABORT), then read, write, flush, trim and write-zeroes with simple
//! replies.
//!
//! The export behaves as a disk with a volatile write cache, which is what NBD clients expect
//! (the server advertises flush and FUA): a write without FUA is answered once it is queued on
//! the store — every later read, on any connection, sees it — and is durable by the time a
//! later flush is answered; a write with FUA is answered once it is durable. A queued write that
//! fails makes the next flush fail with EIO. Trim and write-zeroes are answered when durable.
//! The connections of one export share its open image, and a flush on one covers the writes of
//! all (NBD_FLAG_CAN_MULTI_CONN).
//!
//! After the handshake (on a thread of its own), a connection is polled by the store reactor
//! that runs its image's shard: reads and writes that cannot block start there, and replies
//! leave from there, so a request crosses no thread between the socket and the store and the
//! client's queue depth reaches the store (whose kv-sync thread then commits many writes per
//! sync). The rest goes, in order, to the connection's thread (see `transmit`). A request the
//! server cannot take (out of range, too long, unknown) gets an error reply and the connection
//! goes on; a stream out of step (a bad request magic) is closed.
//!
//! For images with the exclusive lock, a thread per export serves the lock requests of other
//! clients of the image (hand the lock over, run a resize or snapshot) while the server owns
//! it.

pub mod protocol;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

use crate::{Image, ImageError};
use bluepoll_base::sync::lock;
use bluepoll_store::StoreHandle;
use protocol::*;

/// Why the server, or one of its connections, stopped.
#[derive(Debug, Error)]
pub enum NbdError {
    /// A socket or thread call failed: binding or accepting, reading from or writing to a
    /// client (a client that goes away mid-request ends its connection with this), starting a
    /// thread.
    #[error("{what}: {source}")]
    Io {
        /// What the server was doing, e.g. "reading from the client".
        what: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// Opening or listing the images to export failed ([`NbdServer::bind`]).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The client broke the protocol in a way that ends the connection: no fixed newstyle,
    /// an option without its magic or too long, `NBD_OPT_EXPORT_NAME` for an unknown export, a
    /// request with a bad magic, a write larger than [`protocol::MAX_PAYLOAD`]; or the store's
    /// reactor would not take the connection.
    #[error("protocol: {reason}")]
    Protocol {
        /// What the client sent, or what failed, for a person to read.
        reason: String,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> NbdError {
    move |source| NbdError::Io { what, source }
}

fn protocol(reason: impl Into<String>) -> NbdError {
    NbdError::Protocol {
        reason: reason.into(),
    }
}

/// The buffer a connection reads its requests through.
const REQUEST_BUFFER: usize = 256 << 10;

/// Longest option a client may send (names, info requests): anything longer is not one.
const MAX_OPTION: u32 = 64 << 10;

const TRANSMISSION_FLAGS: u16 = TFLAG_HAS_FLAGS
    | TFLAG_SEND_FLUSH
    | TFLAG_SEND_FUA
    | TFLAG_SEND_TRIM
    | TFLAG_SEND_WRITE_ZEROES
    | TFLAG_CAN_MULTI_CONN;

/// Counters of a server.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted since the server started.
    pub connections: AtomicU64,
    /// Transmission requests taken from clients (every command, NBD_CMD_DISC included).
    pub requests: AtomicU64,
    /// Requests answered with an error there and then: out of range, unknown commands, reads
    /// and writes the image would not queue, trims and write-zeroes that failed. A queued read
    /// or write that fails later, and a failed flush, are answered with their error but not
    /// counted here.
    pub errors: AtomicU64,
}

/// A listening server and its exports.
pub struct NbdServer {
    listener: TcpListener,
    exports: Arc<BTreeMap<String, Arc<Mutex<Image>>>>,
    stop: Arc<AtomicBool>,
    stats: Arc<ServerStats>,
}

impl NbdServer {
    /// Listens on `addr` (e.g. `127.0.0.1:10809`; port 0 picks one) and exports `names` (every
    /// image of the store when empty), each opened once and shared by its connections.
    pub fn bind(addr: &str, store: &StoreHandle, names: &[String]) -> Result<NbdServer, NbdError> {
        let names = if names.is_empty() {
            crate::list(store)?
        } else {
            names.to_vec()
        };
        let mut exports = BTreeMap::new();
        for name in names {
            let image = Image::open(store, &name)?;
            exports.insert(name, Arc::new(Mutex::new(image)));
        }
        let listener = TcpListener::bind(addr).map_err(io("listening"))?;
        Ok(NbdServer {
            listener,
            exports: Arc::new(exports),
            stop: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(ServerStats::default()),
        })
    }

    /// The address the server listens on (with the port picked, when it was bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The names of the exported images, in order: what NBD_OPT_LIST answers.
    pub fn exports(&self) -> Vec<String> {
        self.exports.keys().cloned().collect()
    }

    /// Set it to make `run` return (within a few milliseconds).
    pub fn stopper(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// The server's counters, shared: they keep counting while the server runs.
    pub fn stats(&self) -> Arc<ServerStats> {
        Arc::clone(&self.stats)
    }

    /// Accepts connections until stopped, each served on a thread of its own.
    pub fn run(&self) -> Result<(), NbdError> {
        self.listener
            .set_nonblocking(true)
            .map_err(io("listening"))?;
        let mut lock_servers = Vec::new();
        for (name, image) in self.exports.iter() {
            let Some(waiter) = lock(image).lock_waiter() else {
                continue;
            };
            let (image, stop, name) = (Arc::clone(image), Arc::clone(&self.stop), name.clone());
            let thread = std::thread::Builder::new()
                .name(format!("nbd-lock-{name}"))
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if waiter.wait(Duration::from_millis(50))
                            && let Err(e) = lock(&image).serve_lock_requests()
                        {
                            log::warn!("bluepoll nbd: {name}: serving a lock request: {e}");
                        }
                        // A request this client cannot serve (it does not own the lock) waits
                        // for the owner; do not spin on it.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
                .map_err(io("starting a lock thread"))?;
            lock_servers.push(thread);
        }
        let result = self.accept_loop();
        self.stop.store(true, Ordering::Relaxed);
        for t in lock_servers {
            let _ = t.join();
        }
        result
    }

    fn accept_loop(&self) -> Result<(), NbdError> {
        while !self.stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    self.stats.connections.fetch_add(1, Ordering::Relaxed);
                    let exports = Arc::clone(&self.exports);
                    let stats = Arc::clone(&self.stats);
                    std::thread::Builder::new()
                        .name(format!("nbd-{peer}"))
                        .spawn(move || {
                            if let Err(e) = serve(stream, &exports, stats) {
                                log::warn!("bluepoll nbd: {peer}: {e}");
                            }
                        })
                        .map_err(io("starting a connection thread"))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(io("accepting")(e)),
            }
        }
        Ok(())
    }
}

fn read_exact(s: &mut TcpStream, buf: &mut [u8]) -> Result<(), NbdError> {
    s.read_exact(buf).map_err(io("reading from the client"))
}

fn send(s: &mut TcpStream, bytes: &[u8]) -> Result<(), NbdError> {
    s.write_all(bytes).map_err(io("writing to the client"))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().expect("4 bytes"))
}

/// One connection: handshake, then requests until the client leaves.
fn serve(
    mut s: TcpStream,
    exports: &BTreeMap<String, Arc<Mutex<Image>>>,
    stats: Arc<ServerStats>,
) -> Result<(), NbdError> {
    s.set_nonblocking(false)
        .map_err(io("configuring the socket"))?;
    s.set_nodelay(true).map_err(io("configuring the socket"))?;
    let mut greeting = INIT_MAGIC.to_be_bytes().to_vec();
    greeting.extend_from_slice(&OPTION_MAGIC.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    send(&mut s, &greeting)?;
    let mut flags = [0u8; 4];
    read_exact(&mut s, &mut flags)?;
    let client = be_u32(&flags);
    if client & CLIENT_FIXED_NEWSTYLE == 0 {
        return Err(protocol("the client does not speak fixed newstyle"));
    }
    let no_zeroes = client & CLIENT_NO_ZEROES != 0;
    let Some(image) = negotiate(&mut s, exports, no_zeroes)? else {
        return Ok(());
    };
    transmit(s, image, stats)
}

/// The option haggling; the export chosen, or None when the client aborted.
fn negotiate(
    s: &mut TcpStream,
    exports: &BTreeMap<String, Arc<Mutex<Image>>>,
    no_zeroes: bool,
) -> Result<Option<Arc<Mutex<Image>>>, NbdError> {
    loop {
        let mut head = [0u8; 16];
        read_exact(s, &mut head)?;
        if u64::from_be_bytes(head[0..8].try_into().expect("8")) != OPTION_MAGIC {
            return Err(protocol("an option without its magic"));
        }
        let (option, len) = (be_u32(&head[8..12]), be_u32(&head[12..16]));
        if len > MAX_OPTION {
            return Err(protocol(format!("option {option} of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        read_exact(s, &mut data)?;
        let size_of = |image: &Arc<Mutex<Image>>| lock(image).info().size;
        match option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data);
                // This option has no error reply: an unknown name ends the connection.
                let Some(image) = exports.get(name.as_ref()) else {
                    return Err(protocol(format!("no export '{name}'")));
                };
                let mut reply = size_of(image).to_be_bytes().to_vec();
                reply.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                if !no_zeroes {
                    reply.extend_from_slice(&[0u8; 124]);
                }
                send(s, &reply)?;
                return Ok(Some(Arc::clone(image)));
            }
            OPT_ABORT => {
                send(s, &option_reply(option, REP_ACK, &[]))?;
                return Ok(None);
            }
            OPT_LIST => {
                for name in exports.keys() {
                    let mut d = (name.len() as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(name.as_bytes());
                    send(s, &option_reply(option, REP_SERVER, &d))?;
                }
                send(s, &option_reply(option, REP_ACK, &[]))?;
            }
            OPT_INFO | OPT_GO => {
                let Some((name, infos)) = parse_info_request(&data) else {
                    send(
                        s,
                        &option_reply(option, REP_ERR_INVALID, b"malformed request"),
                    )?;
                    continue;
                };
                let Some(image) = exports.get(&name) else {
                    let why = format!("no export '{name}'");
                    send(s, &option_reply(option, REP_ERR_UNKNOWN, why.as_bytes()))?;
                    continue;
                };
                let mut export = INFO_EXPORT.to_be_bytes().to_vec();
                export.extend_from_slice(&size_of(image).to_be_bytes());
                export.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                send(s, &option_reply(option, REP_INFO, &export))?;
                if infos.contains(&INFO_BLOCK_SIZE) {
                    let mut sizes = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    for n in [1u32, 4096, MAX_PAYLOAD] {
                        sizes.extend_from_slice(&n.to_be_bytes());
                    }
                    send(s, &option_reply(option, REP_INFO, &sizes))?;
                }
                send(s, &option_reply(option, REP_ACK, &[]))?;
                if option == OPT_GO {
                    return Ok(Some(Arc::clone(image)));
                }
            }
            _ => send(s, &option_reply(option, REP_ERR_UNSUP, &[]))?,
        }
    }
}

/// A connection's way back to its client. A reply is sent by whichever thread finishes the
/// request — a store reactor, for reads — straight into the socket when the socket takes it at
/// once (no hand-off, no thread to wake); when the socket's buffer is full, it and every later
/// reply wait, in order, for the connection's writer thread, which may block.
struct Replies {
    socket: TcpStream,
    state: Mutex<ReplyState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct ReplyState {
    /// Bytes the writer thread owes the client; while it writes (`writer_busy`), replies queue
    /// here rather than overtake it.
    backlog: Vec<u8>,
    writer_busy: bool,
    /// Requests accepted and not yet answered.
    owed: u64,
    /// No more requests will come (the reader has finished).
    reader_done: bool,
    /// The socket failed: the client is gone and replies are dropped.
    failed: Option<std::io::Error>,
    /// The reactor thread that polls the connection: replies finished there gather in
    /// `gathered` and leave together when its poller next runs (one system call, and one TCP
    /// push, for every reply a pass of the reactor finished).
    gatherer: Option<std::thread::ThreadId>,
    gathered: Vec<u8>,
}

/// The right to answer one request: answering consumes it, and one dropped unanswered (its
/// callback never ran) still counts the request as done, so the connection can end.
struct ReplyTicket {
    replies: Arc<Replies>,
    cookie: u64,
    answered: bool,
}

impl Replies {
    fn new(socket: TcpStream) -> Arc<Replies> {
        Arc::new(Replies {
            socket,
            state: Mutex::new(ReplyState::default()),
            changed: std::sync::Condvar::new(),
        })
    }

    fn ticket(self: &Arc<Replies>, cookie: u64) -> ReplyTicket {
        lock(&self.state).owed += 1;
        ReplyTicket {
            replies: Arc::clone(self),
            cookie,
            answered: false,
        }
    }

    fn send(&self, error: u32, cookie: u64, data: &[u8]) {
        let head = simple_reply(error, cookie);
        let mut state = lock(&self.state);
        state.owed -= 1;
        if state.failed.is_none() {
            if state
                .gatherer
                .is_some_and(|t| t == std::thread::current().id())
            {
                state.gathered.extend_from_slice(&head);
                state.gathered.extend_from_slice(data);
            } else {
                Self::send_or_queue(&self.socket, &mut state, &[&head, data]);
            }
        }
        self.wake_writer_if_needed(state);
    }

    /// Sends `parts` at once as far as the socket takes them; the rest (and everything while
    /// the writer thread has bytes queued, so nothing overtakes them) goes to the backlog.
    fn send_or_queue(socket: &TcpStream, state: &mut ReplyState, parts: &[&[u8]]) {
        let mut sent = 0;
        if !state.writer_busy {
            let bufs: Vec<std::io::IoSlice<'_>> =
                parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
            match bluepoll_base::sys::send_without_blocking(socket, &bufs) {
                Ok(n) => sent = n,
                Err(e) => {
                    state.failed = Some(e);
                    return;
                }
            }
        }
        for part in parts {
            let skip = sent.min(part.len());
            sent -= skip;
            if skip < part.len() {
                state.backlog.extend_from_slice(&part[skip..]);
                state.writer_busy = true;
            }
        }
    }

    /// The writer thread sleeps until it has bytes to write or the connection can end; waking
    /// it for every reply would cost a context switch each.
    fn wake_writer_if_needed(&self, state: std::sync::MutexGuard<'_, ReplyState>) {
        let wake = state.writer_busy || (state.reader_done && state.owed == 0);
        drop(state);
        if wake {
            self.changed.notify_all();
        }
    }

    /// Gathers the replies the calling (reactor) thread finishes from now on, until
    /// `stop_gathering`.
    fn gather_on_this_thread(&self) {
        lock(&self.state).gatherer = Some(std::thread::current().id());
    }

    /// Sends the gathered replies.
    fn send_gathered(&self) {
        let mut state = lock(&self.state);
        if state.gathered.is_empty() {
            return;
        }
        let gathered = std::mem::take(&mut state.gathered);
        if state.failed.is_none() {
            Self::send_or_queue(&self.socket, &mut state, &[&gathered]);
        }
        // Keep the buffer: the next pass gathers into it again.
        state.gathered = gathered;
        state.gathered.clear();
        self.wake_writer_if_needed(state);
    }

    fn stop_gathering(&self) {
        self.send_gathered();
        lock(&self.state).gatherer = None;
    }

    /// The writer thread: writes what the socket could not take at once, until the reader has
    /// finished and every request is answered. The socket's error, if it failed.
    fn write_backlog(&self) -> Result<(), NbdError> {
        let mut state = lock(&self.state);
        loop {
            if !state.backlog.is_empty() && state.failed.is_none() {
                let bytes = std::mem::take(&mut state.backlog);
                drop(state);
                let written = self.send_all(&bytes);
                state = lock(&self.state);
                if let Err(e) = written {
                    state.failed = Some(e);
                }
                continue;
            }
            state.writer_busy = false;
            if state.reader_done && state.owed == 0 && state.gathered.is_empty() {
                return match state.failed.take() {
                    Some(e) => Err(io("writing to the client")(e)),
                    None => Ok(()),
                };
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Sends all of `bytes`, waiting while the client does not read (the socket does not
    /// block: the reactor polls it).
    fn send_all(&self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            match bluepoll_base::sys::send_without_blocking(
                &self.socket,
                &[std::io::IoSlice::new(bytes)],
            )? {
                0 => std::thread::sleep(Duration::from_micros(100)),
                n => bytes = &bytes[n..],
            }
        }
        Ok(())
    }

    fn reader_done(&self) {
        lock(&self.state).reader_done = true;
        self.changed.notify_all();
    }
}

impl ReplyTicket {
    fn answer(mut self, error: u32, data: &[u8]) {
        self.answered = true;
        self.replies.send(error, self.cookie, data);
    }
}

impl Drop for ReplyTicket {
    fn drop(&mut self) {
        if !self.answered {
            let mut state = lock(&self.replies.state);
            state.owed -= 1;
            let last = state.reader_done && state.owed == 0;
            drop(state);
            if last {
                self.replies.changed.notify_all();
            }
        }
    }
}

/// A request and, for a write, its data.
struct Incoming {
    request: Request,
    payload: Option<Vec<u8>>,
}

/// Requests the reactor hands the connection's thread before it stops reading the socket (the
/// backpressure: a writer the store throttles stops the client).
const MAX_FORWARDED: u64 = 64;
/// Requests the reactor starts per pass.
const MAX_REQUESTS_PER_POLL: usize = 32;
/// Messages to the store (one per object a read touches, one per write) a connection may post
/// per pass: the reactor posts them to its own mailbox (1024 deep by default), which only it
/// empties, so it must never fill it. A read touching more objects goes to the connection's
/// thread.
const MAX_MESSAGES_PER_POLL: usize = 64;
/// Bytes the reactor reads from the socket per pass.
const MAX_READ_PER_POLL: usize = 1 << 20;
/// Bytes of requests a connection holds unread before it stops reading the socket (more only
/// while one write's data needs more).
const MAX_INPUT: usize = 4 << 20;

/// Requests until NBD_CMD_DISC or the client closes, read on the store reactor that runs the
/// image's shard (Seastar's way: the socket is polled by the core that serves it, so a read
/// costs no thread hop from the socket to the store and none back). Reads, and writes the image
/// can take without blocking, start there at once; everything else (flush, trim, write-zeroes,
/// writes that must wait for the lock or a store lookup, requests arriving while earlier ones
/// wait) goes, in order, to this thread, which may block. Replies leave from wherever the
/// request finishes, in whatever order (they carry the request's cookie).
fn transmit(
    s: TcpStream,
    image: Arc<Mutex<Image>>,
    stats: Arc<ServerStats>,
) -> Result<(), NbdError> {
    let replies = Replies::new(s.try_clone().map_err(io("cloning the socket"))?);
    let writer = {
        let replies = Arc::clone(&replies);
        std::thread::Builder::new()
            .name("nbd-replies".into())
            .spawn(move || replies.write_backlog())
            .map_err(io("starting the reply thread"))?
    };
    s.set_nonblocking(true)
        .map_err(io("configuring the socket"))?;
    let (slow, requests) = std::sync::mpsc::channel::<Incoming>();
    // Disconnected once the poller is gone (dropped on its reactor).
    let (alive, poller_gone) = std::sync::mpsc::channel::<()>();
    let forwarded = Arc::new(AtomicU64::new(0));
    let outcome = Arc::new(Mutex::new(None));
    let (reactors, shard) = {
        let img = lock(&image);
        (img.store().reactor_handle(), img.shard())
    };
    let poller = RequestPoller {
        socket: s,
        input: Vec::new(),
        scratch: vec![0u8; REQUEST_BUFFER],
        image: Arc::clone(&image),
        stats: Arc::clone(&stats),
        replies: Arc::clone(&replies),
        slow: Some(slow),
        forwarded: Arc::clone(&forwarded),
        outcome: Arc::clone(&outcome),
        gathering: false,
        closed: false,
        needed: 0,
        _alive: alive,
    };
    let mut message: bluepoll_reactor::Message = Box::new(move |cx| cx.add_poller(poller));
    let started = loop {
        match reactors.send_boxed(shard, message) {
            Ok(()) => break Ok(()),
            Err((bluepoll_reactor::ReactorError::MailboxFull { .. }, m)) => {
                message = m;
                std::thread::yield_now();
            }
            Err((e, _)) => {
                break Err(protocol(format!(
                    "the store's reactor {shard} took no connection: {e}"
                )));
            }
        }
    };
    // The connection's thread: what the reactor hands over, until it stops reading.
    if started.is_ok() {
        for incoming in requests {
            execute(incoming, &image, &stats, &replies);
            forwarded.fetch_sub(1, Ordering::Relaxed);
        }
    }
    // The poller lets go of the image on its reactor before this thread does (the last handle's
    // drop waits for writes only the reactor finishes).
    let _ = poller_gone.recv();
    replies.stop_gathering();
    replies.reader_done();
    // Every reply still owed is sent before the end.
    let written = writer
        .join()
        .unwrap_or_else(|_| Err(protocol("the reply thread panicked")));
    let read = match lock(&outcome).take() {
        Some(e) => Err(e),
        None => started,
    };
    read.and(written)
}

/// The reactor's side of a connection: reads requests from the socket without blocking and
/// starts them.
struct RequestPoller {
    socket: TcpStream,
    /// Bytes read and not yet taken as requests.
    input: Vec<u8>,
    scratch: Vec<u8>,
    image: Arc<Mutex<Image>>,
    stats: Arc<ServerStats>,
    replies: Arc<Replies>,
    /// To the connection's thread; None once the connection has ended.
    slow: Option<std::sync::mpsc::Sender<Incoming>>,
    forwarded: Arc<AtomicU64>,
    outcome: Arc<Mutex<Option<NbdError>>>,
    /// Whether replies finished on this reactor are gathered (from the first pass on).
    gathering: bool,
    /// The client closed its side: what it sent before is still served.
    closed: bool,
    /// Bytes the first request not yet taken needs in `input` (0: none waiting).
    needed: usize,
    /// Dropped with the poller, after `image` (fields drop in order): tells the connection's
    /// thread this handle of the image is gone.
    _alive: std::sync::mpsc::Sender<()>,
}

/// What reading the socket found.
enum Received {
    Some,
    Nothing,
    Closed,
}

impl bluepoll_reactor::Poller for RequestPoller {
    fn poll(&mut self, _cx: &mut bluepoll_reactor::Context<'_>) -> bluepoll_reactor::Poll {
        use bluepoll_reactor::Poll;
        if self.slow.is_none() {
            return Poll::Done;
        }
        if !self.gathering {
            self.replies.gather_on_this_thread();
            self.gathering = true;
        }
        // What the store finished since the last pass goes out first, in one send.
        self.replies.send_gathered();
        // Backpressure: while the connection's thread holds many requests, or much is read and
        // not taken, the socket is left alone and TCP holds the client back.
        let mut received = false;
        if !self.closed
            && self.forwarded.load(Ordering::Relaxed) < MAX_FORWARDED
            && self.input.len() < MAX_INPUT.max(self.needed)
        {
            match self.receive() {
                Ok(Received::Some) => received = true,
                Ok(Received::Nothing) => {}
                Ok(Received::Closed) => self.closed = true,
                Err(e) => return self.finish(Some(e)),
            }
        }
        let (mut started, mut taken, mut budget) = (0, 0, MAX_MESSAGES_PER_POLL);
        let mut ended = None;
        self.needed = 0;
        let image = Arc::clone(&self.image);
        while started < MAX_REQUESTS_PER_POLL
            && self.forwarded.load(Ordering::Relaxed) < MAX_FORWARDED
        {
            let rest = &self.input[taken..];
            let Some(head) = rest.first_chunk::<{ Request::LEN }>() else {
                self.needed = Request::LEN;
                break;
            };
            let r = match Request::decode(head) {
                Ok(r) => r,
                Err(BadRequest::Magic(m)) => {
                    ended = Some(Some(protocol(format!("request magic {m:#010x}"))));
                    break;
                }
            };
            // A write's data follows its header whatever happens to it.
            let mut need = Request::LEN;
            if r.kind == CMD_WRITE {
                if r.length > MAX_PAYLOAD {
                    ended = Some(Some(protocol(format!("a write of {} bytes", r.length))));
                    break;
                }
                need += r.length as usize;
            }
            if rest.len() < need {
                self.needed = need;
                break;
            }
            // Here, on the reactor, if it cannot block and the pass's message budget allows
            // (else it waits for the next pass); requests handed to the thread earlier go
            // first, so nothing overtakes them.
            let mut here = None;
            if self.forwarded.load(Ordering::Relaxed) == 0
                && matches!(r.kind, CMD_READ | CMD_WRITE)
                && let Ok(img) = image.try_lock()
            {
                match reactor_cost(&r, &img) {
                    Some(cost) if cost > budget => break,
                    Some(cost) => {
                        budget -= cost;
                        here = Some(img);
                    }
                    None => {}
                }
            }
            let payload = (r.kind == CMD_WRITE).then(|| rest[Request::LEN..need].to_vec());
            taken += need;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            if r.kind == CMD_DISC {
                ended = Some(None);
                break;
            }
            started += 1;
            let incoming = Incoming {
                request: r,
                payload,
            };
            match here {
                Some(mut img) => start_io(incoming, &mut img, &self.stats, &self.replies, true),
                None => {
                    if !self.forward(incoming) {
                        ended = Some(None);
                        break;
                    }
                }
            }
        }
        self.input.drain(..taken);
        if let Some(error) = ended {
            return self.finish(error);
        }
        if self.closed && self.needed > 0 {
            // Only a request cut short by the close (or nothing) is left.
            return self.finish(None);
        }
        if started > 0 || received || self.closed {
            Poll::Busy
        } else {
            Poll::Idle
        }
    }
}

/// What starting `r` on the reactor costs in store messages, or None when it must not start
/// there (it could block, it is out of range, or it would post too many messages).
fn reactor_cost(r: &Request, img: &Image) -> Option<usize> {
    let len = r.length as u64;
    let end = r.offset.checked_add(len)?;
    if r.length > MAX_PAYLOAD || end > img.info().size {
        return None;
    }
    let cost = match r.kind {
        CMD_READ if img.reads_without_blocking() => {
            let objects = img.objects_of(r.offset, len);
            (objects.end - objects.start) as usize
        }
        CMD_WRITE if img.writes_without_blocking(r.offset, len) => 1,
        _ => return None,
    };
    (cost <= MAX_MESSAGES_PER_POLL).then_some(cost)
}

impl RequestPoller {
    /// Appends what the socket has (up to MAX_READ_PER_POLL) to `input`.
    fn receive(&mut self) -> Result<Received, NbdError> {
        let mut got = 0;
        while got < MAX_READ_PER_POLL {
            match self.socket.read(&mut self.scratch) {
                Ok(0) => return Ok(Received::Closed),
                Ok(n) => {
                    self.input.extend_from_slice(&self.scratch[..n]);
                    got += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io("reading a request")(e)),
            }
        }
        Ok(if got > 0 {
            Received::Some
        } else {
            Received::Nothing
        })
    }

    /// Hands a request to the connection's thread; false when that thread is gone.
    fn forward(&mut self, incoming: Incoming) -> bool {
        let Some(slow) = &self.slow else {
            return false;
        };
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        if slow.send(incoming).is_err() {
            self.forwarded.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Ends the connection's reading (the thread finishes what it was handed, then ends it).
    fn finish(&mut self, error: Option<NbdError>) -> bluepoll_reactor::Poll {
        if let Some(e) = error {
            lock(&self.outcome).get_or_insert(e);
        }
        // Replies finished on this thread from now on go out as they finish; those gathered
        // go now, before the connection's thread may see the end and stop the writer.
        self.replies.stop_gathering();
        self.slow = None;
        bluepoll_reactor::Poll::Done
    }
}

/// Starts a read or a write (in range) on `img`; it is answered when it finishes — a write
/// without FUA once the store has taken it (a later failure then fails every flush).
/// `now`: on a reactor, after `reactor_cost` found it cannot block (no lock request is served).
fn start_io(
    incoming: Incoming,
    img: &mut Image,
    stats: &ServerStats,
    replies: &Arc<Replies>,
    now: bool,
) {
    let Incoming {
        request: r,
        payload,
    } = incoming;
    let ticket = replies.ticket(r.cookie);
    let queued = match r.kind {
        CMD_READ => img.read_async(r.offset, r.length as u64, move |result| match result {
            Ok(data) => ticket.answer(0, &data),
            Err(e) => ticket.answer(wire_error(e.errno()), &[]),
        }),
        _ if r.flags & CMD_FLAG_FUA != 0 => {
            let data = payload.unwrap_or_default();
            let done = move |result: Result<(), ImageError>| match result {
                Ok(()) => ticket.answer(0, &[]),
                Err(e) => ticket.answer(wire_error(e.errno()), &[]),
            };
            match now {
                true => img.write_async_now(r.offset, &data, done),
                false => img.write_async(r.offset, &data, done),
            }
        }
        _ => {
            // Answered once the store has taken it (space allocated, visible to every later
            // read): a full store refuses it here, on the request itself, with ENOSPC.
            let data = payload.unwrap_or_default();
            let accepted = move |result: Result<(), ImageError>| match result {
                Ok(()) => ticket.answer(0, &[]),
                Err(e) => ticket.answer(wire_error(e.errno()), &[]),
            };
            match now {
                true => img.write_cached_now(r.offset, &data, accepted),
                false => img.write_cached(r.offset, &data, accepted),
            }
        }
    };
    if let Err(e) = queued {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        replies.ticket(r.cookie).answer(wire_error(e.errno()), &[]);
    }
}

/// One request on the connection's thread (which may block).
fn execute(incoming: Incoming, image: &Mutex<Image>, stats: &ServerStats, replies: &Arc<Replies>) {
    let r = &incoming.request;
    let size = lock(image).info().size;
    let in_range = r
        .offset
        .checked_add(r.length as u64)
        .is_some_and(|end| end <= size);
    match r.kind {
        CMD_READ if in_range && r.length <= MAX_PAYLOAD => {
            start_io(incoming, &mut lock(image), stats, replies, false)
        }
        CMD_WRITE if in_range => start_io(incoming, &mut lock(image), stats, replies, false),
        CMD_FLUSH => {
            let waiter = {
                let mut img = lock(image);
                // Map blocks a refused write left stale go out before the flush answers.
                if let Err(e) = img.write_back_map() {
                    log::error!("bluepoll nbd: writing back the object map: {e}");
                }
                img.flush_waiter()
            };
            let ticket = replies.ticket(r.cookie);
            ticket.answer(if waiter.wait() { 0 } else { EIO }, &[]);
        }
        _ => {
            // The rest (and every refusal) is answered here and now.
            let ticket = replies.ticket(r.cookie);
            let result = handle(r, incoming.payload, image);
            if result.is_err() {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            match result {
                Ok(data) => ticket.answer(0, data.as_deref().unwrap_or_default()),
                Err(error) => ticket.answer(error, &[]),
            }
        }
    }
}

/// One request against the image: the bytes of a read, or the error number to answer.
fn handle(
    r: &Request,
    payload: Option<Vec<u8>>,
    image: &Mutex<Image>,
) -> Result<Option<Vec<u8>>, u32> {
    let mut img = lock(image);
    let size = img.info().size;
    let in_range = r
        .offset
        .checked_add(r.length as u64)
        .is_some_and(|end| end <= size);
    let failed = |e: ImageError| wire_error(e.errno());
    match r.kind {
        CMD_READ => {
            if !in_range || r.length > MAX_PAYLOAD {
                return Err(EINVAL);
            }
            img.read(r.offset, r.length as u64)
                .map(Some)
                .map_err(failed)
        }
        CMD_WRITE => {
            if !in_range {
                return Err(ENOSPC);
            }
            let data = payload.unwrap_or_default();
            img.write(r.offset, &data).map(|()| None).map_err(failed)
        }
        CMD_TRIM => {
            if !in_range {
                return Err(EINVAL);
            }
            img.discard(r.offset, r.length as u64)
                .map(|()| None)
                .map_err(failed)
        }
        CMD_WRITE_ZEROES => {
            if !in_range {
                return Err(ENOSPC);
            }
            img.write_zeroes(r.offset, r.length as u64)
                .map(|()| None)
                .map_err(failed)
        }
        _ => Err(EINVAL),
    }
}
