//! What travels between host and controller: registers, queue entries and Identify data, laid
//! out as the NVMe Base Specification 2.0 (and the NVM Command Set Specification 1.0 for the
//! namespace structure) defines them. Section and figure numbers are on every item.
//!
//! Everything on the wire is little-endian. The structures use native integers, which is only
//! right on a little-endian host; the assertion below keeps a big-endian build from compiling
//! into a driver that silently swaps every field.

const _: () = assert!(
    cfg!(target_endian = "little"),
    "the NVMe wire structures assume a little-endian host"
);

/// Controller registers (Base 2.0 §3.1.3, Figure 33): byte offsets into BAR0.
pub mod reg {
    /// Controller Capabilities, 64 bits.
    pub const CAP: usize = 0x00;
    /// Version.
    pub const VS: usize = 0x08;
    /// Controller Configuration.
    pub const CC: usize = 0x14;
    /// Controller Status.
    pub const CSTS: usize = 0x1c;
    /// Admin Queue Attributes.
    pub const AQA: usize = 0x24;
    /// Admin Submission Queue Base Address, 64 bits.
    pub const ASQ: usize = 0x28;
    /// Admin Completion Queue Base Address, 64 bits.
    pub const ACQ: usize = 0x30;
    /// First doorbell (§3.1.3.23): SQ y tail at `DOORBELLS + (2y) * stride`, CQ y head at
    /// `DOORBELLS + (2y + 1) * stride`, with `stride = 4 << CAP.DSTRD`.
    pub const DOORBELLS: usize = 0x1000;
}

/// CAP, Controller Capabilities (§3.1.3.1, Figure 36).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities(pub u64);

impl Capabilities {
    /// MQES, bits 15:0: largest I/O queue the controller supports, in entries (stored 0-based).
    pub fn max_queue_entries(self) -> u32 {
        (self.0 & 0xffff) as u32 + 1
    }

    /// TO, bits 31:24: worst case time to become ready or not ready, in 500 ms units.
    pub fn ready_timeout_ms(self) -> u64 {
        (self.0 >> 24 & 0xff) * 500
    }

    /// DSTRD, bits 35:32: doorbell stride is `4 << DSTRD` bytes.
    pub fn doorbell_stride(self) -> usize {
        4 << (self.0 >> 32 & 0xf)
    }

    /// CSS bit 0 (bits 44:37 overall): the NVM command set is supported.
    pub fn supports_nvm_command_set(self) -> bool {
        self.0 >> 37 & 1 == 1
    }

    /// MPSMIN, bits 51:48: smallest memory page size is `2 ^ (12 + MPSMIN)`.
    pub fn min_page_shift(self) -> u32 {
        12 + (self.0 >> 48 & 0xf) as u32
    }

    /// MPSMAX, bits 55:52.
    pub fn max_page_shift(self) -> u32 {
        12 + (self.0 >> 52 & 0xf) as u32
    }
}

/// CC, Controller Configuration (§3.1.3.5, Figure 41).
pub mod cc {
    /// EN, bit 0.
    pub const ENABLE: u32 = 1;
    /// CSS, bits 6:4 = 000b: the NVM command set.
    pub const CSS_NVM: u32 = 0 << 4;
    /// MPS, bits 10:7: memory page size `2 ^ (12 + MPS)`; 0 selects 4 KiB.
    pub const fn mps(page_shift: u32) -> u32 {
        (page_shift - 12) << 7
    }
    /// AMS, bits 13:11 = 000b: round robin arbitration.
    pub const AMS_ROUND_ROBIN: u32 = 0 << 11;
    /// SHN, bits 15:14.
    pub const SHN_MASK: u32 = 3 << 14;
    /// SHN = 01b: normal shutdown.
    pub const SHN_NORMAL: u32 = 1 << 14;
    /// IOSQES, bits 19:16: I/O SQ entry size `2 ^ n`; 6 for 64-byte entries.
    pub const IOSQES_64: u32 = 6 << 16;
    /// IOCQES, bits 23:20: I/O CQ entry size `2 ^ n`; 4 for 16-byte entries.
    pub const IOCQES_16: u32 = 4 << 20;
}

