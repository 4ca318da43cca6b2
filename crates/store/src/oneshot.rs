//! A value handed from one thread to another once: the reply of a blocking call, and the
//! [`Commit`] future a transaction's submitter waits on.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};

use super::error::Result;
use bluepoll_base::sync::lock;

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
    /// The sender went away without sending (its reactor stopped).
    abandoned: bool,
}

struct Inner<T> {
    slot: Mutex<Slot<T>>,
    ready: Condvar,
}

/// The sending half: [`send`](Sender::send) once; dropped unsent, the receiver sees `None`.
pub(crate) struct Sender<T> {
    inner: Option<Arc<Inner<T>>>,
}

/// The receiving half: blocks ([`wait`](Receiver::wait)) or is polled as a future.
pub(crate) struct Receiver<T> {
    inner: Arc<Inner<T>>,
}

pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        slot: Mutex::new(Slot {
            value: None,
            waker: None,
            abandoned: false,
        }),
        ready: Condvar::new(),
    });
    (
        Sender {
            inner: Some(Arc::clone(&inner)),
        },
        Receiver { inner },
    )
}

impl<T> Sender<T> {
    pub fn send(mut self, value: T) {
        if let Some(inner) = self.inner.take() {
            let waker = {
                let mut slot = lock(&inner.slot);
                slot.value = Some(value);
                slot.waker.take()
            };
            inner.ready.notify_all();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let waker = {
                let mut slot = lock(&inner.slot);
                slot.abandoned = true;
                slot.waker.take()
            };
            inner.ready.notify_all();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl<T> Receiver<T> {
    /// The value, or None if the sender was dropped without sending.
    pub fn wait(self) -> Option<T> {
        let mut slot = lock(&self.inner.slot);
        loop {
            if let Some(v) = slot.value.take() {
                return Some(v);
            }
            if slot.abandoned {
                return None;
            }
            slot = self
                .inner
                .ready
                .wait(slot)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn poll_value(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut slot = lock(&self.inner.slot);
        if let Some(v) = slot.value.take() {
            return Poll::Ready(Some(v));
        }
        if slot.abandoned {
            return Poll::Ready(None);
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Completes when a transaction commits (or fails): a future for async callers, with a
/// blocking [`wait`](Commit::wait) for the others.
pub struct Commit {
    receiver: Receiver<Result<()>>,
}

impl Commit {
    pub(crate) fn new(receiver: Receiver<Result<()>>) -> Commit {
        Commit { receiver }
    }

    /// Blocks until the transaction is durable (Ok) or failed.
    pub fn wait(self) -> Result<()> {
        self.receiver
            .wait()
            .unwrap_or(Err(super::error::StoreError::Unmounting))
    }
}

impl Future for Commit {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.receiver
            .poll_value(cx)
            .map(|v| v.unwrap_or(Err(super::error::StoreError::Unmounting)))
    }
}
