//! Every tensor type the loader dequantises, end to end: a tiny llama model stored in that
//! type, loaded by llama.cpp (its own reading of the blocks) and by the student, compared.

use candle_core::quantized::GgmlDType;
use small_agent_student::parity::{self, ParityInput, ParityOptions};
use small_agent_student::tiny::{write_tiny_gguf, TinySpec};

use crate::default_model_path;

/// Relative logit difference allowed for the tiny models as llama.cpp runs them. llama.cpp
/// rounds the activations of quantised (and BF16) products, the student computes in f32.
/// Measured (2 layers, width 256, 20 tokens): F32 2.0e-4, F16 3.1e-4, BF16 1.8e-3, Q8_0
/// 6.4e-3, Q4_0 8.0e-3, Q4_1 6.1e-3, Q4_K 1.0e-2, Q5_K 9.2e-3, Q6_K 9.2e-3. A misread block
/// layout gives differences of the order of the logits themselves.
const MAX_REL: [(GgmlDType, f32); 9] = [
    (GgmlDType::F32, 1e-3),
    (GgmlDType::F16, 1e-3),
    (GgmlDType::BF16, 5e-3),
    (GgmlDType::Q8_0, 0.03),
    (GgmlDType::Q4_0, 0.03),
    (GgmlDType::Q4_1, 0.03),
    (GgmlDType::Q4K, 0.03),
    (GgmlDType::Q5K, 0.03),
    (GgmlDType::Q6K, 0.03),
];

#[test]
fn every_supported_tensor_type_loads_as_llama_cpp_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = default_model_path();
    let input = [ParityInput::Text(
        "Every tensor type, dequantised: one, two, three, four, five, six.".into(),
    )];
    let mut failures = Vec::new();
    for (ty, bound) in MAX_REL {
        // K-quants pack 256 weights per block: every row must be a multiple of that.
        let spec = TinySpec {
            hidden: 256,
            ffn: 512,
            weight_type: ty,
            ..TinySpec::llama()
        };
        let path = dir.path().join(format!("tiny-{ty:?}.gguf"));
        write_tiny_gguf(&path, &spec, &tokenizer).unwrap();
        let report = parity::compare(&path, &input, &ParityOptions::default()).unwrap();
        let p = &report.prompts[0];
        println!(
            "{ty:?}: {} tokens, max|Δ| {:.3e}, max rel {:.3e}, top-1 {}/{}",
            p.tokens, p.max_abs_diff, p.max_rel_diff, p.top1_agreements, p.tokens
        );
        if !report.all_top1_agree || report.max_rel_diff >= bound {
            failures.push(format!("{ty:?} (bound {bound}): {}", report.render_text()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
