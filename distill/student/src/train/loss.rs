//! The loss of one example: mean negative log-likelihood of the tokens whose mask is 1,
//! each predicted from the tokens before it. The output head runs only at those positions
//! (a quarter to a half of an agent or CoT example), the largest saving of the step: the
//! head is the model's widest product (49,152 × 576 for SmolLM2).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use super::fused_nll::fused_nll;
use crate::error::{Result, StudentError};
use crate::model::on_cpu;
use crate::model::Student;

/// The positions of an example that carry loss: `p` such that `mask[p + 1] == 1`, as
/// inputs `tokens[..n-1]` and targets `tokens[p + 1]`.
pub fn loss_positions(tokens: &[u32], mask: &[u8]) -> (Vec<i64>, Vec<i64>) {
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for p in 0..tokens.len().saturating_sub(1) {
        if mask[p + 1] == 1 {
            positions.push(p as i64);
            targets.push(i64::from(tokens[p + 1]));
        }
    }
    (positions, targets)
}

/// Sum of the negative log-likelihoods of the masked tokens of one example (a scalar
/// tensor, differentiable when the model is on an autodiff device), and their number;
/// `None` when the example has no masked token after the first.
pub fn example_nll(
    model: &Student,
    tokens: &[u32],
    mask: &[u8],
) -> Result<Option<(Tensor<1>, usize)>> {
    if tokens.len() != mask.len() {
        return Err(StudentError::InvalidInput(format!(
            "an example has {} tokens and {} mask bytes",
            tokens.len(),
            mask.len()
        )));
    }
    let (positions, targets) = loss_positions(tokens, mask);
    if positions.is_empty() {
        return Ok(None);
    }
    let count = positions.len();
    let device = model.device();
    let inputs = model.token_tensor(&[&tokens[..tokens.len() - 1]])?;
    let hidden = model.hidden(inputs);
    let picked = hidden.select(
        1,
        Tensor::<1, Int>::from_data(TensorData::new(positions, [count]), &device),
    );
    let logits = model.head(picked);
    // On the CPU one fused operation (see `fused_nll`); elsewhere burn's operations.
    let nll = if on_cpu(&device) {
        let targets = targets.iter().map(|&t| t as u32).collect();
        fused_nll(logits.reshape([count, model.config.vocab_size]), targets)
    } else {
        let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [1, count, 1]), &device);
        log_softmax(logits, 2).gather(2, targets).sum().neg()
    };
    Ok(Some((nll, count)))
}
