//! The filter part of a temperature-first sampling chain (temperature → top-k → top-p →
//! min-p), computed from the raw logits without building the vocabulary-sized array that
//! llama.cpp's samplers work on.
//!
//! Why: with SAG every distinct candidate filters the whole vocabulary at every position.
//! Through llama.cpp's samplers that is one `expf` per vocabulary entry, a partial sort and
//! the array itself (49,152 entries for the default model): 0.6–0.8 ms per candidate per
//! position on 2 cores, 12% of a MATH step with 8 candidates and 6% of one with a single
//! candidate (`decode_ms` against `gen_ms` in the engine's debug log).
//!
//! Here only the tokens within [`CUTOFF`] (in temperature-scaled logits) of the best one
//! are looked at. Every other token has a probability below `e^-CUTOFF` times the best
//! one's; even all of them together (`n_vocab · e^-30 < 5·10^-9` for any vocabulary below
//! 10^5) stay under half an `f32` rounding step of a sum that is at least 1, so they cannot
//! change the nucleus. The tokens kept carry the same scaled logits llama.cpp's temperature
//! sampler writes (`logit / t`, a division), so its seeded `dist` sampler draws from them
//! exactly as it would from its own chain's result (unit tests compare the two).

use llama_cpp_2::token::{data::LlamaTokenData, data_array::LlamaTokenDataArray, LlamaToken};

/// Tokens whose scaled logit is more than this below the best one's are left out: their
/// probability is below `e^-30 ≈ 9.4·10^-14` of the best token's.
pub const CUTOFF: f32 = 30.0;

/// Temperature-first filtering: scale by the temperature, then top-k, top-p and min-p.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nucleus {
    /// Temperature (> 0).
    pub temperature: f32,
    /// Top-k (0 disables it).
    pub top_k: i32,
    /// Nucleus threshold (1.0 disables it).
    pub top_p: f32,
    /// Min-p (0 disables it).
    pub min_p: f32,
}

impl Nucleus {
    /// How far below the best logit (unscaled) a token can still survive: the cut-off,
    /// widened a little so that rounding never drops a token the scaled test would keep.
    pub fn window(&self) -> f32 {
        (CUTOFF + 1.0) * self.temperature
    }

    /// Writes into `out` the tokens that survive the filter, best first, with their scaled
    /// logits and probabilities (renormalised over the survivors), marked sorted. `logits`
    /// is indexed by token id; `-inf` entries (e.g. masked by a grammar) never survive.
    pub fn apply(&self, logits: &[f32], out: &mut LlamaTokenDataArray) {
        out.data.clear();
        out.selected = None;
        out.sorted = true;
        let max = max_of(logits);
        if max == f32::NEG_INFINITY {
            // Nothing admissible: leave the choice to the caller's fallback.
            return;
        }
        let t = self.temperature;
        let floor = max - self.window();
        let best = max / t;
        for (id, &l) in logits.iter().enumerate() {
            if l >= floor {
                let scaled = l / t;
                if scaled - best >= -CUTOFF {
                    out.data
                        .push(LlamaTokenData::new(LlamaToken(id as i32), scaled, 0.0));
                }
            }
        }
        // The sum of the softmax is taken in the order llama.cpp takes it (token order, or
        // best first after top-k), so that the nucleus boundary falls where its falls even
        // when the cumulative sum lands within a rounding step of `top_p`.
        let mut sum = 0.0f32;
        if self.top_k <= 0 && self.top_p < 1.0 {
            sum = softmax(&mut out.data, best);
        }
        // Best first; equal logits in token order, so the result never depends on the
        // order of a sort that is not stable.
        out.data.sort_unstable_by(|a, b| {
            b.logit()
                .total_cmp(&a.logit())
                .then(a.id().0.cmp(&b.id().0))
        });
        if self.top_k > 0 {
            out.data.truncate(self.top_k as usize);
            if self.top_p < 1.0 {
                sum = softmax(&mut out.data, best);
            }
        }
        if self.top_p < 1.0 {
            let mut cum = 0.0f32;
            let mut keep = out.data.len();
            for (i, d) in out.data.iter().enumerate() {
                cum += d.p() / sum;
                if cum >= self.top_p {
                    keep = i + 1;
                    break;
                }
            }
            out.data.truncate(keep.max(1));
        }
        if self.min_p > 0.0 {
            // Relative to the best token, in logits: p >= min_p * p_best.
            let bound = out.data.first().map_or(best, |d| d.logit()) + self.min_p.ln();
            let keep = out.data.iter().take_while(|d| d.logit() >= bound).count();
            out.data.truncate(keep.max(1));
        }
        let sum = softmax(&mut out.data, best);
        for d in &mut out.data {
            d.set_p(d.p() / sum);
        }
    }
}

