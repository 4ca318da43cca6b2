//! The small pieces every bluepoll layer shares, below all of them: sizes and durations as fio
//! writes them ([`units`]), seeded randomness ([`rand`]), uuids and wall-clock stamps ([`id`]),
//! the little-endian record codec with its crc32c seal ([`codec`]), `key=value` option lists of
//! device URIs and configs ([`options`]), poison-tolerant locking ([`sync`]) and thin wrappers
//! over the few system calls the layers need ([`sys`]). It depends on nothing of bluepoll's.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod codec;
pub mod id;
pub mod options;
pub mod rand;
pub mod sync;
pub mod sys;
pub mod units;
