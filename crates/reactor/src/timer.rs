//! Timer entries kept in a binary heap ordered by deadline (earliest first), ties broken by the
//! order they were added so equal deadlines fire in FIFO order.

use std::cmp::Ordering;

use super::{Context, TimerAction};

pub(super) enum TimerKind {
    Once(Box<dyn FnOnce(&mut Context<'_>)>),
    Every {
        /// In ns of the reactor's clock.
        period: u64,
        f: Box<dyn FnMut(&mut Context<'_>) -> TimerAction>,
    },
}

pub(super) struct Timer {
    /// Nanoseconds on the reactor's clock.
    pub deadline: u64,
    pub seq: u64,
    pub kind: TimerKind,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        self.deadline == other.deadline && self.seq == other.seq
    }
}

impl Eq for Timer {}

impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timer {
    /// Reversed, because `BinaryHeap` is a max-heap and we want the earliest deadline on top.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.deadline, other.seq).cmp(&(self.deadline, self.seq))
    }
}
