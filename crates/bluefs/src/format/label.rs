//! The label: block 0 of every BlueFS-owned device.

use super::codec::{
    OFF_MAGIC, OFF_VERSION, check_crc, check_magic_version, crc_skipping, get_u64, set,
};
use super::{BLOCK, DeviceId, FormatError, FormatVersion, Uuid};

/// Block 0 of every BlueFS-owned device: which filesystem and which role the device has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    /// The filesystem's uuid, chosen at mkfs: a device whose label has another is refused at
    /// mount.
    pub uuid: Uuid,
    /// The device's role in the filesystem; mount refuses a device given in another role.
    pub device: DeviceId,
    /// Bytes of the device the filesystem uses (what its allocator covers): the device's size
    /// at mkfs, raised by `BlueFs::expand`. Mount refuses a device smaller than this.
    pub device_size: u64,
    /// When mkfs ran, in ns since the Unix epoch (`expand` keeps it).
    pub created_ns: u64,
}

/// The first 8 bytes of a label block.
pub const LABEL_MAGIC: [u8; 8] = *b"BPFSLABL";

//  offset  size  field
//       0     8  magic          "BPFSLABL"
//       8     2  version        1
//      10     1  device         0 wal, 1 db, 2 slow
//      11     1  reserved       0
//      12     4  crc32c         over bytes 0..12 and 16..4096
//      16    16  uuid
//      32     8  device size    bytes
//      40     8  created        ns since the Unix epoch
//      48     …  zero up to 4096
pub(super) const LABEL_OFF_DEVICE: usize = OFF_VERSION + 2;
pub(super) const LABEL_OFF_RESERVED: usize = LABEL_OFF_DEVICE + 1;
pub(super) const LABEL_OFF_CRC: usize = LABEL_OFF_RESERVED + 1;
pub(super) const LABEL_OFF_UUID: usize = LABEL_OFF_CRC + 4;
pub(super) const LABEL_OFF_DEVICE_SIZE: usize = LABEL_OFF_UUID + 16;
pub(super) const LABEL_OFF_CREATED: usize = LABEL_OFF_DEVICE_SIZE + 8;
pub(super) const LABEL_END: usize = LABEL_OFF_CREATED + 8;
const _: () = assert!(LABEL_END == 48);

/// The label block: exactly [`BLOCK_SIZE`] bytes (diagram in docs/format.md, "Label").
///
/// [`BLOCK_SIZE`]: super::BLOCK_SIZE
pub fn encode_label(l: &Label) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    set(&mut b, OFF_MAGIC, &LABEL_MAGIC);
    set(
        &mut b,
        OFF_VERSION,
        &FormatVersion::CURRENT.as_u16().to_le_bytes(),
    );
    b[LABEL_OFF_DEVICE] = l.device as u8;
    set(&mut b, LABEL_OFF_UUID, &l.uuid);
    set(&mut b, LABEL_OFF_DEVICE_SIZE, &l.device_size.to_le_bytes());
    set(&mut b, LABEL_OFF_CREATED, &l.created_ns.to_le_bytes());
    let crc = crc_skipping(&b, LABEL_OFF_CRC);
    set(&mut b, LABEL_OFF_CRC, &crc.to_le_bytes());
    b
}

/// Decodes a label from the first [`BLOCK_SIZE`] bytes of `block` (bytes past it are ignored).
/// Checks, in order: magic, length, version, crc32c, device byte.
///
/// [`BLOCK_SIZE`]: super::BLOCK_SIZE
pub fn decode_label(block: &[u8]) -> Result<Label, FormatError> {
    const WHAT: &str = "label";
    check_magic_version(block, WHAT, &LABEL_MAGIC)?;
    let b = &block[..BLOCK];
    check_crc(b, LABEL_OFF_CRC, WHAT)?;
    let raw = b[LABEL_OFF_DEVICE];
    let device = DeviceId::from_u8(raw).ok_or_else(|| FormatError::Invalid {
        what: WHAT,
        reason: format!("device byte {raw} is not 0 (wal), 1 (db) or 2 (slow)"),
    })?;
    let mut uuid = Uuid::default();
    uuid.copy_from_slice(&b[LABEL_OFF_UUID..LABEL_OFF_DEVICE_SIZE]);
    Ok(Label {
        uuid,
        device,
        device_size: get_u64(b, LABEL_OFF_DEVICE_SIZE),
        created_ns: get_u64(b, LABEL_OFF_CREATED),
    })
}