/// CSTS, Controller Status (§3.1.3.6, Figure 42).
pub mod csts {
    /// RDY, bit 0.
    pub const READY: u32 = 1;
    /// CFS, bit 1: Controller Fatal Status.
    pub const FATAL: u32 = 1 << 1;
    /// SHST, bits 3:2.
    pub const SHST_MASK: u32 = 3 << 2;
    /// SHST = 10b: shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 2 << 2;
    /// What a read returns when the device has dropped off the bus.
    pub const GONE: u32 = u32::MAX;
}

/// AQA, Admin Queue Attributes (§3.1.3.8): both sizes 0-based; ASQS bits 11:0, ACQS bits 27:16.
pub fn admin_queue_attributes(sq_entries: u32, cq_entries: u32) -> u32 {
    (sq_entries - 1) | (cq_entries - 1) << 16
}

/// Admin command opcodes (§5, Figure 141).
pub mod admin {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const SET_FEATURES: u8 = 0x09;

    /// Identify CNS values (§5.17.1, Figure 273).
    pub const CNS_NAMESPACE: u32 = 0x00;
    pub const CNS_CONTROLLER: u32 = 0x01;
    /// I/O Command Set specific Identify Controller; CDW11 bits 31:24 carry the CSI (0: NVM).
    pub const CNS_CONTROLLER_COMMAND_SET: u32 = 0x06;

    /// Feature identifiers (§5.27.1, Figure 317).
    pub const FEATURE_NUMBER_OF_QUEUES: u32 = 0x07;
}

/// NVM command set fields (the opcodes themselves are `Opcode::nvme_opcode`).
pub mod io {
    /// Dataset Management CDW11 bit 2: Attribute – Deallocate (NVM 1.0 §3.2.3, Figure 38).
    pub const DSM_DEALLOCATE: u32 = 1 << 2;
}

/// Submission Queue Entry, 64 bytes (Base 2.0 §4.2, Figure 88; NVM 1.0 §3.2 for the I/O
/// command dwords).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubmissionEntry {
    /// CDW0: opcode (7:0), fused (9:8), PSDT (15:14; 00b = PRPs), command identifier (31:16).
    pub cdw0: u32,
    /// NSID: the namespace, 0 for admin commands that take none.
    pub nsid: u32,
    /// CDW2–3: command specific, unused here.
    pub cdw2: u32,
    pub cdw3: u32,
    /// MPTR: metadata pointer, unused (namespaces with metadata are refused).
    pub mptr: u64,
    /// DPTR, PRP Entry 1 (§4.1.1): the first page of data, may carry a dword-aligned offset.
    pub prp1: u64,
    /// DPTR, PRP Entry 2: the second page, or a PRP list when the data spans more than two.
    pub prp2: u64,
    /// CDW10–15: command specific (for Read/Write: SLBA in 10–11, NLB 0-based in 12 bits 15:0).
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}

const _: () = assert!(std::mem::size_of::<SubmissionEntry>() == 64);

impl SubmissionEntry {
    pub fn new(opcode: u8, command_id: u16, nsid: u32) -> SubmissionEntry {
        SubmissionEntry {
            cdw0: opcode as u32 | (command_id as u32) << 16,
            nsid,
            ..SubmissionEntry::default()
        }
    }

    /// Read, Write and Write Zeroes: starting LBA and 1-based block count (NVM 1.0 Figures 38–44).
    pub fn set_lba_range(&mut self, lba: u64, blocks: u32) {
        debug_assert!((1..=65536).contains(&blocks));
        self.cdw10 = lba as u32;
        self.cdw11 = (lba >> 32) as u32;
        self.cdw12 = blocks - 1;
    }
}

/// Completion Queue Entry, 16 bytes (Base 2.0 §4.2.1, Figure 90).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompletionEntry {
    /// DW0: command specific result (Set Features returns the allocated queue counts here).
    pub result: u32,
    /// DW1: reserved.
    pub reserved: u32,
    /// DW2 bits 15:0: SQ head pointer when this entry was posted.
    pub sq_head: u16,
    /// DW2 bits 31:16: the submission queue the command came from.
    pub sq_id: u16,
    /// DW3 bits 15:0: the command identifier from CDW0.
    pub command_id: u16,
    /// DW3 bits 31:16: phase tag (bit 0) and status field (bits 15:1, §4.2.3).
    pub status_phase: u16,
}

const _: () = assert!(std::mem::size_of::<CompletionEntry>() == 16);

/// One range of a Dataset Management command (NVM 1.0 §3.2.3, Figure 39), 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DsmRange {
    /// Context attributes, none given.
    pub attributes: u32,
    /// Length in logical blocks (1-based).
    pub blocks: u32,
    /// Starting LBA.
    pub lba: u64,
}

