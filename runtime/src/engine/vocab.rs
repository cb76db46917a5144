//! Token ids back to text, and the end-of-generation test: what training data needs to check
//! that its token sequences say what the conversation says.

use llama_cpp_2::token::LlamaToken;

use super::utf8::Utf8Decoder;
use super::Model;

impl Model {
    /// The text of `tokens`, as the engine streams it (characters split across tokens joined;
    /// special tokens such as `<|im_end|>` written out as their text).
    pub fn detokenize(&self, tokens: &[LlamaToken]) -> String {
        let vocab = self.inner.vocab();
        let mut decoder = Utf8Decoder::default();
        let mut text = String::new();
        for &t in tokens {
            text.push_str(&decoder.push(&vocab.token_to_piece(t, true, None)));
        }
        text.push_str(&decoder.finish());
        text
    }

    /// Whether `token` ends a reply (end of turn or of text).
    pub fn is_end_of_generation(&self, token: LlamaToken) -> bool {
        self.inner.vocab().is_eog(token)
    }
}
