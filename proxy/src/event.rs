//! A one-shot event local to a worker: any number of its tasks wait until it fires.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// A one-shot event local to a worker.
#[derive(Default)]
pub struct LocalEvent {
    fired: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl LocalEvent {
    pub fn fire(&self) {
        self.fired.set(true);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Waits until fired; any number of tasks may wait.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.fired.get() {
                Poll::Ready(())
            } else {
                let mut w = self.wakers.borrow_mut();
                if !w.iter().any(|x| x.will_wake(cx.waker())) {
                    w.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }
}
