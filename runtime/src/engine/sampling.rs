//! Sampling: llama.cpp's chain split before its final draw, so candidates with equal
//! histories filter once and draw each with its own seed; the grammar is applied only when
//! it rejects a draw.

use super::*;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SamplingParams {
    /// Temperature; `<= 0` means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling threshold (1.0 disables).
    pub top_p: f32,
    /// Top-k (0 disables).
    pub top_k: i32,
    /// Min-p (0 disables).
    pub min_p: f32,
    /// Repeat penalty (1.0 disables).
    pub repeat_penalty: f32,
    /// Window of the repeat penalty.
    pub repeat_last_n: i32,
    /// Seed of the random sampler; equal seeds give equal outputs.
    pub seed: u32,
    /// Scale the logits by the temperature before top-k, top-p and min-p, as vLLM and
    /// Hugging Face do (and so the paper's SAG sampling at 0.4 / 0.8), instead of last, as
    /// llama.cpp does. At temperature < 1 the nucleus is then smaller.
    pub temperature_first: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: DEFAULT_TEMPERATURE,
            top_p: DEFAULT_TOP_P,
            top_k: DEFAULT_TOP_K,
            min_p: DEFAULT_MIN_P,
            repeat_penalty: DEFAULT_REPEAT_PENALTY,
            repeat_last_n: DEFAULT_REPEAT_LAST_N,
            seed: DEFAULT_SEED,
            temperature_first: false,
        }
    }
}

impl SamplingParams {
    /// Argmax decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    pub(super) fn build(&self, model: &Model, grammar: Option<&str>) -> Result<TokenSampler> {
        let grammar = grammar
            .map(|g| {
                LlamaSampler::grammar(&model.inner, g, "root")
                    .map_err(|e| EngineError::Grammar(e.to_string()))
            })
            .transpose()?;
        Ok(self.sampler(model.n_vocab(), grammar))
    }

    /// The chain as a [`TokenSampler`], with `grammar` beside it.
    pub(super) fn sampler(&self, n_vocab: i32, grammar: Option<LlamaSampler>) -> TokenSampler {
        let (chain, draw) = self.chains(n_vocab);
        let filter = match self.nucleus() {
            Some(n) => Filter::Nucleus(n),
            None => Filter::Chain(chain),
        };
        TokenSampler {
            grammar,
            filter,
            draw,
            scratch: LlamaTokenDataArray::new(Vec::new(), false),
            redraws: 0,
            argmax_only: self.temperature <= 0.0 && self.repeat_penalty == 1.0,
        }
    }

    /// The filter part as a [`Nucleus`] where it is one: temperature first and no repeat
    /// penalty (which needs the history). SAG's sampling is.
    pub(super) fn nucleus(&self) -> Option<Nucleus> {
        let native = self.temperature > 0.0 && self.temperature_first && self.repeat_penalty == 1.0;
        native.then_some(Nucleus {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
        })
    }

    /// The sampling chain in two parts: everything before the choice (repeat penalty, top-k,
    /// top-p, min-p, temperature), then the choice itself (a seeded random draw, or argmax).
    pub(super) fn chains(&self, n_vocab: i32) -> (LlamaSampler, LlamaSampler) {
        let mut filter = Vec::new();
        if self.repeat_penalty != 1.0 {
            filter.push(LlamaSampler::penalties(
                n_vocab,
                self.repeat_last_n,
                self.repeat_penalty,
                0.0,
                0.0,
            ));
        }
        let draw = if self.temperature <= 0.0 {
            LlamaSampler::greedy()
        } else {
            if self.temperature_first {
                filter.push(LlamaSampler::temp(self.temperature));
            }
            if self.top_k > 0 {
                filter.push(LlamaSampler::top_k(self.top_k));
            }
            if self.top_p < 1.0 {
                filter.push(LlamaSampler::top_p(self.top_p, 1));
            }
            if self.min_p > 0.0 {
                filter.push(LlamaSampler::min_p(self.min_p, 1));
            }
            if !self.temperature_first {
                filter.push(LlamaSampler::temp(self.temperature));
            }
            LlamaSampler::dist(self.seed)
        };
        (LlamaSampler::chain_simple(filter), draw)
    }
}

