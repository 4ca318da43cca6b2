//! A small NBD client written from the protocol document, for the tests: the fixed newstyle
//! handshake, options, and simple requests one at a time.

use std::io::{Read, Write};
use std::net::TcpStream;

use bluepoll::nbd::protocol::*;

pub struct Client {
    pub s: TcpStream,
    pub cookie: u64,
}

pub fn u32_of(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().unwrap())
}

impl Client {
    /// Greets and agrees on fixed newstyle with no zeroes.
    pub fn connect(addr: std::net::SocketAddr) -> Client {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        assert_eq!(&greeting[8..16], b"IHAVEOPT");
        let flags = u16::from_be_bytes([greeting[16], greeting[17]]);
        assert_eq!(flags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        s.write_all(&(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES).to_be_bytes())
            .unwrap();
        Client { s, cookie: 0 }
    }

    pub fn option(&mut self, option: u32, data: &[u8]) {
        let mut b = OPTION_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).unwrap();
    }

    /// One option reply: (reply type, data).
    pub fn reply(&mut self, option: u32) -> (u32, Vec<u8>) {
        let mut head = [0u8; 20];
        self.s.read_exact(&mut head).unwrap();
        assert_eq!(
            u64::from_be_bytes(head[..8].try_into().unwrap()),
            OPTION_REPLY_MAGIC
        );
        assert_eq!(u32_of(&head[8..12]), option);
        let mut data = vec![0u8; u32_of(&head[16..20]) as usize];
        self.s.read_exact(&mut data).unwrap();
        (u32_of(&head[12..16]), data)
    }

    pub fn info_request(name: &str) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        d
    }

    /// NBD_OPT_GO; returns the export's size.
    pub fn go(&mut self, name: &str) -> u64 {
        self.option(OPT_GO, &Client::info_request(name));
        let mut size = None;
        loop {
            let (kind, data) = self.reply(OPT_GO);
            match kind {
                REP_INFO if u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT => {
                    size = Some(u64::from_be_bytes(data[2..10].try_into().unwrap()));
                    let flags = u16::from_be_bytes([data[10], data[11]]);
                    assert_ne!(flags & TFLAG_SEND_TRIM, 0);
                }
                REP_INFO => {}
                REP_ACK => return size.expect("an export info before the ack"),
                other => panic!(
                    "GO {name}: reply {other:#x}: {}",
                    String::from_utf8_lossy(&data)
                ),
            }
        }
    }

    /// Sends a request; returns (error, data of a read).
    pub fn request(
        &mut self,
        kind: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> (u32, Vec<u8>) {
        self.cookie += 1;
        let r = Request {
            flags: if kind == CMD_WRITE { CMD_FLAG_FUA } else { 0 },
            kind,
            cookie: self.cookie,
            offset,
            length,
        };
        self.s.write_all(&r.encode()).unwrap();
        self.s.write_all(payload).unwrap();
        let mut head = [0u8; 16];
        self.s.read_exact(&mut head).unwrap();
        assert_eq!(u32_of(&head[..4]), SIMPLE_REPLY_MAGIC);
        assert_eq!(
            u64::from_be_bytes(head[8..16].try_into().unwrap()),
            self.cookie
        );
        let error = u32_of(&head[4..8]);
        let mut data = Vec::new();
        if error == 0 && kind == CMD_READ {
            data = vec![0u8; length as usize];
            self.s.read_exact(&mut data).unwrap();
        }
        (error, data)
    }

    pub fn request_disconnect(&mut self) {
        let r = Request {
            flags: 0,
            kind: CMD_DISC,
            cookie: 0,
            offset: 0,
            length: 0,
        };
        self.s.write_all(&r.encode()).unwrap();
    }

    /// Sends a request without waiting for its reply; returns its cookie.
    pub fn send(&mut self, flags: u16, kind: u16, offset: u64, length: u32, payload: &[u8]) -> u64 {
        self.cookie += 1;
        let r = Request {
            flags,
            kind,
            cookie: self.cookie,
            offset,
            length,
        };
        let mut bytes = r.encode().to_vec();
        bytes.extend_from_slice(payload);
        self.s.write_all(&bytes).unwrap();
        self.cookie
    }

    /// The next reply: (cookie, error, data), reading `read_len(cookie)` bytes of data when it
    /// answers a read without error.
    pub fn receive(&mut self, read_len: impl Fn(u64) -> Option<u32>) -> (u64, u32, Vec<u8>) {
        let mut head = [0u8; 16];
        self.s.read_exact(&mut head).unwrap();
        assert_eq!(u32_of(&head[..4]), SIMPLE_REPLY_MAGIC);
        let cookie = u64::from_be_bytes(head[8..16].try_into().unwrap());
        let error = u32_of(&head[4..8]);
        let mut data = Vec::new();
        if error == 0
            && let Some(len) = read_len(cookie)
        {
            data = vec![0u8; len as usize];
            self.s.read_exact(&mut data).unwrap();
        }
        (cookie, error, data)
    }
}