const _: () = assert!(std::mem::size_of::<DsmRange>() == 16);

/// Identify Controller data structure, 4096 bytes (Base 2.0 §5.17.2.1, Figure 275). Fields the
/// driver does not read are folded into reserved arrays named by their byte range.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IdentifyController {
    /// Bytes 1:0, PCI Vendor ID.
    pub vid: u16,
    /// Bytes 3:2, PCI Subsystem Vendor ID.
    pub ssvid: u16,
    /// Bytes 23:4, Serial Number (ASCII, space padded).
    pub sn: [u8; 20],
    /// Bytes 63:24, Model Number (ASCII, space padded).
    pub mn: [u8; 40],
    /// Bytes 71:64, Firmware Revision.
    pub fr: [u8; 8],
    /// Byte 72, Recommended Arbitration Burst.
    pub rab: u8,
    /// Bytes 75:73, IEEE OUI.
    pub ieee: [u8; 3],
    /// Byte 76, Controller Multi-Path I/O and Namespace Sharing Capabilities.
    pub cmic: u8,
    /// Byte 77, Maximum Data Transfer Size: `2 ^ MDTS` units of CAP.MPSMIN; 0 means no limit.
    pub mdts: u8,
    /// Bytes 79:78, Controller ID.
    pub cntlid: u16,
    /// Bytes 83:80, Version.
    pub ver: u32,
    /// Bytes 87:84, RTD3 Resume Latency (microseconds).
    pub rtd3r: u32,
    /// Bytes 91:88, RTD3 Entry Latency: expected time to shut down, in microseconds (0: not
    /// reported).
    pub rtd3e: u32,
    /// Bytes 511:92.
    pub reserved_92_511: [u8; 420],
    /// Byte 512, Submission Queue Entry Size: required (3:0) and maximum (7:4), as powers of two.
    pub sqes: u8,
    /// Byte 513, Completion Queue Entry Size, as SQES.
    pub cqes: u8,
    /// Bytes 515:514, Maximum Outstanding Commands.
    pub maxcmd: u16,
    /// Bytes 519:516, Number of Namespaces (the largest valid NSID).
    pub nn: u32,
    /// Bytes 521:520, Optional NVM Command Support: bit 2 Dataset Management, bit 3 Write Zeroes.
    pub oncs: u16,
    /// Bytes 523:522, Fused Operation Support.
    pub fuses: u16,
    /// Byte 524, Format NVM Attributes.
    pub fna: u8,
    /// Byte 525, Volatile Write Cache: bit 0 set when one is present.
    pub vwc: u8,
    /// Bytes 4095:526.
    pub reserved_526_4095: [u8; 3570],
}

const _: () = assert!(std::mem::size_of::<IdentifyController>() == 4096);

impl IdentifyController {
    pub const ONCS_DATASET_MANAGEMENT: u16 = 1 << 2;
    pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;

    pub fn serial(&self) -> String {
        ascii_field(&self.sn)
    }

    pub fn model(&self) -> String {
        ascii_field(&self.mn)
    }

    pub fn firmware(&self) -> String {
        ascii_field(&self.fr)
    }
}

/// I/O Command Set specific Identify Controller data for the NVM command set, 4096 bytes
/// (NVM Command Set 1.0 §4.1.5.3, Figure 99): the size limits of the commands without data
/// transfer limits of their own.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IdentifyControllerNvm {
    /// Byte 0, Verify Size Limit.
    pub vsl: u8,
    /// Byte 1, Write Zeroes Size Limit: `2 ^ WZSL` units of CAP.MPSMIN; 0 means no limit.
    pub wzsl: u8,
    /// Byte 2, Write Uncorrectable Size Limit.
    pub wusl: u8,
    /// Byte 3, Dataset Management Ranges Limit; 0 means no limit.
    pub dmrl: u8,
    /// Bytes 7:4, Dataset Management Range Size Limit, in logical blocks; 0 means no limit.
    pub dmrsl: u32,
    /// Bytes 15:8, Dataset Management Size Limit (all ranges of one command), in logical blocks.
    pub dmsl: u64,
    /// Bytes 4095:16.
    pub reserved_16_4095: [u8; 4080],
}

const _: () = assert!(std::mem::size_of::<IdentifyControllerNvm>() == 4096);