/// One sequence's sampler: the sampling chain, split before its final choice, and apart
/// from it the optional grammar.
///
/// Checking a grammar against every token of the vocabulary costs more than decoding a
/// token of a small model, and it is paid per candidate per position. So the token is
/// first drawn without the grammar and only checked against it; only when the grammar
/// rejects it are the logits masked by the grammar and the token drawn again. The result
/// follows the grammar-masked distribution (a rejected first draw is discarded); it is
/// what llama.cpp's own common sampler does.
///
/// Parallel candidates with the same history so far have the same logits, and every part of
/// the chain before the choice is a function of the logits and that history. So that part
/// runs once per group of such candidates ([`TokenSampler::filter`]) and each member makes
/// only its own seeded choice from a copy of the few tokens left ([`TokenSampler::choose`]):
/// the same tokens as running each member's whole chain, without sorting the vocabulary once
/// per member.
pub(super) struct TokenSampler {
    pub(super) grammar: Option<LlamaSampler>,
    pub(super) filter: Filter,
    pub(super) draw: LlamaSampler,
    pub(super) scratch: LlamaTokenDataArray,
    /// Draws the grammar rejected.
    pub(super) redraws: usize,
    /// The choice is argmax with nothing before it: after a rejected draw the best admitted
    /// token is all that is needed.
    pub(super) argmax_only: bool,
}

/// The part of a sampling chain before the choice.
pub(super) enum Filter {
    /// llama.cpp's samplers over the whole vocabulary.
    Chain(LlamaSampler),
    /// Temperature first, computed from the raw logits (see [`nucleus`]).
    Nucleus(Nucleus),
}

impl TokenSampler {
    /// Runs the chain's filter part over one position's `logits` (indexed by token id),
    /// into `buf`. Any candidate whose history equals this sampler's may
    /// [`choose`](Self::choose) from the result.
    pub(super) fn filter(
        &mut self,
        logits: &[f32],
        mut buf: LlamaTokenDataArray,
    ) -> LlamaTokenDataArray {
        match &mut self.filter {
            Filter::Chain(chain) => {
                fill_logits(&mut buf, logits);
                buf.apply_sampler(chain);
            }
            Filter::Nucleus(n) => n.apply(logits, &mut buf),
        }
        buf
    }

    /// Chooses the next token from `kept` (what [`filter`](Self::filter) left) with this
    /// sampler's own draw, and accepts it. `logits` gives the position's logits again, for
    /// a draw the grammar rejects: the choice is then made again over what the grammar
    /// admits, filtered. That set depends only on the logits and the grammar's state, so
    /// candidates with equal histories share it through `admitted` (`None` until the first
    /// of them needs it); each still makes its own draw from it.
    pub(super) fn choose(
        &mut self,
        kept: &LlamaTokenDataArray,
        logits: &[f32],
        admitted: &mut Option<LlamaTokenDataArray>,
    ) -> LlamaToken {
        // A copy, because the draw may reorder what it draws from, and the other members of
        // the group draw from the same tokens. Into a kept buffer: after argmax (which the
        // filter leaves the whole vocabulary to) this is a vocabulary-sized copy per token.
        let drawn = draw_from_copy(&mut self.scratch, kept, &mut self.draw);
        let token = match &mut self.grammar {
            None => drawn.unwrap_or(LlamaToken(0)),
            Some(grammar) => match drawn.filter(|&t| admits(grammar, t)) {
                Some(t) => t,
                None => {
                    self.redraws += 1;
                    let shared = admitted.get_or_insert_with(|| {
                        let mut cur = LlamaTokenDataArray::new(Vec::new(), false);
                        let mut reject = |a: &mut LlamaTokenDataArray| a.apply_sampler(grammar);
                        match &mut self.filter {
                            Filter::Nucleus(n) => {
                                // Only admitted tokens near the best admitted one can matter.
                                let near = admitted_near_best(&mut reject, logits, n.window());
                                let mut masked = vec![f32::NEG_INFINITY; logits.len()];
                                for d in &near {
                                    masked[d.id().0 as usize] = d.logit();
                                }
                                n.apply(&masked, &mut cur);
                            }
                            Filter::Chain(_) if self.argmax_only => {
                                cur.data = admitted_near_best(&mut reject, logits, 0.0);
                            }
                            Filter::Chain(chain) => {
                                // The chain may need every token (e.g. a repeat penalty).
                                fill_logits(&mut cur, logits);
                                reject(&mut cur);
                                cur.apply_sampler(chain);
                            }
                        }
                        cur
                    });
                    // The grammar always leaves at least one token (llama.cpp aborts otherwise).
                    draw_from_copy(&mut self.scratch, shared, &mut self.draw)
                        .unwrap_or(LlamaToken(0))
                }
            },
        };
        if let Some(g) = &mut self.grammar {
            g.accept(token);
        }
        if let Filter::Chain(chain) = &mut self.filter {
            chain.accept(token);
        }
        self.draw.accept(token);
        token
    }

