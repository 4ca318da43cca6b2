//! Locking shared by the layers.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, using the data even if a thread panicked while holding it. Every user keeps
/// its data consistent at each step (or only counts and flags in it), so a panic elsewhere must
/// not turn into a second panic here: the thread that panicked reports the problem.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