/// One LBA Format (NVM 1.0 §4.1.5.1, Figure 98).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbaFormat {
    /// Bytes 1:0, Metadata Size per block.
    pub ms: u16,
    /// Byte 2, LBA Data Size: block size is `2 ^ LBADS`.
    pub lbads: u8,
    /// Byte 3 bits 1:0, Relative Performance.
    pub rp: u8,
}

/// Identify Namespace data structure for the NVM command set, 4096 bytes (NVM 1.0 §4.1.5.1,
/// Figure 97).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IdentifyNamespace {
    /// Bytes 7:0, Namespace Size in logical blocks.
    pub nsze: u64,
    /// Bytes 15:8, Namespace Capacity.
    pub ncap: u64,
    /// Bytes 23:16, Namespace Utilization.
    pub nuse: u64,
    /// Byte 24, Namespace Features.
    pub nsfeat: u8,
    /// Byte 25, Number of LBA Formats (0-based).
    pub nlbaf: u8,
    /// Byte 26, Formatted LBA Size: bits 3:0 and 6:5 select the format, bit 4 extended LBAs.
    pub flbas: u8,
    /// Byte 27, Metadata Capabilities.
    pub mc: u8,
    /// Byte 28, End-to-end Data Protection Capabilities.
    pub dpc: u8,
    /// Byte 29, End-to-end Data Protection Type Settings.
    pub dps: u8,
    /// Byte 30, Namespace Multi-path I/O and Namespace Sharing Capabilities.
    pub nmic: u8,
    /// Byte 31, Reservation Capabilities.
    pub rescap: u8,
    /// Byte 32, Format Progress Indicator.
    pub fpi: u8,
    /// Byte 33, Deallocate Logical Block Features: bits 2:0 = 001b when deallocated blocks read
    /// as zeroes.
    pub dlfeat: u8,
    /// Bytes 127:34.
    pub reserved_34_127: [u8; 94],
    /// Bytes 191:128, LBA Formats 0–15 (formats 16–63 follow in the reserved tail).
    pub lbaf: [LbaFormat; 16],
    /// Bytes 4095:192.
    pub reserved_192_4095: [u8; 3904],
}

const _: () = assert!(std::mem::size_of::<IdentifyNamespace>() == 4096);

impl IdentifyNamespace {
    /// The LBA format in use, if it is one of the first 16.
    pub fn current_format(&self) -> Option<LbaFormat> {
        let index = (self.flbas & 0xf) as usize | ((self.flbas >> 5 & 3) as usize) << 4;
        self.lbaf.get(index).copied()
    }

    pub fn deallocated_reads_zeroes(&self) -> bool {
        self.dlfeat & 0x7 == 1
    }
}

/// An ASCII identification field with its space padding (and any NULs) trimmed.
fn ascii_field(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches([' ', '\0'])
        .trim_start()
        .to_string()
}

/// Plain-old-data wire structures: every bit pattern is a valid value, so one can be read from
/// bytes the controller wrote.
///
/// # Safety
/// Only for `#[repr(C)]` structs made of integers and arrays of integers, with no padding
/// whose value matters: `from_bytes` produces them from arbitrary bytes.
pub unsafe trait Wire: Copy {
    /// Reads `Self` from the start of `bytes`, or None when `bytes` is too short.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < std::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: `bytes` holds at least size_of::<Self>() readable bytes (checked above) and
        // stays borrowed for the read; Self is a #[repr(C)] struct of integers and integer
        // arrays (the `unsafe impl`s below each state it), for which every bit pattern is valid;
        // read_unaligned copes with any alignment of `bytes`. Being a &[u8], it is by the
        // crate's rule memory no device is writing (Identify pages are copied out of device
        // memory first, with volatile loads).
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}

