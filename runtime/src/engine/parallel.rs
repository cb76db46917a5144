//! Parallel decoding: N candidates that share the prompt's cells decode one token each per
//! batch; candidates with identical tokens so far share a batch entry.

use super::*;

/// Generation state of one sequence.
pub(super) struct Candidate<'s> {
    pub(super) text: String,
    pub(super) decoder: Utf8Decoder,
    pub(super) stops: StopBuffer<'s>,
    pub(super) gen_tokens: usize,
    pub(super) finish: Option<FinishReason>,
    pub(super) stop: Option<String>,
}

impl<'s> Candidate<'s> {
    /// Once it has ended: the text held back (an incomplete character, a possible start of
    /// a stop string) is part of the reply after all, unless a stop string did end it.
    pub(super) fn flush(&mut self, on_text: &mut dyn FnMut(&str) -> bool) {
        if self.stop.is_none() {
            let rest = self.stops.finish(&self.decoder.finish());
            if !rest.is_empty() {
                self.text.push_str(&rest);
                on_text(&rest);
            }
        }
    }

    pub(super) fn new(stop: &'s [String]) -> Self {
        Self {
            text: String::new(),
            decoder: Utf8Decoder::default(),
            stops: StopBuffer::new(stop),
            gen_tokens: 0,
            finish: None,
            stop: None,
        }
    }
}