    /// Takes `tokens` as already generated (grammar state, repeat-penalty history).
    pub(super) fn accept_many(&mut self, tokens: &[LlamaToken]) {
        if let Some(g) = &mut self.grammar {
            g.accept_many(tokens);
        }
        if let Filter::Chain(chain) = &mut self.filter {
            chain.accept_many(tokens);
        }
        self.draw.accept_many(tokens);
    }
}

/// Copies `from` into `scratch` (keeping its allocation) and draws from the copy: the draw
/// may reorder what it draws from, and other candidates draw from the same `from`.
pub(super) fn draw_from_copy(
    scratch: &mut LlamaTokenDataArray,
    from: &LlamaTokenDataArray,
    draw: &mut LlamaSampler,
) -> Option<LlamaToken> {
    scratch.data.clear();
    scratch.data.extend_from_slice(&from.data);
    scratch.selected = from.selected;
    scratch.sorted = from.sorted;
    scratch.apply_sampler(draw);
    scratch.selected_token()
}

/// Sets `buf` to one position's logits, unsorted and with nothing selected, keeping its
/// allocation.
pub(super) fn fill_logits(buf: &mut LlamaTokenDataArray, logits: &[f32]) {
    buf.data.clear();
    buf.data.extend(
        logits
            .iter()
            .enumerate()
            .map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0)),
    );
    buf.selected = None;
    buf.sorted = false;
}

/// Whether the grammar in its current state allows `token` next.
pub(super) fn admits(grammar: &mut LlamaSampler, token: LlamaToken) -> bool {
    let mut one = LlamaTokenDataArray::new(vec![LlamaTokenData::new(token, 1.0, 0.0)], false);
    one.apply_sampler(grammar);
    one.data
        .first()
        .is_some_and(|d| d.logit() != f32::NEG_INFINITY)
}

