//! Every position's logits of a token sequence: the reference side of the student's parity
//! check (`small-agent-student`'s `parity`), which runs the same tokens through its own
//! implementation of the model and compares.

use super::*;

impl<'m> Session<'m> {
    /// The logits after each token of `tokens` (teacher forcing): row `i` is the model's
    /// distribution (unnormalised, `n_vocab` values) of the token that follows `tokens[..=i]`.
    /// The cache is cleared first; sequence 0 then holds `tokens`.
    ///
    /// The rows come from where [`Session::score`]'s do: llama.cpp's output, or the own output
    /// product ([`head`]) when the session computes it (a session opened with
    /// `own_output_head: false` always gives llama.cpp's). They are copied out, so this holds
    /// `tokens.len() * n_vocab` floats (49,152 per token for the default model): keep the
    /// sequence to a few thousand tokens.
    pub fn logits_all(&mut self, tokens: &[LlamaToken]) -> Result<Vec<Vec<f32>>> {
        if tokens.len() > self.n_ctx() as usize {
            return Err(EngineError::ContextOverflow {
                prompt_tokens: tokens.len(),
                n_ctx: self.n_ctx(),
                n_ctx_train: self.model.n_ctx_train(),
            });
        }
        self.clear();
        let step = (self.ctx.n_batch() as usize).max(1);
        let mut rows = Vec::with_capacity(tokens.len());
        for (c, chunk) in tokens.chunks(step).enumerate() {
            self.batch_clear();
            for (j, t) in chunk.iter().enumerate() {
                self.batch_add(*t, (c * step + j) as i32, &[0], true)?;
            }
            self.decode()?;
            for j in 0..chunk.len() {
                rows.push(self.logits_ith(j as i32).to_vec());
            }
            self.cached[0].extend_from_slice(chunk);
        }
        self.rest();
        Ok(rows)
    }
}