/// Sets each entry's `p` to `exp(logit - best)` and returns their sum, in entry order.
fn softmax(data: &mut [LlamaTokenData], best: f32) -> f32 {
    let mut sum = 0.0f32;
    for d in data.iter_mut() {
        let p = (d.logit() - best).exp();
        d.set_p(p);
        sum += p;
    }
    sum
}

/// The largest logit (NaN entries ignored), in lanes the compiler vectorises.
pub(super) fn max_of(logits: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &x in lanes.iter().chain(rest) {
        if x > max {
            max = x;
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;
    use llama_cpp_2::sampling::LlamaSampler;

    /// Deterministic pseudo-random logits spread over `range` (xorshift).
    fn logits(n: usize, seed: u64, range: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                // A long tail with a few high logits, like a language model's.
                let u = (s >> 40) as f32 / (1u64 << 24) as f32;
                range * u.powi(6)
            })
            .collect()
    }

    /// The same filter through llama.cpp's samplers, as the engine builds it.
    fn llama_filter(n: &Nucleus) -> LlamaSampler {
        let params = crate::engine::SamplingParams {
            temperature: n.temperature,
            top_k: n.top_k,
            top_p: n.top_p,
            min_p: n.min_p,
            repeat_penalty: 1.0,
            temperature_first: true,
            ..Default::default()
        };
        params.chains(3000).0
    }

    fn array(logits: &[f32]) -> LlamaTokenDataArray {
        LlamaTokenDataArray::from_iter(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0)),
            false,
        )
    }

    #[test]
    fn it_keeps_the_tokens_llama_cpp_keeps_and_draws_the_same() {
        let settings = [
            (0.4, 0, 0.8, 0.0),
            (0.7, 0, 0.95, 0.0),
            (1.0, 40, 0.95, 0.05),
            (0.4, 5, 1.0, 0.0),
            (1.5, 0, 0.9, 0.1),
        ];
        let mut wide_cut = 0;
        for (k, &(temperature, top_k, top_p, min_p)) in settings.iter().enumerate() {
            let n = Nucleus {
                temperature,
                top_k,
                top_p,
                min_p,
            };
            let mut theirs = llama_filter(&n);
            let mut their_draw = LlamaSampler::dist(7 + k as u32);
            let mut our_draw = LlamaSampler::dist(7 + k as u32);
            let mut ours = LlamaTokenDataArray::new(Vec::new(), false);
            for round in 0..200u64 {
                // Logits over a narrow range keep every token in play; over a wide one most
                // fall below the cut-off.
                let range = if round % 2 == 0 { 6.0 } else { 60.0 };
                let l = logits(3000, round * 31 + k as u64, range);
                let mut cur = array(&l);
                cur.apply_sampler(&mut theirs);
                n.apply(&l, &mut ours);
                if ours.data.len() < 3000 {
                    wide_cut += 1;
                }
                let mut their_ids: Vec<i32> = cur.data.iter().map(|d| d.id().0).collect();
                their_ids.sort_unstable();
                let mut our_ids: Vec<i32> = ours.data.iter().map(|d| d.id().0).collect();
                our_ids.sort_unstable();
                assert_eq!(our_ids, their_ids, "setting {k}, round {round}");
                cur.apply_sampler(&mut their_draw);
                let mut mine = LlamaTokenDataArray::new(ours.data.clone(), true);
                mine.apply_sampler(&mut our_draw);
                assert_eq!(
                    mine.selected_token(),
                    cur.selected_token(),
                    "setting {k}, round {round}"
                );
            }
        }
        assert!(wide_cut > 0, "the cut-off never left a token out");
    }

    #[test]
    fn masked_tokens_never_survive_and_nothing_admissible_gives_nothing() {
        let n = Nucleus {
            temperature: 0.4,
            top_k: 0,
            top_p: 0.8,
            min_p: 0.0,
        };
        let mut l = logits(100, 3, 10.0);
        let best = (0..100).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap();
        l[best] = f32::NEG_INFINITY;
        let mut out = LlamaTokenDataArray::new(Vec::new(), false);
        n.apply(&l, &mut out);
        assert!(!out.data.is_empty());
        assert!(out.data.iter().all(|d| d.id().0 != best as i32));
        let total: f32 = out.data.iter().map(|d| d.p()).sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        n.apply(&[f32::NEG_INFINITY; 10], &mut out);
        assert!(out.data.is_empty());
    }
}