impl<'m> Session<'m> {
    /// [`Session::complete_parallel`], telling the caller about each candidate as soon as it
    /// ends: `on_done(i, completion)` gets candidate `i`'s final text (its stats are filled
    /// in only in the returned list) and answers with an [`AfterEnd`]: whether the
    /// candidates still running are needed any more (if not, they end with
    /// [`FinishReason::Abandoned`]) and which ended candidates it will never adopt (their
    /// cells are freed; [`Session::keep_sequence`] refuses them afterwards).
    pub fn complete_parallel_until(
        &mut self,
        prompt: &[LlamaToken],
        n: usize,
        params: &GenerateParams,
        on_text: &mut dyn FnMut(usize, &str) -> bool,
        on_done: &mut dyn FnMut(usize, &Completion) -> AfterEnd,
    ) -> Result<Vec<Completion>> {
        let n_ctx = self.n_ctx() as usize;
        if prompt.is_empty() {
            return Err(EngineError::InvalidParameter("empty prompt".into()));
        }
        if n == 0 || n > self.cached.len() {
            return Err(EngineError::InvalidParameter(format!(
                "{n} parallel sequences requested, the session holds {}",
                self.cached.len()
            )));
        }
        if prompt.len() > n_ctx {
            return Err(EngineError::ContextOverflow {
                prompt_tokens: prompt.len(),
                n_ctx: n_ctx as u32,
                n_ctx_train: self.model.n_ctx_train(),
            });
        }
        // Build the samplers before touching the cache, so a bad grammar changes nothing.
        let mut samplers = (0..n)
            .map(|i| {
                let mut sp = params.sampling.clone();
                sp.seed = sp.seed.wrapping_add(i as u32);
                sp.build(self.model, params.grammar.as_deref())
            })
            .collect::<Result<Vec<_>>>()?;
        // Plain argmax needs no sampler: scanning the logits directly skips building the
        // vocabulary-sized candidate array on every token (measurable on small models).
        let plain_argmax = params.sampling.temperature <= 0.0
            && params.sampling.repeat_penalty == 1.0
            && params.grammar.is_none();
        if let Some(prefill) = &params.prefill {
            let tokens = self.model.tokenize(prefill, false);
            // The caller guarantees the prefill fits the grammar (llama.cpp aborts otherwise).
            for s in &mut samplers {
                s.accept_many(&tokens);
            }
        }

        let t0 = Instant::now();
        // Sequence 0 is the conversation; candidates of an earlier call that were not
        // adopted are dropped so their cells are free again.
        self.released.fill(false);
        for s in 1..self.cached.len() {
            if !self.cached[s].is_empty() {
                self.ctx
                    .clear_kv_cache_seq(Some(s as u32), None, None)
                    .map_err(llama_err)?;
                self.cached[s].clear();
            }
        }
        let mut reuse = common_prefix(&self.cached[0], prompt);
        if reuse == prompt.len() {
            // Logits come only from evaluated tokens: evaluate at least the last one.
            reuse -= 1;
        }
        if reuse < self.cached[0].len() {
            self.ctx
                .clear_kv_cache_seq(Some(0), Some(reuse as u32), None)
                .map_err(llama_err)?;
            self.cached[0].truncate(reuse);
        }
        self.eval(0, &prompt[reuse..])?;
        for i in 1..n {
            self.fork_sequence(0, i)?;
        }
        let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;

        let t1 = Instant::now();
        let model: &'m Model = self.model;
        let vocab = model.inner.vocab();
        let mut cands: Vec<Candidate> = (0..n).map(|_| Candidate::new(&params.stop)).collect();
        // Every candidate samples its first token from the prompt's last logits.
        let mut logits_idx = vec![self.batch.n_tokens() - 1; n];
        // KV cells in use: the shared prompt once, plus each evaluated token once.
        let mut cells = prompt.len();
        // Candidates whose generated tokens are identical so far form a group and share one
        // evaluation per position: the token goes into the batch once, tagged with every
        // member's sequence, so each member's sequence still holds its whole history and
        // samples from the same logits it would have got alone. At the paper's temperature
        // candidates often draw the same tokens (8 candidates on the agent's HotpotQA and MATH
        // questions averaged 1.6 to 6.8 distinct sequences per position), and no candidate's
        // text changes. Group ids are renumbered per step.
        let mut group = vec![0usize; n];
        let (mut positions, mut evaluated) = (0usize, 0usize);
        let mut cancelled = false;
        let mut abandon = false;
        // Candidates whose end has been passed to `on_done`.
        let mut reported = vec![false; n];
        // Ended candidates `on_done` gave up on, released once the callbacks are done.
        let mut to_release = Vec::new();
        // Time spent in `on_done` (e.g. running a candidate's code) is not decoding time.
        let mut in_callbacks = std::time::Duration::ZERO;
        // Time inside `llama_decode`; the rest of `gen_ms` is sampling and bookkeeping.
        let mut in_decode = std::time::Duration::ZERO;
        // Logits index -> the chain's filter part over those logits, for this position; the
        // vocabulary-sized buffers are reused from position to position (allocating one per
        // draw cost more than the draw).
        let mut filtered: Vec<(i32, LlamaTokenDataArray)> = Vec::new();
        let mut spare: Vec<LlamaTokenDataArray> = Vec::new();
        // Logits index -> what the grammar admits there, filtered, once a member of that
        // group had a draw rejected (see `TokenSampler::choose`).
        let mut redrawn: Vec<(i32, Option<LlamaTokenDataArray>)> = Vec::new();
        let n_vocab = model.n_vocab() as usize;
        loop {
            // (group, token) -> members, in first-member order.
            let mut next: Vec<(usize, LlamaToken, Vec<usize>)> = Vec::new();
            spare.extend(filtered.drain(..).map(|(_, buf)| buf));
            redrawn.clear();
            for (i, c) in cands.iter_mut().enumerate() {
                if c.finish.is_some() {
                    continue;
                }
                if abandon {
                    c.finish = Some(FinishReason::Abandoned);
                    continue;
                }
                if cancelled {
                    c.finish = Some(FinishReason::Cancelled);
                    continue;
                }
                if c.gen_tokens == params.max_tokens as usize {
                    c.finish = Some(FinishReason::Length);
                    continue;
                }
                let token = if plain_argmax {
                    argmax(self.logits_ith(logits_idx[i]))
                } else {
                    // Equal logits index = equal history (see `TokenSampler`): the first
                    // member of each group filters, every member chooses.
                    let at = logits_idx[i];
                    let p = match filtered.iter().position(|(idx, _)| *idx == at) {
                        Some(p) => p,
                        None => {
                            let buf = spare.pop().unwrap_or_else(|| {
                                LlamaTokenDataArray::new(Vec::with_capacity(n_vocab), false)
                            });
                            let f = samplers[i].filter(self.logits_ith(at), buf);
                            filtered.push((at, f));
                            filtered.len() - 1
                        }
                    };
                    let q = match redrawn.iter().position(|(idx, _)| *idx == at) {
                        Some(q) => q,
                        None => {
                            redrawn.push((at, None));
                            redrawn.len() - 1
                        }
                    };
                    samplers[i].choose(&filtered[p].1, self.logits_ith(at), &mut redrawn[q].1)
                };
                c.gen_tokens += 1;
                if !params.ignore_eog && vocab.is_eog(token) {
                    c.finish = Some(FinishReason::EndOfText);
                    continue;
                }
                let piece = c.decoder.push(&vocab.token_to_piece(token, false, None));
                let (emit, hit) = c.stops.push(&piece);
                c.text.push_str(&emit);
                if !emit.is_empty() && !on_text(i, &emit) {
                    cancelled = true;
                }
                if let Some(s) = hit {
                    c.finish = Some(FinishReason::Stop);
                    c.stop = Some(s.to_owned());
                } else if c.gen_tokens == params.max_tokens as usize {
                    // Not evaluated: nothing will be sampled after it.
                    c.finish = Some(FinishReason::Length);
                } else if let Some(g) = next
                    .iter_mut()
                    .find(|(g, t, _)| *g == group[i] && *t == token)
                {
                    g.2.push(i);
                } else if cells >= n_ctx {
                    // No cell left to evaluate it in: the reply ends here, visibly.
                    c.finish = Some(FinishReason::ContextFull);
                } else {
                    next.push((group[i], token, vec![i]));
                    cells += 1;
                }
            }
            for (i, c) in cands.iter_mut().enumerate() {
                if reported[i] || c.finish.is_none() || c.finish == Some(FinishReason::Abandoned) {
                    continue;
                }
                reported[i] = true;
                c.flush(&mut |t| on_text(i, t));
                if abandon || cancelled {
                    continue;
                }
                let done = Completion {
                    text: c.text.clone(),
                    finish_reason: c.finish.unwrap_or(FinishReason::Length),
                    stop: c.stop.clone(),
                    stats: CallStats::default(),
                };
                let t = Instant::now();
                let after = on_done(i, &done);
                in_callbacks += t.elapsed();
                abandon |= after.stop;
                to_release.extend(after.release);
            }
            if !to_release.is_empty() {
                let ended: Vec<bool> = cands.iter().map(|c| c.finish.is_some()).collect();
                for r in to_release.drain(..) {
                    let freed = self.release_candidate(r, &ended, prompt.len())?;
                    cells = cells.saturating_sub(freed);
                }
            }
            if abandon {
                for c in cands.iter_mut().filter(|c| c.finish.is_none()) {
                    c.finish = Some(FinishReason::Abandoned);
                }
                next.clear();
            }
            if next.is_empty() {
                break;
            }
            self.batch_clear();
            for (j, (_, token, members)) in next.iter().enumerate() {
                // Members of a group have equal histories, hence equal positions.
                let pos = self.cached[members[0]].len() as i32;
                let seqs: Vec<i32> = members.iter().map(|&m| m as i32).collect();
                self.batch_add(*token, pos, &seqs, true)?;
                for &m in members {
                    logits_idx[m] = j as i32;
                    group[m] = j;
                }
            }
            let t_decode = Instant::now();
            self.decode()?;
            in_decode += t_decode.elapsed();
            positions += 1;
            evaluated += next.len();
            for (_, token, members) in next {
                for m in members {
                    self.cached[m].push(token);
                }
            }
        }
        self.rest();
        let gen_ms = t1.elapsed().saturating_sub(in_callbacks).as_secs_f64() * 1e3;
        tracing::debug!(
            n,
            positions,
            evaluated,
            mean_width = evaluated as f64 / positions.max(1) as f64,
            grammar_redraws = samplers.iter().map(|s| s.redraws).sum::<usize>(),
            gen_ms,
            decode_ms = in_decode.as_secs_f64() * 1e3,
            "parallel decoding"
        );
        Ok(cands
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                if !reported[i] {
                    c.flush(&mut |t| on_text(i, t));
                }
                Completion {
                    text: c.text,
                    finish_reason: c.finish.unwrap_or(FinishReason::Length),
                    stop: c.stop,
                    stats: CallStats {
                        prompt_tokens: prompt.len(),
                        cached_tokens: reuse,
                        prompt_ms,
                        gen_tokens: c.gen_tokens,
                        gen_ms,
                        decoded_tokens: evaluated,
                    },
                }
            })
            .collect())
    }

    /// Frees the cells of ended candidate `i`'s generated tokens (the prompt stays) and
    /// returns how many cells became free: those no other candidate still holds (equal
    /// histories share their cells, see `complete_parallel_until`).
    pub(super) fn release_candidate(
        &mut self,
        i: usize,
        ended: &[bool],
        prompt_len: usize,
    ) -> Result<usize> {
        let n = ended.len();
        if i >= n || !ended[i] {
            return Err(EngineError::InvalidParameter(format!(
                "candidate {i} of {n} cannot be released: only ended candidates can"
            )));
        }
        if self.released[i] {
            return Ok(0);
        }
        let held = self.cached[i].len();
        let shared = (0..n)
            .filter(|&j| j != i && !self.released[j])
            .map(|j| common_prefix(&self.cached[i], &self.cached[j]))
            .max()
            .unwrap_or(0)
            .max(prompt_len);
        self.ctx
            .clear_kv_cache_seq(Some(i as u32), Some(prompt_len as u32), None)
            .map_err(llama_err)?;
        self.cached[i].truncate(prompt_len);
        self.released[i] = true;
        Ok(held.saturating_sub(shared))
    }
}
