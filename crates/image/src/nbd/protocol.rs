//! The NBD wire format, server side: the fixed newstyle handshake, options and their replies,
//! transmission requests and simple replies (the NBD protocol document, "Newstyle negotiation"
//! and "Transmission"). Numbers are big-endian on the wire.

// ---- magics ------------------------------------------------------------------------------

/// "NBDMAGIC": the first eight bytes the server sends, in every handshake style.
pub const INIT_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": follows [`INIT_MAGIC`] in the newstyle greeting, and starts every option the
/// client sends during negotiation.
pub const OPTION_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Starts every reply the server sends to an option (then the option, the reply type, the
/// length of the data, the data).
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Starts every transmission request the client sends (NBD_REQUEST_MAGIC).
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Starts every simple reply the server sends in transmission (NBD_SIMPLE_REPLY_MAGIC).
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

// ---- handshake flags ----------------------------------------------------------------------

/// Handshake flag (server, 16 bits after the greeting's magics): the server speaks fixed
/// newstyle, answering options it does not know with an error instead of closing
/// (NBD_FLAG_FIXED_NEWSTYLE).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag (server): the server can leave out the 124 zero bytes that pad the reply to
/// NBD_OPT_EXPORT_NAME, if the client says so with [`CLIENT_NO_ZEROES`] (NBD_FLAG_NO_ZEROES).
pub const FLAG_NO_ZEROES: u16 = 2;
/// Client flag (32 bits, the client's answer to the greeting): the client speaks fixed
/// newstyle (NBD_FLAG_C_FIXED_NEWSTYLE); this server refuses clients without it.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1;
/// Client flag: leave out the 124 zero bytes after the NBD_OPT_EXPORT_NAME reply
/// (NBD_FLAG_C_NO_ZEROES).
pub const CLIENT_NO_ZEROES: u32 = 2;

// ---- options ------------------------------------------------------------------------------

/// NBD_OPT_EXPORT_NAME: choose an export by name and go straight to transmission. The old way:
/// it has no error reply, so an unknown name can only close the connection.
pub const OPT_EXPORT_NAME: u32 = 1;
/// NBD_OPT_ABORT: the client ends negotiation; the server acknowledges and closes.
pub const OPT_ABORT: u32 = 2;
/// NBD_OPT_LIST: list the exports, one [`REP_SERVER`] reply each, then [`REP_ACK`].
pub const OPT_LIST: u32 = 3;
/// NBD_OPT_INFO: describe an export ([`REP_INFO`] replies, then [`REP_ACK`]) and stay in
/// negotiation.
pub const OPT_INFO: u32 = 6;
/// NBD_OPT_GO: as [`OPT_INFO`], then enter transmission on that export.
pub const OPT_GO: u32 = 7;

// ---- option replies -----------------------------------------------------------------------

/// NBD_REP_ACK: the option is done (the last reply to it).
pub const REP_ACK: u32 = 1;
/// NBD_REP_SERVER: one export, in answer to [`OPT_LIST`] (data: u32 name length, name).
pub const REP_SERVER: u32 = 2;
/// NBD_REP_INFO: one item of information about an export, in answer to [`OPT_INFO`] or
/// [`OPT_GO`] (data: a u16 information type such as [`INFO_EXPORT`], then its fields).
pub const REP_INFO: u32 = 3;
/// NBD_REP_ERR_UNSUP: the server does not know the option (error replies have bit 31 set).
pub const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
/// NBD_REP_ERR_INVALID: the option's data is malformed.
pub const REP_ERR_INVALID: u32 = (1 << 31) | 3;
/// NBD_REP_ERR_UNKNOWN: no export of that name.
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;

// ---- information types of NBD_REP_INFO ----------------------------------------------------

/// NBD_INFO_EXPORT: the export's size (u64, bytes) and transmission flags (u16); sent for
/// every [`OPT_INFO`] and [`OPT_GO`], asked for or not.
pub const INFO_EXPORT: u16 = 0;
/// NBD_INFO_BLOCK_SIZE: the minimum, preferred and maximum block sizes (three u32, bytes);
/// sent when the client asks for it.
pub const INFO_BLOCK_SIZE: u16 = 3;

// ---- transmission flags -------------------------------------------------------------------

/// NBD_FLAG_HAS_FLAGS: always set in the transmission flags (the field is valid).
pub const TFLAG_HAS_FLAGS: u16 = 1;
/// NBD_FLAG_SEND_FLUSH: the server takes [`CMD_FLUSH`] (it has a volatile write cache).
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// NBD_FLAG_SEND_FUA: the server honours [`CMD_FLAG_FUA`] on writes.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// NBD_FLAG_SEND_TRIM: the server takes [`CMD_TRIM`].
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// NBD_FLAG_SEND_WRITE_ZEROES: the server takes [`CMD_WRITE_ZEROES`].
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// NBD_FLAG_CAN_MULTI_CONN: the client may open several connections to the export: they share
/// one cache, so a flush (or FUA) on any of them covers the writes answered on all of them.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// ---- commands and command flags -----------------------------------------------------------

/// NBD_CMD_READ: read `length` bytes at `offset`; the reply carries them.
pub const CMD_READ: u16 = 0;
/// NBD_CMD_WRITE: write the `length` bytes that follow the request at `offset`.
pub const CMD_WRITE: u16 = 1;
/// NBD_CMD_DISC: the client disconnects; no reply, and no request after it.
pub const CMD_DISC: u16 = 2;
/// NBD_CMD_FLUSH: answer once every write answered before it is durable.
pub const CMD_FLUSH: u16 = 3;
/// NBD_CMD_TRIM: the client no longer needs `length` bytes at `offset` (here they read as
/// zeros afterwards).
pub const CMD_TRIM: u16 = 4;
/// NBD_CMD_WRITE_ZEROES: make `length` bytes at `offset` read as zeros, no payload sent.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// NBD_CMD_FLAG_FUA (force unit access): answer the write only once it is durable.
pub const CMD_FLAG_FUA: u16 = 1;
/// NBD_CMD_FLAG_NO_HOLE: on write-zeroes, the client asks for the zeros to be written
/// (allocated) rather than left as a hole.
pub const CMD_FLAG_NO_HOLE: u16 = 2;

// ---- error numbers on the wire (the protocol's own list, equal to Linux's) -------------------

/// NBD_EPERM: operation not permitted.
pub const EPERM: u32 = 1;
/// NBD_EIO: input/output error; also what any error without an NBD number of its own becomes.
pub const EIO: u32 = 5;
/// NBD_ENOMEM: out of memory.
pub const ENOMEM: u32 = 12;
/// NBD_EINVAL: invalid argument (a read or trim out of range, an unknown command).
pub const EINVAL: u32 = 22;
/// NBD_ENOSPC: no space left; also the answer to a write or write-zeroes past the export's
/// end, as the protocol asks.
pub const ENOSPC: u32 = 28;
/// NBD_ENOTSUP: operation not supported.
pub const ENOTSUP: u32 = 95;

/// Largest payload a request may carry or ask for, in bytes (the preferred maximum we
/// advertise in [`INFO_BLOCK_SIZE`]); a write above it ends the connection, a read above it is
/// refused with [`EINVAL`].
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// A transmission request, as the client sends it (28 bytes, big-endian, after
/// [`REQUEST_MAGIC`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Command flags ([`CMD_FLAG_FUA`], [`CMD_FLAG_NO_HOLE`]).
    pub flags: u16,
    /// The command ([`CMD_READ`], [`CMD_WRITE`], ...).
    pub kind: u16,
    /// Chosen by the client and echoed in the reply, which is how it matches replies (which
    /// may come in any order) to requests.
    pub cookie: u64,
    /// Where the command applies, in bytes from the export's start.
    pub offset: u64,
    /// Bytes the command covers (for a write, the payload that follows the request).
    pub length: u32,
}

