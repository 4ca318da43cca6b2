//! Backpressure: submitters wait while the cost of transactions in flight is over a budget
//! (BlueStore's throttle_bytes, and its deferred-bytes throttle).
//!
//! A submitter on one of the store's own reactors is never made to wait (it would wait for its
//! own reactor); it is counted, may overshoot, and is expected to bound its own queue depth as
//! the bench jobs do.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use bluepoll_base::sync::lock;

pub(crate) struct Throttle {
    max: u64,
    /// Cost in flight, and how many submitters wait for some of it to go.
    used: Mutex<(u64, u32)>,
    freed: Condvar,
}

impl Throttle {
    pub fn new(max: u64) -> Throttle {
        Throttle {
            max,
            used: Mutex::new((0, 0)),
            freed: Condvar::new(),
        }
    }

    /// Takes `cost`, waiting (if `wait`) while that would exceed the budget — unless nothing
    /// is in flight, so a single transaction larger than the budget still goes through.
    /// `give_up` is checked while waiting (a failed or unmounting store).
    pub fn get(&self, cost: u64, wait: bool, give_up: impl Fn() -> bool) -> bool {
        let mut used = lock(&self.used);
        while wait && used.0 > 0 && used.0 + cost > self.max {
            if give_up() {
                return false;
            }
            used.1 += 1;
            used = self
                .freed
                .wait_timeout(used, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
            used.1 -= 1;
        }
        used.0 += cost;
        true
    }

    pub fn put(&self, cost: u64) {
        if cost == 0 {
            return;
        }
        let mut used = lock(&self.used);
        used.0 = used.0.saturating_sub(cost);
        // A wake-up is a system call: only when somebody waits.
        let waiting = used.1 > 0;
        drop(used);
        if waiting {
            self.freed.notify_all();
        }
    }

    pub fn used(&self) -> u64 {
        lock(&self.used).0
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// Whether the budget is exceeded (deferred writes are then applied without waiting for a
    /// full batch).
    pub fn pressed(&self) -> bool {
        lock(&self.used).0 * 2 > self.max
    }
}
