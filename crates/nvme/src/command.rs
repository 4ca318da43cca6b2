//! Commands a queue pair accepts and the completions it returns.
//!
//! The shapes follow NVMe: a command names an opcode, a starting LBA and a block count, and points
//! at a data buffer; its completion carries the caller's tag and an NVMe status (Status Code Type
//! plus Status Code). The buffer travels with the command and comes back with the completion, so
//! while the device owns a buffer nobody else can hold a reference to its bytes.

use std::fmt;

use super::dma::DmaBuf;

/// The I/O command set subset every backend speaks (NVM Command Set Specification 1.0, §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// NVM opcode 02h.
    Read,
    /// NVM opcode 01h.
    Write,
    /// NVM opcode 00h: makes every completed write durable.
    Flush,
    /// NVM opcode 08h: the range reads back as zeroes afterwards.
    WriteZeroes,
    /// Dataset Management (09h) with the Deallocate attribute: a hint that the range is unused.
    Trim,
}

impl Opcode {
    /// Every opcode, for code that has to cover each one (tests, per-opcode counters).
    pub const ALL: [Opcode; 5] = [
        Opcode::Read,
        Opcode::Write,
        Opcode::Flush,
        Opcode::WriteZeroes,
        Opcode::Trim,
    ];

    /// The opcode byte of the NVM command set.
    pub const fn nvme_opcode(self) -> u8 {
        match self {
            Opcode::Flush => 0x00,
            Opcode::Write => 0x01,
            Opcode::Read => 0x02,
            Opcode::WriteZeroes => 0x08,
            Opcode::Trim => 0x09,
        }
    }

    /// Whether the command moves data through its buffer.
    pub const fn transfers_data(self) -> bool {
        matches!(self, Opcode::Read | Opcode::Write)
    }

    /// Whether the command changes the namespace's contents.
    pub const fn modifies(self) -> bool {
        matches!(self, Opcode::Write | Opcode::WriteZeroes | Opcode::Trim)
    }

    /// A short lowercase name for messages and statistics (`write-zeroes`, not the spec's
    /// "Write Zeroes"); also the `Display` form.
    pub const fn name(self) -> &'static str {
        match self {
            Opcode::Read => "read",
            Opcode::Write => "write",
            Opcode::Flush => "flush",
            Opcode::WriteZeroes => "write-zeroes",
            Opcode::Trim => "trim",
        }
    }
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One command for a queue pair.
///
/// For Read and Write, the data lives in `buf[buf_offset .. buf_offset + blocks * block_size]`.
/// Flush ignores `lba` and `blocks`. WriteZeroes and Trim need no buffer; one given is handed back.
#[derive(Debug)]
pub struct IoCmd {
    /// What the command does. One the namespace does not support ([`SupportedOps`]) completes
    /// with [`Status::INVALID_OPCODE`].
    ///
    /// [`SupportedOps`]: crate::SupportedOps
    pub opcode: Opcode,
    /// First logical block. `lba + blocks` past the namespace's capacity completes with
    /// [`Status::LBA_OUT_OF_RANGE`]. Ignored by Flush.
    pub lba: u64,
    /// Number of logical blocks, not bytes; 0 completes with [`Status::INVALID_FIELD`] (except for
    /// Flush, which ignores it). A Read or Write may move at most `max_transfer_bytes`; WriteZeroes
    /// and Trim are not bounded by it.
    pub blocks: u32,
    /// The data buffer: required by Read and Write (missing, or too short for the data window, is
    /// [`Status::INVALID_FIELD`]), ignored by the others. It belongs to the device until the
    /// completion hands it back.
    pub buf: Option<DmaBuf>,
    /// Byte offset of the data window in `buf`. The window's address must meet the namespace's
    /// `buffer_alignment`, else the command completes with [`Status::PRP_OFFSET_INVALID`].
    pub buf_offset: u32,
    /// Returned unchanged in the completion; the queue pair never interprets it.
    pub tag: u64,
}

impl IoCmd {
    /// Reads `blocks` blocks from `lba` into the start of `buf`, which must hold at least
    /// `blocks * block_size` bytes.
    #[inline]
    pub fn read(lba: u64, blocks: u32, buf: DmaBuf, tag: u64) -> IoCmd {
        IoCmd {
            opcode: Opcode::Read,
            lba,
            blocks,
            buf: Some(buf),
            buf_offset: 0,
            tag,
        }
    }

