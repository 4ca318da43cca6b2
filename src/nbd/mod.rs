//! An NBD server exporting images (DESIGN §6): the fixed newstyle handshake (NBD_OPT_GO, _INFO,
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
//! One thread per connection reads requests, and reads and writes go to the store at once,
//! answered from its callbacks by a reply thread, so the client's queue depth reaches the store
//! (whose kv-sync thread then commits many writes per sync). A request the server cannot take
//! (out of range, too long, unknown) gets an error reply and the connection goes on; a stream
//! out of step (a bad request magic) is closed.
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

use crate::image::{Image, ImageError};
use crate::store::StoreHandle;
use crate::sync::lock;
use protocol::*;

#[derive(Debug, Error)]
pub enum NbdError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("protocol: {reason}")]
    Protocol { reason: String },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> NbdError {
    move |source| NbdError::Io { what, source }
}

fn protocol(reason: impl Into<String>) -> NbdError {
    NbdError::Protocol {
        reason: reason.into(),
    }
}

/// Buffers of a connection's request reader and reply writer.
const REQUEST_BUFFER: usize = 256 << 10;
const REPLY_BUFFER: usize = 256 << 10;

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
    pub connections: AtomicU64,
    pub requests: AtomicU64,
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
            crate::image::list(store)?
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

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn exports(&self) -> Vec<String> {
        self.exports.keys().cloned().collect()
    }

    /// Set it to make `run` return (within a few milliseconds).
    pub fn stopper(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

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
                            eprintln!("bluepoll nbd: {name}: serving a lock request: {e}");
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
                            if let Err(e) = serve(stream, &exports, &stats) {
                                eprintln!("bluepoll nbd: {peer}: {e}");
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
    stats: &ServerStats,
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
    transmit(&mut s, &image, stats)
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

/// An answer on its way to the client.
struct Reply {
    cookie: u64,
    error: u32,
    data: Option<Vec<u8>>,
}

/// Requests until NBD_CMD_DISC or the client closes. Reads and writes go to the store at once
/// and are answered from its callbacks, in whatever order they finish (replies carry the
/// request's cookie), so a client's queue depth reaches the store; one thread writes all
/// replies. A write is answered once it is durable.
fn transmit(s: &mut TcpStream, image: &Mutex<Image>, stats: &ServerStats) -> Result<(), NbdError> {
    let socket = s.try_clone().map_err(io("cloning the socket"))?;
    let (tx, rx) = std::sync::mpsc::channel::<Reply>();
    let writer = std::thread::Builder::new()
        .name("nbd-replies".into())
        .spawn(move || -> Result<(), NbdError> {
            // Replies that are ready together leave in one write.
            let mut out = std::io::BufWriter::with_capacity(REPLY_BUFFER, socket);
            while let Ok(first) = rx.recv() {
                let mut next = Some(first);
                while let Some(r) = next {
                    out.write_all(&simple_reply(r.error, r.cookie))
                        .map_err(io("writing to the client"))?;
                    if let Some(data) = r.data {
                        out.write_all(&data).map_err(io("writing to the client"))?;
                    }
                    next = rx.try_recv().ok();
                }
                out.flush().map_err(io("writing to the client"))?;
            }
            Ok(())
        })
        .map_err(io("starting the reply thread"))?;
    // Requests that arrive together are read with one system call.
    let mut requests = std::io::BufReader::with_capacity(REQUEST_BUFFER, s);
    let read = read_requests(&mut requests, image, stats, &tx);
    drop(tx);
    // Every reply still owed is sent (the callbacks hold the last senders) before the end.
    let written = writer
        .join()
        .unwrap_or_else(|_| Err(protocol("the reply thread panicked")));
    read.and(written)
}

fn read_requests(
    s: &mut std::io::BufReader<&mut TcpStream>,
    image: &Mutex<Image>,
    stats: &ServerStats,
    tx: &std::sync::mpsc::Sender<Reply>,
) -> Result<(), NbdError> {
    let mut head = [0u8; Request::LEN];
    loop {
        match s.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(io("reading a request")(e)),
        }
        let r = Request::decode(&head)
            .map_err(|BadRequest::Magic(m)| protocol(format!("request magic {m:#010x}")))?;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        if r.kind == CMD_DISC {
            return Ok(());
        }
        // A write's payload follows its header whatever happens to it.
        let payload = if r.kind == CMD_WRITE {
            if r.length > MAX_PAYLOAD {
                return Err(protocol(format!("a write of {} bytes", r.length)));
            }
            let mut data = vec![0u8; r.length as usize];
            s.read_exact(&mut data)
                .map_err(io("reading from the client"))?;
            Some(data)
        } else {
            None
        };
        let reply = {
            let (tx, cookie) = (tx.clone(), r.cookie);
            // A closed reply thread means the connection is gone; nothing is left to tell.
            move |error: u32, data: Option<Vec<u8>>| {
                let _ = tx.send(Reply {
                    cookie,
                    error,
                    data,
                });
            }
        };
        let size = lock(image).info().size;
        let in_range = r
            .offset
            .checked_add(r.length as u64)
            .is_some_and(|end| end <= size);
        let queued = match r.kind {
            CMD_READ if in_range && r.length <= MAX_PAYLOAD => {
                lock(image).read_async(r.offset, r.length as u64, move |result| match result {
                    Ok(data) => reply(0, Some(data)),
                    Err(e) => reply(wire_error(e.errno()), None),
                })
            }
            CMD_WRITE if in_range && r.flags & CMD_FLAG_FUA != 0 => {
                let data = payload.unwrap_or_default();
                lock(image).write_async(r.offset, &data, move |result| match result {
                    Ok(()) => reply(0, None),
                    Err(e) => reply(wire_error(e.errno()), None),
                })
            }
            CMD_WRITE if in_range => {
                // Answered once queued; a failure surfaces at the next flush.
                let data = payload.unwrap_or_default();
                let queued = lock(image).write_async(r.offset, &data, |_| {});
                if queued.is_ok() {
                    reply(0, None);
                }
                queued
            }
            CMD_FLUSH => {
                let waiter = lock(image).flush_waiter();
                reply(if waiter.wait() { 0 } else { EIO }, None);
                Ok(())
            }
            _ => {
                // The rest (and every refusal) is answered here and now.
                let result = handle(&r, payload, image);
                if result.is_err() {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
                match result {
                    Ok(data) => reply(0, data),
                    Err(error) => reply(error, None),
                }
                Ok(())
            }
        };
        if let Err(e) = queued {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(Reply {
                cookie: r.cookie,
                error: wire_error(e.errno()),
                data: None,
            });
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
