//! What the trainer reads: examples of token ids with a loss mask, and the order it visits
//! them in.
//!
//! Each micro-step is one whole example: no padding is ever computed, and since a CPU's
//! matrix products are already efficient at one example's few hundred rows, batching
//! several sequences would buy little. An optimiser step accumulates the gradients of
//! `batch` examples. The order is a function of `(seed, epoch)` alone, so the position in
//! the data is the step number, and a resumed run visits exactly what it would have.

/// Token ids and a loss mask per example (a dataset split).
pub trait TrainingData: Sync {
    /// Number of examples.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Example `i`: its tokens, and one mask byte per token (1: the loss predicts this
    /// token from the ones before it).
    fn example(&self, i: usize) -> (&[u32], &[u8]);
}

/// Examples held in memory (tests, benchmarks).
#[derive(Debug, Clone, Default)]
pub struct InMemoryData {
    /// `(tokens, mask)` pairs.
    pub examples: Vec<(Vec<u32>, Vec<u8>)>,
}

impl TrainingData for InMemoryData {
    fn len(&self) -> usize {
        self.examples.len()
    }

    fn example(&self, i: usize) -> (&[u32], &[u8]) {
        let (t, m) = &self.examples[i];
        (t, m)
    }
}

/// SplitMix64: a small, well-mixed generator whose whole state is one `u64`, so a run's
/// random choices can be derived from `(seed, purpose, counter)` without carrying state.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// A generator for one purpose of one seed.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut g = Self(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        g.next_u64();
        g
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Streams of [`SplitMix64`] by purpose.
pub(crate) const STREAM_ORDER: u64 = 1;
pub(crate) const STREAM_INIT: u64 = 2;
pub(crate) const STREAM_DROPOUT: u64 = 3;

/// The order of the examples in `epoch`: a Fisher–Yates shuffle seeded by `(seed, epoch)`.
pub fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed, STREAM_ORDER + ((epoch as u64) << 8));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

/// The examples of optimiser step `step` (0-based) with `batch` examples per step over `n`
/// examples: steps run through each epoch's order; the last step of an epoch may be short,
/// and the next epoch starts a fresh order.
pub fn step_examples(seed: u64, step: usize, batch: usize, n: usize) -> (usize, Vec<usize>) {
    let per_epoch = n.div_ceil(batch);
    let epoch = step / per_epoch;
    let first = (step % per_epoch) * batch;
    let order = epoch_order(seed, epoch, n);
    (epoch, order[first..(first + batch).min(n)].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_visits_every_example_once_in_a_seeded_order() {
        let a = epoch_order(7, 0, 100);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(7, 0, 100));
        assert_ne!(a, epoch_order(7, 1, 100));
        assert_ne!(a, epoch_order(8, 0, 100));
    }

    #[test]
    fn steps_cover_each_epoch_and_the_last_step_may_be_short() {
        let mut seen = Vec::new();
        for step in 0..4 {
            let (epoch, ids) = step_examples(3, step, 3, 10);
            assert_eq!(epoch, 0);
            seen.extend(ids);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(step_examples(3, 3, 3, 10).1.len(), 1);
        assert_eq!(step_examples(3, 4, 3, 10).0, 1);
    }
}
