//! Buffers and header lists a worker's finished requests hand back, for the next ones.
//!
//! Hot path: no allocation once warm.

use std::cell::RefCell;

use ringway_policy::HeaderList;

/// Buffers and header lists handed back by finished requests, so the next request reuses
/// their allocations instead of making new ones.
#[derive(Default)]
pub struct Spares {
    headers: RefCell<Vec<HeaderList<'static>>>,
    bufs: RefCell<Vec<Vec<u8>>>,
}

/// Spares kept per kind; more than the requests in flight at once is waste.
const MAX_SPARES: usize = 256;
/// Buffers larger than this are freed rather than kept.
const MAX_SPARE_BUF: usize = 256 * 1024;

impl Spares {
    /// An empty header list, with the capacity of an earlier one when there is one.
    #[inline]
    pub fn headers<'a>(&self) -> HeaderList<'a> {
        match self.headers.borrow_mut().pop() {
            Some(h) => h.recycle(),
            None => HeaderList::with_capacity(32),
        }
    }

    #[inline]
    pub fn give_headers(&self, h: HeaderList<'_>) {
        let mut all = self.headers.borrow_mut();
        if all.len() < MAX_SPARES {
            all.push(h.recycle());
        }
    }

    /// An empty buffer of at least `capacity` bytes.
    #[inline]
    pub fn buf(&self, capacity: usize) -> Vec<u8> {
        match self.bufs.borrow_mut().pop() {
            Some(mut b) => {
                b.reserve(capacity);
                b
            }
            None => Vec::with_capacity(capacity),
        }
    }

    #[inline]
    pub fn give_buf(&self, mut b: Vec<u8>) {
        let mut all = self.bufs.borrow_mut();
        if all.len() < MAX_SPARES && b.capacity() <= MAX_SPARE_BUF {
            b.clear();
            all.push(b);
        }
    }
}