/// The tokens a grammar admits among those within `width` (in logits) of the best token it
/// admits, sorted by nothing in particular.
///
/// After the grammar rejects a draw, the choice is made again over the grammar-masked
/// logits. Tokens further than the filter's cut-off below the best admitted one cannot
/// change it, so instead of passing the whole vocabulary through the grammar (~4 ms for
/// 49,152 tokens, paid several times per candidate per step at the grammar's fixed
/// strings), the vocabulary is checked from the top down in widening windows: the first
/// window holds the tokens within `width` of the best logit, and it widens only while
/// nothing in it is admitted. `reject` masks the tokens the grammar rejects (logit -inf).
pub(super) fn admitted_near_best(
    reject: &mut dyn FnMut(&mut LlamaTokenDataArray),
    logits: &[f32],
    width: f32,
) -> Vec<LlamaTokenData> {
    let max = nucleus::max_of(logits);
    let mut admitted: Vec<LlamaTokenData> = Vec::new();
    let mut window = LlamaTokenDataArray::new(Vec::new(), false);
    let (mut hi, mut step) = (f32::INFINITY, width.max(1.0));
    let mut lo = max - step;
    loop {
        window.data.clear();
        window.selected = None;
        window.sorted = false;
        window.data.extend(
            logits
                .iter()
                .enumerate()
                .filter(|&(_, &l)| l >= lo && l < hi)
                .map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0)),
        );
        if !window.data.is_empty() {
            reject(&mut window);
            admitted.extend(
                window
                    .data
                    .iter()
                    .filter(|d| d.logit() != f32::NEG_INFINITY)
                    .copied(),
            );
        }
        if lo == f32::NEG_INFINITY {
            break;
        }
        let best = admitted
            .iter()
            .map(|d| d.logit())
            .fold(f32::NEG_INFINITY, f32::max);
        if best > f32::NEG_INFINITY {
            let need = best - width;
            if need >= lo {
                break;
            }
            // One more window reaches down to what the best admitted token needs.
            (hi, lo) = (lo, need);
        } else {
            step *= 4.0;
            (hi, lo) = (
                lo,
                if step > 1e4 {
                    f32::NEG_INFINITY
                } else {
                    max - step
                },
            );
        }
    }
    let best = admitted
        .iter()
        .map(|d| d.logit())
        .fold(f32::NEG_INFINITY, f32::max);
    admitted.retain(|d| d.logit() >= best - width);
    admitted
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOCAB: usize = 500;

    /// Logits that depend on the history (as a model's do), peaked enough that candidates
    /// often draw alike and form groups, and spread enough that they also part.
    fn logits_after(history: &[LlamaToken]) -> Vec<f32> {
        let h = history
            .iter()
            .fold(17u64, |h, t| h.wrapping_mul(31).wrapping_add(t.0 as u64));
        (0..VOCAB)
            .map(|i| {
                let x = (i as u64).wrapping_mul(2_654_435_761).wrapping_add(h) % 1000;
                x as f32 / 250.0
            })
            .collect()
    }

    fn array_after(history: &[LlamaToken]) -> LlamaTokenDataArray {
        let mut a = LlamaTokenDataArray::new(Vec::new(), false);
        fill_logits(&mut a, &logits_after(history));
        a
    }

    /// SAG's sampling: temperature first, then the nucleus (`Filter::Nucleus`).
    fn sag_sampling() -> SamplingParams {
        SamplingParams {
            temperature: 0.4,
            top_p: 0.8,
            top_k: 0,
            min_p: 0.0,
            temperature_first: true,
            seed: 5,
            ..SamplingParams::default()
        }
    }

    /// A filter only llama.cpp's chain computes (a repeat penalty needs the history).
    fn chain_sampling() -> SamplingParams {
        SamplingParams {
            temperature: 0.4,
            top_p: 0.8,
            repeat_penalty: 1.3,
            seed: 11,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn filtering_once_per_group_chooses_what_each_whole_chain_would() {
        // llama.cpp's filter (a repeat penalty needs the history).
        filtering_once_per_group_matches_whole_chains(chain_sampling());
    }

    #[test]
    fn the_native_nucleus_filter_chooses_what_llama_cpp_s_whole_chain_would() {
        // SAG's sampling: the filter is `Nucleus`, the reference llama.cpp's chain.
        let params = sag_sampling();
        assert!(params.nucleus().is_some());
        filtering_once_per_group_matches_whole_chains(params);
    }

    #[test]
    fn candidates_with_equal_histories_share_what_the_grammar_admits_after_a_rejection() {
        // SAG's sampling (`Nucleus` filter) and llama.cpp's chain (repeat penalty).
        for params in [sag_sampling(), chain_sampling()] {
            let (own, own_sets, redraws) = choices_under_a_grammar(&params, false);
            let (shared, shared_sets, _) = choices_under_a_grammar(&params, true);
            assert_eq!(own, shared, "{params:?}");
            // Meaningful only if draws were rejected and members of a group shared a set.
            assert_eq!(own_sets, redraws);
            assert!(
                shared_sets < redraws,
                "{shared_sets} of {redraws}: nothing shared"
            );
            assert!(
                own.iter().any(|c| *c != own[0]),
                "the candidates never parted"
            );
        }
    }

    /// 8 candidates' tokens over 40 positions, filtering once per group of equal histories,
    /// under a stand-in grammar (a logit bias of -inf rejects two tokens in three, as a
    /// grammar would); with `share`, a group's members share the admitted set after a
    /// rejection. Also returns how many admitted sets were computed and how many draws the
    /// grammar rejected.
    fn choices_under_a_grammar(
        params: &SamplingParams,
        share: bool,
    ) -> (Vec<Vec<LlamaToken>>, usize, usize) {
        use llama_cpp_2::token::logit_bias::LlamaLogitBias;
        let banned: Vec<LlamaLogitBias> = (0..VOCAB)
            .filter(|i| i % 3 != 0)
            .map(|i| LlamaLogitBias::new(LlamaToken(i as i32), f32::NEG_INFINITY))
            .collect();
        let n = 8;
        let mut samplers: Vec<TokenSampler> = (0..n)
            .map(|i| {
                let grammar = LlamaSampler::logit_bias(VOCAB as i32, &banned);
                SamplingParams {
                    seed: params.seed + i,
                    ..params.clone()
                }
                .sampler(VOCAB as i32, Some(grammar))
            })
            .collect();
        let mut got = vec![Vec::new(); n as usize];
        let mut sets = 0;
        for _ in 0..40 {
            let mut groups: Vec<(Vec<LlamaToken>, LlamaTokenDataArray)> = Vec::new();
            let mut admitted: Vec<Option<LlamaTokenDataArray>> = Vec::new();
            for i in 0..n as usize {
                let logits = logits_after(&got[i]);
                let p = match groups.iter().position(|(h, _)| *h == got[i]) {
                    Some(p) => p,
                    None => {
                        let buf = LlamaTokenDataArray::new(Vec::new(), false);
                        let f = samplers[i].filter(&logits, buf);
                        groups.push((got[i].clone(), f));
                        admitted.push(None);
                        groups.len() - 1
                    }
                };
                let mut own = None;
                let set = if share { &mut admitted[p] } else { &mut own };
                let had = set.is_some();
                let t = samplers[i].choose(&groups[p].1, &logits, set);
                sets += usize::from(!had && set.is_some());
                assert!(
                    (t.0 as usize).is_multiple_of(3),
                    "the grammar's rejection was ignored"
                );
                got[i].push(t);
            }
        }
        let redraws = samplers.iter().map(|s| s.redraws).sum();
        (got, sets, redraws)
    }

    fn filtering_once_per_group_matches_whole_chains(params: SamplingParams) {
        let n = 8;
        let member = |i: u32| SamplingParams {
            seed: params.seed + i,
            ..params.clone()
        };
        // Each candidate's whole chain on its own logits, as one sequence samples.
        let mut whole: Vec<LlamaSampler> = (0..n)
            .map(|i| {
                let (filter, draw) = member(i).chains(VOCAB as i32);
                LlamaSampler::chain_simple([filter, draw])
            })
            .collect();
        let mut expected = vec![Vec::new(); n as usize];
        for _ in 0..40 {
            for (i, chain) in whole.iter_mut().enumerate() {
                let mut cur = array_after(&expected[i]);
                cur.apply_sampler(chain);
                let t = cur.selected_token().unwrap();
                chain.accept(t);
                expected[i].push(t);
            }
        }
        // The engine's way: per position, the first candidate of each group of equal
        // histories filters once; every candidate chooses from that.
        let mut split: Vec<TokenSampler> = (0..n)
            .map(|i| member(i).sampler(VOCAB as i32, None))
            .collect();
        let mut got = vec![Vec::new(); n as usize];
        let (mut filtered_positions, mut chosen) = (0, 0);
        for _ in 0..40 {
            let mut groups: Vec<(Vec<LlamaToken>, LlamaTokenDataArray)> = Vec::new();
            for i in 0..n as usize {
                let p = match groups.iter().position(|(h, _)| *h == got[i]) {
                    Some(p) => p,
                    None => {
                        let buf = LlamaTokenDataArray::new(Vec::new(), false);
                        let f = split[i].filter(&logits_after(&got[i]), buf);
                        groups.push((got[i].clone(), f));
                        filtered_positions += 1;
                        groups.len() - 1
                    }
                };
                let t = split[i].choose(&groups[p].1, &logits_after(&got[i]), &mut None);
                chosen += 1;
                got[i].push(t);
            }
        }
        assert_eq!(got, expected);
        // The test means something only if candidates both shared and parted.
        assert!(filtered_positions < chosen, "no group ever shared");
        assert!(
            expected.iter().any(|e| *e != expected[0]),
            "the candidates never parted"
        );
    }

    #[test]
    fn after_a_rejected_draw_only_the_admitted_tokens_near_the_best_admitted_one_are_found() {
        // A "grammar" that admits every 97th token, or only tokens far down the order.
        let logits: Vec<f32> = (0..5000)
            .map(|i| ((i as u64 * 2_654_435_761) % 100_000) as f32 / 1000.0)
            .collect();
        for (admit_every, width) in [(97usize, 12.8f32), (97, 0.0), (4999, 12.8), (1, 3.0)] {
            let admit = |id: usize| id.is_multiple_of(admit_every);
            let mut reject = |a: &mut LlamaTokenDataArray| {
                for d in &mut a.data {
                    if !admit(d.id().0 as usize) {
                        d.set_logit(f32::NEG_INFINITY);
                    }
                }
            };
            let mut got: Vec<i32> = admitted_near_best(&mut reject, &logits, width)
                .iter()
                .map(|d| d.id().0)
                .collect();
            got.sort_unstable();
            // By brute force: every admitted token, then those near the best of them.
            let best = (0..logits.len())
                .filter(|&i| admit(i))
                .map(|i| logits[i])
                .fold(f32::NEG_INFINITY, f32::max);
            let want: Vec<i32> = (0..logits.len())
                .filter(|&i| admit(i) && logits[i] >= best - width)
                .map(|i| i as i32)
                .collect();
            assert!(!want.is_empty());
            assert_eq!(got, want, "admit every {admit_every}, width {width}");
        }
    }
}
