//! Identities and wall-clock stamps every on-disk layer writes: a 16-byte uuid per filesystem,
//! store and image, and nanoseconds since the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

/// A 16-byte identity, stored as is (no byte-order fields: it is compared, never interpreted).
pub type Uuid = [u8; 16];

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A fresh uuid from the clock and the process id. Unique enough to tell one filesystem or store
/// from another on the same devices; not random in any cryptographic sense.
pub fn new_uuid() -> Uuid {
    let mut uuid = [0u8; 16];
    let seed = now_ns() ^ (std::process::id() as u64) << 32;
    let a = crate::rand::splitmix(seed);
    let b = crate::rand::splitmix(a ^ 0x9e37_79b9_7f4a_7c15);
    uuid[..8].copy_from_slice(&a.to_le_bytes());
    uuid[8..].copy_from_slice(&b.to_le_bytes());
    uuid
}

/// A uuid as 32 hex digits.
pub fn uuid_text(uuid: &Uuid) -> String {
    uuid.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_differ_and_print_as_32_hex_digits() {
        let a = new_uuid();
        std::thread::sleep(std::time::Duration::from_micros(10));
        let b = new_uuid();
        assert_ne!(a, b);
        let text = uuid_text(&a);
        assert_eq!(text.len(), 32);
        assert!(text.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