// SAFETY: IdentifyController is #[repr(C)] with only u8/u16/u32 fields and u8 arrays, so every bit
// pattern is a valid value; its size assertion (4096, the sum of its fields) shows there is no
// padding.
unsafe impl Wire for IdentifyController {}
// SAFETY: IdentifyControllerNvm is #[repr(C)] with only u8/u32/u64 fields and a u8 array; every
// bit pattern is valid, and the 4096-byte size assertion shows no padding.
unsafe impl Wire for IdentifyControllerNvm {}
// SAFETY: IdentifyNamespace is #[repr(C)] with only u8/u64 fields, u8 arrays and an array of
// LbaFormat (itself #[repr(C)] u16/u8/u8, no padding); every bit pattern is valid, and the
// 4096-byte size assertion shows no padding.
unsafe impl Wire for IdentifyNamespace {}
// SAFETY: CompletionEntry is #[repr(C)] with only u16/u32 fields; every bit pattern is valid, and
// the 16-byte size assertion shows no padding.
unsafe impl Wire for CompletionEntry {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_decode() {
        // MQES 2047, CQR, TO 15 (7.5 s), DSTRD 0, CSS NVM, MPSMIN 0, MPSMAX 4.
        let cap = Capabilities(0x7ff | 1 << 16 | 15 << 24 | 1 << 37 | 4 << 52);
        assert_eq!(cap.max_queue_entries(), 2048);
        assert_eq!(cap.ready_timeout_ms(), 7500);
        assert_eq!(cap.doorbell_stride(), 4);
        assert!(cap.supports_nvm_command_set());
        assert_eq!((cap.min_page_shift(), cap.max_page_shift()), (12, 16));
        assert_eq!(Capabilities(2 << 32).doorbell_stride(), 16);
    }

    #[test]
    fn entries_pack_their_fields() {
        let mut sqe = SubmissionEntry::new(0x02, 0xbeef, 1);
        sqe.set_lba_range(0x1_2345_6789, 8);
        assert_eq!(sqe.cdw0, 0xbeef_0000 | 0x02);
        assert_eq!((sqe.cdw10, sqe.cdw11, sqe.cdw12), (0x2345_6789, 1, 7));

        let mut raw = [0u8; 16];
        raw[0..4].copy_from_slice(&7u32.to_le_bytes());
        raw[8..10].copy_from_slice(&5u16.to_le_bytes());
        raw[12..14].copy_from_slice(&0x42u16.to_le_bytes());
        raw[14..16].copy_from_slice(&((0x80u16 << 1) | 1).to_le_bytes());
        let cqe = CompletionEntry::from_bytes(&raw).unwrap();
        assert_eq!((cqe.result, cqe.sq_head, cqe.command_id), (7, 5, 0x42));
        assert_eq!(cqe.status_phase & 1, 1);
        assert!(CompletionEntry::from_bytes(&raw[..15]).is_none());
    }

    #[test]
    fn identify_fields_sit_at_their_spec_offsets() {
        let mut raw = vec![0u8; 4096];
        raw[4..24].copy_from_slice(b"SERIAL-1            ");
        raw[24..28].copy_from_slice(b"QEMU");
        raw[77] = 5;
        raw[516..520].copy_from_slice(&3u32.to_le_bytes());
        raw[520..522].copy_from_slice(&0x0cu16.to_le_bytes());
        raw[525] = 1;
        raw[88..92].copy_from_slice(&2_000_000u32.to_le_bytes());
        let ctrl = IdentifyController::from_bytes(&raw).unwrap();
        assert_eq!(ctrl.rtd3e, 2_000_000);
        assert_eq!(ctrl.serial(), "SERIAL-1");
        assert_eq!(ctrl.model(), "QEMU");
        assert_eq!((ctrl.mdts, ctrl.nn, ctrl.vwc), (5, 3, 1));
        assert_eq!(
            ctrl.oncs,
            IdentifyController::ONCS_DATASET_MANAGEMENT | IdentifyController::ONCS_WRITE_ZEROES
        );

        let mut raw = vec![0u8; 4096];
        raw[1] = 3;
        raw[4..8].copy_from_slice(&1024u32.to_le_bytes());
        raw[8..16].copy_from_slice(&4096u64.to_le_bytes());
        let nvm = IdentifyControllerNvm::from_bytes(&raw).unwrap();
        assert_eq!((nvm.wzsl, nvm.dmrsl, nvm.dmsl), (3, 1024, 4096));

        let mut raw = vec![0u8; 4096];
        raw[0..8].copy_from_slice(&16384u64.to_le_bytes());
        raw[26] = 1;
        raw[33] = 0x09;
        raw[128 + 4 + 2] = 12; // LBA format 1: 4096-byte blocks
        let ns = IdentifyNamespace::from_bytes(&raw).unwrap();
        assert_eq!(ns.nsze, 16384);
        assert_eq!(ns.current_format().unwrap().lbads, 12);
        assert!(ns.deallocated_reads_zeroes());
    }
}