    /// Writes the first `blocks * block_size` bytes of `buf` to `blocks` blocks from `lba`.
    #[inline]
    pub fn write(lba: u64, blocks: u32, buf: DmaBuf, tag: u64) -> IoCmd {
        IoCmd {
            opcode: Opcode::Write,
            lba,
            blocks,
            buf: Some(buf),
            buf_offset: 0,
            tag,
        }
    }

    /// Makes every write that completed before this command was submitted durable. The
    /// namespace must support it ([`NamespaceInfo::ops`](crate::NamespaceInfo::ops)).
    pub fn flush(tag: u64) -> IoCmd {
        IoCmd {
            opcode: Opcode::Flush,
            lba: 0,
            blocks: 0,
            buf: None,
            buf_offset: 0,
            tag,
        }
    }

    /// Sets `blocks` blocks from `lba` to zeroes, without a buffer.
    pub fn write_zeroes(lba: u64, blocks: u32, tag: u64) -> IoCmd {
        IoCmd {
            opcode: Opcode::WriteZeroes,
            lba,
            blocks,
            buf: None,
            buf_offset: 0,
            tag,
        }
    }

    /// Tells the device `blocks` blocks from `lba` are unused. What they read as afterwards
    /// depends on the namespace's `trim_reads_zeroes`.
    pub fn trim(lba: u64, blocks: u32, tag: u64) -> IoCmd {
        IoCmd {
            opcode: Opcode::Trim,
            lba,
            blocks,
            buf: None,
            buf_offset: 0,
            tag,
        }
    }

    /// Moves the data window `offset` bytes into the buffer.
    pub fn with_buf_offset(mut self, offset: u32) -> IoCmd {
        self.buf_offset = offset;
        self
    }

    /// Turns the command into its completion, handing the buffer back.
    #[inline]
    pub fn complete(self, status: Status) -> Completion {
        Completion {
            tag: self.tag,
            status,
            buf: self.buf,
        }
    }
}

/// What a poll returns for each finished command.
#[derive(Debug)]
pub struct Completion {
    /// The command's [`IoCmd::tag`], unchanged.
    pub tag: u64,
    /// How the command ended; anything but [`Status::SUCCESS`] means it failed, and a write
    /// that failed may have changed some of its blocks.
    pub status: Status,
    /// The command's buffer, owned by the caller again (for a Read: filled when `status` is success).
    pub buf: Option<DmaBuf>,
}

/// An NVMe completion status: Status Code Type and Status Code
/// (NVMe Base Specification 2.0, §4.2.3 "Status Field Definition", Figures 99–103).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status {
    sct: u8,
    sc: u8,
}

/// Status Code Types (NVMe Base 2.0, Figure 100).
pub mod sct {
    /// 0h: statuses any command may end with (success, invalid field, LBA out of range, ...).
    pub const GENERIC: u8 = 0;
    /// 1h: statuses whose meaning depends on the command that returned them.
    pub const COMMAND_SPECIFIC: u8 = 1;
    /// 2h: the medium failed (write fault, unrecovered read error, ...).
    pub const MEDIA_AND_DATA_INTEGRITY: u8 = 2;
    /// 3h: the path to the controller failed (multipath, fabrics).
    pub const PATH_RELATED: u8 = 3;
    /// 7h: defined by the controller's vendor; bluepoll gives them no meaning.
    pub const VENDOR_SPECIFIC: u8 = 7;
}

