//! Serves a block image over NBD from inside a program: a store on RAM devices, one 64 MiB
//! image, and the NBD server on a port of the loopback interface.
//!
//! ```sh
//! cargo run --example nbd_server             # serves, talks to itself as a client, stops
//! cargo run --example nbd_server -- --serve  # serves until Ctrl-C; try from another shell:
//!   qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' nbd://127.0.0.1:PORT/disk
//! ```
//!
//! Without `--serve` it connects to its own server with a few lines of NBD (the fixed newstyle
//! handshake, then a write, a flush, a read and a disconnect), so it runs unattended in CI.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;

use anyhow::{Result, bail, ensure};
use bluepoll::image::{self, features};
use bluepoll::nbd::NbdServer;
use bluepoll::nbd::protocol::{
    CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES, CMD_DISC, CMD_FLUSH, CMD_READ, CMD_WRITE,
    OPT_EXPORT_NAME, OPTION_MAGIC, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC,
};
use bluepoll::store::{Store, StoreConfig, StoreDevices};

fn main() -> Result<()> {
    let serve_forever = std::env::args().any(|a| a == "--serve");
    let mut config = StoreConfig::default();
    config.devices.slow = "mem:1G".into();
    config.pin = false;
    let devices = StoreDevices::open(&config.devices)?;
    Store::mkfs_on(&devices, &config)?;
    let store = Store::mount_on(devices, config)?;
    // 4 MiB objects (order 22), object map and exclusive lock on, as `bluepoll image create`.
    image::create(&store.handle(), "disk", 64 << 20, 22, features::DEFAULT)?;

    // Port 0: the kernel picks a free one. An empty list exports every image of the store.
    let server = NbdServer::bind("127.0.0.1:0", &store.handle(), &[])?;
    let addr = server.local_addr();
    println!("serving {:?} on nbd://{addr}/disk", server.exports());
    let stop = server.stopper();
    let serving = std::thread::spawn(move || server.run());

    if serve_forever {
        println!("serving until interrupted (Ctrl-C)");
        serving.join().expect("the server thread does not panic")?;
    } else {
        let result = talk_to(addr);
        stop.store(true, Ordering::Relaxed);
        serving.join().expect("the server thread does not panic")?;
        result?;
    }
    store.umount()?;
    Ok(())
}

/// A client session: write 64 KiB at 1 MiB, flush, read it back, disconnect.
fn talk_to(addr: SocketAddr) -> Result<()> {
    let mut s = TcpStream::connect(addr)?;
    // Greeting: "NBDMAGIC", "IHAVEOPT", the server's handshake flags.
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting)?;
    ensure!(&greeting[..16] == b"NBDMAGICIHAVEOPT", "not an NBD server");
    s.write_all(&(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES).to_be_bytes())?;
    // NBD_OPT_EXPORT_NAME "disk": the reply is the export's size and transmission flags.
    let name = b"disk";
    let mut option = OPTION_MAGIC.to_be_bytes().to_vec();
    option.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
    option.extend_from_slice(&(name.len() as u32).to_be_bytes());
    option.extend_from_slice(name);
    s.write_all(&option)?;
    let mut export = [0u8; 10];
    s.read_exact(&mut export)?;
    let size = u64::from_be_bytes(export[..8].try_into()?);
    println!("client: export 'disk' is {size} bytes");

    let data: Vec<u8> = (0..64 << 10).map(|i: u32| (i % 251) as u8).collect();
    request(&mut s, CMD_WRITE, 1 << 20, data.len() as u32, &data)?;
    request(&mut s, CMD_FLUSH, 0, 0, &[])?;
    let back = request(&mut s, CMD_READ, 1 << 20, data.len() as u32, &[])?;
    ensure!(back == data, "read back different bytes");
    println!("client: wrote, flushed and read back {} bytes", data.len());
    // A disconnect has no reply.
    s.write_all(&header(CMD_DISC, 0, 0, 0))?;
    Ok(())
}

/// One request with a simple reply, waited for; returns the reply's data (reads only).
fn request(
    s: &mut TcpStream,
    kind: u16,
    offset: u64,
    length: u32,
    payload: &[u8],
) -> Result<Vec<u8>> {
    let cookie = u64::from(kind) + 1;
    let mut message = header(kind, cookie, offset, length).to_vec();
    message.extend_from_slice(payload);
    s.write_all(&message)?;
    let mut reply = [0u8; 16];
    s.read_exact(&mut reply)?;
    ensure!(
        u32::from_be_bytes(reply[..4].try_into()?) == SIMPLE_REPLY_MAGIC,
        "not a simple reply"
    );
    let error = u32::from_be_bytes(reply[4..8].try_into()?);
    if error != 0 {
        bail!("request {kind} failed with NBD error {error}");
    }
    ensure!(
        u64::from_be_bytes(reply[8..16].try_into()?) == cookie,
        "reply to another request"
    );
    let mut data = vec![0u8; if kind == CMD_READ { length as usize } else { 0 }];
    s.read_exact(&mut data)?;
    Ok(data)
}

/// A request header: magic, flags, type, cookie, offset, length (all big-endian).
fn header(kind: u16, cookie: u64, offset: u64, length: u32) -> [u8; 28] {
    let mut h = [0u8; 28];
    h[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    h[6..8].copy_from_slice(&kind.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    h[16..24].copy_from_slice(&offset.to_be_bytes());
    h[24..28].copy_from_slice(&length.to_be_bytes());
    h
}
