//! The small pieces every bluepoll layer shares, below all of them: sizes and durations as fio
//! writes them ([`units`]), seeded randomness ([`rand`]), uuids and wall-clock stamps ([`id`]),
//! poison-tolerant locking ([`sync`]) and thin wrappers over the few system calls the layers
//! need ([`sys`]). It depends on nothing of bluepoll's.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod id;
pub mod rand;
pub mod sync;
pub mod sys;
pub mod units;