impl Status {
    /// Generic 00h.
    pub const SUCCESS: Status = Status::new(sct::GENERIC, 0x00);
    /// Generic 01h.
    pub const INVALID_OPCODE: Status = Status::new(sct::GENERIC, 0x01);
    /// Generic 02h.
    pub const INVALID_FIELD: Status = Status::new(sct::GENERIC, 0x02);
    /// Generic 04h.
    pub const DATA_TRANSFER_ERROR: Status = Status::new(sct::GENERIC, 0x04);
    /// Generic 05h.
    pub const ABORTED_POWER_LOSS: Status = Status::new(sct::GENERIC, 0x05);
    /// Generic 06h.
    pub const INTERNAL_ERROR: Status = Status::new(sct::GENERIC, 0x06);
    /// Generic 07h.
    pub const ABORT_REQUESTED: Status = Status::new(sct::GENERIC, 0x07);
    /// Generic 08h.
    pub const ABORTED_SQ_DELETION: Status = Status::new(sct::GENERIC, 0x08);
    /// Generic 13h: the buffer address does not meet the alignment the transport requires.
    pub const PRP_OFFSET_INVALID: Status = Status::new(sct::GENERIC, 0x13);
    /// Generic (NVM command set) 80h.
    pub const LBA_OUT_OF_RANGE: Status = Status::new(sct::GENERIC, 0x80);
    /// Generic (NVM command set) 81h.
    pub const CAPACITY_EXCEEDED: Status = Status::new(sct::GENERIC, 0x81);
    /// Generic (NVM command set) 82h.
    pub const NAMESPACE_NOT_READY: Status = Status::new(sct::GENERIC, 0x82);
    /// Media and Data Integrity 80h.
    pub const WRITE_FAULT: Status = Status::new(sct::MEDIA_AND_DATA_INTEGRITY, 0x80);
    /// Media and Data Integrity 81h.
    pub const UNRECOVERED_READ_ERROR: Status = Status::new(sct::MEDIA_AND_DATA_INTEGRITY, 0x81);
    /// Media and Data Integrity 86h.
    pub const ACCESS_DENIED: Status = Status::new(sct::MEDIA_AND_DATA_INTEGRITY, 0x86);

    /// A status from its Status Code Type (only the low 3 bits are kept, as in the 3-bit field)
    /// and Status Code.
    pub const fn new(sct: u8, sc: u8) -> Status {
        Status { sct: sct & 0x7, sc }
    }

    /// Decodes the Status Field of a completion queue entry (Dword 3 bits 31:17, passed here as
    /// Dword 3 bits 31:16, i.e. including the phase tag in bit 0, which is ignored).
    pub const fn from_cqe_status(dw3_high: u16) -> Status {
        Status::new(
            ((dw3_high >> 9) & 0x7) as u8,
            ((dw3_high >> 1) & 0xff) as u8,
        )
    }

    /// The Status Code Type, 0..=7 (see [`sct`]).
    pub const fn sct(self) -> u8 {
        self.sct
    }

    /// The Status Code, whose meaning depends on [`sct`](Self::sct).
    pub const fn sc(self) -> u8 {
        self.sc
    }

    /// Whether this is Successful Completion (type 0, code 0); every other status is a failure.
    pub const fn is_success(self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// The spec's name for the status, or a generic description for codes we do not name.
    pub fn description(self) -> &'static str {
        match (self.sct, self.sc) {
            (0, 0x00) => "Successful Completion",
            (0, 0x01) => "Invalid Command Opcode",
            (0, 0x02) => "Invalid Field in Command",
            (0, 0x03) => "Command ID Conflict",
            (0, 0x04) => "Data Transfer Error",
            (0, 0x05) => "Commands Aborted due to Power Loss Notification",
            (0, 0x06) => "Internal Error",
            (0, 0x07) => "Command Abort Requested",
            (0, 0x08) => "Command Aborted due to SQ Deletion",
            (0, 0x0b) => "Invalid Namespace or Format",
            (0, 0x13) => "PRP Offset Invalid",
            (0, 0x80) => "LBA Out of Range",
            (0, 0x81) => "Capacity Exceeded",
            (0, 0x82) => "Namespace Not Ready",
            (2, 0x80) => "Write Fault",
            (2, 0x81) => "Unrecovered Read Error",
            (2, 0x82) => "End-to-end Guard Check Error",
            (2, 0x86) => "Access Denied",
            (0, _) => "Generic Command Status",
            (1, _) => "Command Specific Status",
            (2, _) => "Media and Data Integrity Error",
            (3, _) => "Path Related Status",
            _ => "Vendor Specific Status",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (sct {}, sc {:#04x})",
            self.description(),
            self.sct,
            self.sc
        )
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cqe_status_field_decodes() {
        // DW3[31:16] = DNR(15) | M(14) | CRD(13:12) | SCT(11:9) | SC(8:1) | P(0)
        let raw: u16 = (2 << 9) | (0x81 << 1) | 1;
        assert_eq!(Status::from_cqe_status(raw), Status::UNRECOVERED_READ_ERROR);
        assert_eq!(Status::from_cqe_status(1), Status::SUCCESS);
        assert!(Status::from_cqe_status(0).is_success());
    }

    #[test]
    fn statuses_describe_themselves() {
        assert_eq!(
            Status::LBA_OUT_OF_RANGE.to_string(),
            "LBA Out of Range (sct 0, sc 0x80)"
        );
        assert!(!Status::WRITE_FAULT.is_success());
    }
}
