//! Eviction by age, for the bank's tables and the workers' shards alike: a cut from a sample
//! of ages, then one pass (two when most entries are refused keys) that drops about a share of
//! the table, least recently seen first.

/// Sampled ages to pick an eviction cut from: enough for a cut within a few percent of the
/// wanted share, small enough for the stack.
const AGE_SAMPLES: usize = 256;

/// The age below which about `num/den` of `ages` fall (rounded down), from a sample of at most
/// `AGE_SAMPLES` of them. `None` when there is nothing to sample.
fn eviction_cut(ages: impl Iterator<Item = u64>, num: usize, den: usize) -> Option<u64> {
    let mut sample = [0u64; AGE_SAMPLES];
    let mut n = 0;
    for a in ages.take(AGE_SAMPLES) {
        sample[n] = a;
        n += 1;
    }
    if n == 0 {
        return None;
    }
    let sample = &mut sample[..n];
    let (_, cut, _) = sample.select_nth_unstable(n * num / den);
    Some(*cut)
}

/// One eviction, freeing about `1/den` of a table, least recently seen first. The first pass
/// drops entries that hold nothing any more and entries last seen strictly before the cut,
/// with entries exactly at the cut only up to the quota, and never an entry seen "in the
/// future" (a key refused until later): refused keys often share one time (the end of their
/// window), and dropping them all would give every one of them a fresh counter. Only when that
/// frees less than half the quota (most of the table is refused keys) does a second pass drop
/// those too, the same way, so the table stays bounded and no more than the quota of them go.
pub(super) struct Eviction {
    cut: u64,
    now_ms: u64,
    quota: usize,
    pub(super) freed: usize,
}

impl Eviction {
    /// `ages`: what eviction goes by, for the entries of a table of `len` of them.
    pub(super) fn new(ages: impl Iterator<Item = u64>, len: usize, den: usize, now_ms: u64) -> Option<Eviction> {
        let cut = eviction_cut(ages, 1, den)?;
        Some(Eviction { cut, now_ms, quota: (len / den).max(1), freed: 0 })
    }

    fn drops(&mut self, seen: u64, first: bool) -> bool {
        let drop =
            (seen < self.cut || (seen == self.cut && self.freed < self.quota)) && (!first || seen <= self.now_ms);
        self.freed += usize::from(drop);
        drop
    }

    /// First pass: whether to keep an entry seen at `seen`; `done`: it holds nothing any more.
    pub(super) fn keep_first(&mut self, seen: u64, done: bool) -> bool {
        if done {
            self.freed += 1;
            return false;
        }
        !self.drops(seen, true)
    }

    /// Whether the first pass fell well short of the quota.
    pub(super) fn wants_second(&self) -> bool {
        self.freed < self.quota / 2
    }

    /// Second pass: as the first, entries seen in the future included.
    pub(super) fn keep_second(&mut self, seen: u64) -> bool {
        !self.drops(seen, false)
    }
}
