//! Seeded randomness: every random choice a `fault:` device makes is a hash of the seed, a
//! purpose and a command's sequence number ("Determinism" in the module documentation), and the
//! probabilities those choices are drawn against.

use std::sync::atomic::{AtomicU64, Ordering};

use super::namespace::FaultShared;

pub(super) fn clamp_probability(p: f64) -> f64 {
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }
}

// Randomness: splitmix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
// 2014) over seed, purpose and sequence number. Each purpose has its own salt so the decisions
// about one command are independent of each other.
pub(super) const SALT_DROP: u64 = 0x6472_6f70; // "drop"
pub(super) const SALT_CORRUPT: u64 = 0x636f_7272; // "corr"
pub(super) const SALT_BIT: u64 = 0x0062_6974; // "bit"
pub(super) const SALT_FATE: u64 = 0x6661_7465; // "fate"
pub(super) const SALT_TEAR_KEEP: u64 = 0x6b65_6570; // "keep"
pub(super) const SALT_TEAR_LOSE: u64 = 0x6c6f_7365; // "lose"
pub(super) const SALT_TEAR_BLOCK: u64 = 0x7465_6172; // "tear"

/// One SplitMix64 step: the generator's increment, then its finaliser.
fn splitmix64(x: u64) -> u64 {
    bluepoll_base::rand::splitmix(x.wrapping_add(0x9e37_79b9_7f4a_7c15))
}

pub(super) fn draw(seed: u64, salt: u64, seq: u64, index: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed ^ salt) ^ seq) ^ index)
}

/// Uniform in [0, 1), so probability 1 always fires and 0 never does.
pub(super) fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// An f64 that threads can change while others read it.
pub(super) struct Probability(AtomicU64);

impl Probability {
    pub(super) fn new(p: f64) -> Probability {
        Probability(AtomicU64::new(clamp_probability(p).to_bits()))
    }

    pub(super) fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    pub(super) fn set(&self, p: f64) {
        self.0
            .store(clamp_probability(p).to_bits(), Ordering::Relaxed);
    }
}

pub(super) struct Odds {
    pub(super) survive: Probability,
    pub(super) torn: Probability,
    pub(super) drop_writes: Probability,
    pub(super) corrupt_writes: Probability,
}

impl FaultShared {
    pub(super) fn chance(&self, probability: &Probability, salt: u64, seq: u64) -> bool {
        let p = probability.get();
        p > 0.0 && unit(draw(self.seed, salt, seq, 0)) < p
    }
}