/// Why a request header is not one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadRequest {
    /// The stream is out of step: nothing after this can be trusted.
    Magic(u32),
}

impl Request {
    /// Bytes of a request header on the wire (a write's payload follows it).
    pub const LEN: usize = 28;

    /// Reads a request header; [`BadRequest::Magic`] (with the magic found) when it does not
    /// start with [`REQUEST_MAGIC`]. Any command and flags are taken: the server judges them.
    pub fn decode(b: &[u8; Request::LEN]) -> Result<Request, BadRequest> {
        let magic = u32::from_be_bytes(b[0..4].try_into().expect("4"));
        if magic != REQUEST_MAGIC {
            return Err(BadRequest::Magic(magic));
        }
        Ok(Request {
            flags: u16::from_be_bytes(b[4..6].try_into().expect("2")),
            kind: u16::from_be_bytes(b[6..8].try_into().expect("2")),
            cookie: u64::from_be_bytes(b[8..16].try_into().expect("8")),
            offset: u64::from_be_bytes(b[16..24].try_into().expect("8")),
            length: u32::from_be_bytes(b[24..28].try_into().expect("4")),
        })
    }

    /// The request header as a client sends it.
    pub fn encode(&self) -> [u8; Request::LEN] {
        let mut b = [0u8; Request::LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// A simple reply's header: [`SIMPLE_REPLY_MAGIC`], the error (0, or one of the wire errors
/// above), the request's cookie. A read's data follows it.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// An option reply to `option`: [`OPTION_REPLY_MAGIC`], the option, the reply type `reply`
/// ([`REP_ACK`], ...), the length of `data`, then `data`.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// The export name and information requests of NBD_OPT_INFO / NBD_OPT_GO's data (u32 name
/// length, name, u16 count, count u16 information types); None when it is malformed (lengths
/// that do not add up, a name that is not UTF-8).
pub fn parse_info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(data.get(4..4usize.checked_add(len)?)?).ok()?;
    let rest = &data[4 + len..];
    let count = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let items = rest.get(2..)?;
    if items.len() != count * 2 {
        return None;
    }
    let infos = items
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some((name.to_string(), infos))
}

/// The wire error a block client gets for an image error's errno ([`ImageError::errno`]):
/// the protocol's own number where it has one, [`EIO`] for the rest.
///
/// [`ImageError::errno`]: crate::ImageError::errno
pub fn wire_error(errno: i32) -> u32 {
    match errno {
        libc::EPERM | libc::EROFS | libc::EACCES => EPERM,
        libc::ENOMEM => ENOMEM,
        libc::EINVAL => EINVAL,
        libc::ENOSPC | libc::EFBIG => ENOSPC,
        libc::ENOTSUP => ENOTSUP,
        _ => EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_magic_is_refused() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            kind: CMD_WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: 1 << 40,
            length: 4096,
        };
        assert_eq!(Request::decode(&r.encode()), Ok(r));
        let mut bad = r.encode();
        bad[0] ^= 1;
        assert!(matches!(Request::decode(&bad), Err(BadRequest::Magic(_))));
    }

    #[test]
    fn info_requests_parse_and_malformed_ones_do_not() {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"vm1");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(
            parse_info_request(&d),
            Some(("vm1".to_string(), vec![INFO_BLOCK_SIZE]))
        );
        for cut in 0..d.len() {
            assert_eq!(parse_info_request(&d[..cut]), None, "cut at {cut}");
        }
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(b"x");
        assert_eq!(parse_info_request(&huge), None);
    }
}
