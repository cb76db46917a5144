//! AdamW over the run's trainable parameters, one state per parameter, kept in the order of
//! [`super::params::slots`]. The update itself is burn's (`burn::optim::AdamW`); the states
//! are held here so that a checkpoint can store them beside the weights by name and a
//! resumed run continues bit for bit.

use burn::module::Param;
use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, Optimizer};
use burn::tensor::{Tensor, TensorData};

use super::config::TrainConfig;
use super::params::Slot;
use crate::error::{Result, StudentError};
use crate::model::tensor_to_vec;

/// The optimiser's state of one parameter.
#[derive(Clone)]
pub(crate) enum State {
    /// No update yet.
    Empty,
    /// A vector's moments.
    Vector(AdamWState<1>),
    /// A matrix's moments.
    Matrix(AdamWState<2>),
}

/// A gradient of either rank (accumulated over a step's examples).
#[derive(Clone)]
pub(crate) enum Grad {
    Vector(Tensor<1>),
    Matrix(Tensor<2>),
}

impl Grad {
    fn add(self, other: Grad) -> Grad {
        match (self, other) {
            (Grad::Vector(a), Grad::Vector(b)) => Grad::Vector(a + b),
            (Grad::Matrix(a), Grad::Matrix(b)) => Grad::Matrix(a + b),
            _ => unreachable!("a parameter's gradients have its rank"),
        }
    }

    fn squared_norm(&self) -> Tensor<1> {
        match self {
            Grad::Vector(g) => g.clone().square().sum(),
            Grad::Matrix(g) => g.clone().square().sum(),
        }
    }

    fn scaled(self, factor: f32) -> Grad {
        match self {
            Grad::Vector(g) => Grad::Vector(g.mul_scalar(factor)),
            Grad::Matrix(g) => Grad::Matrix(g.mul_scalar(factor)),
        }
    }
}

/// Reads the gradient of each slot out of `grads` (removing it) and adds it to `acc`.
pub(crate) fn accumulate(
    slots: &[(String, Slot<'_>)],
    grads: &mut burn::tensor::Gradients,
    acc: &mut [Option<Grad>],
) {
    for ((_, slot), total) in slots.iter().zip(acc.iter_mut()) {
        let g = match slot {
            Slot::Vector(p) => p.val().grad_remove(grads).map(Grad::Vector),
            Slot::Matrix(p) => p.val().grad_remove(grads).map(Grad::Matrix),
        };
        if let Some(g) = g {
            *total = Some(match total.take() {
                Some(t) => t.add(g),
                None => g,
            });
        }
    }
}

/// AdamW with its states.
pub(crate) struct AdamWStates {
    optimizer: AdamW,
    pub(crate) states: Vec<State>,
    max_grad_norm: Option<f32>,
}

impl AdamWStates {
    pub(crate) fn new(config: &TrainConfig, n_params: usize) -> Self {
        let optimizer = AdamWConfig::new()
            .with_beta_1(config.beta1)
            .with_beta_2(config.beta2)
            .with_epsilon(config.epsilon)
            .with_weight_decay(config.weight_decay)
            .build();
        Self {
            optimizer,
            states: vec![State::Empty; n_params],
            max_grad_norm: config.max_grad_norm,
        }
    }

    /// One update of every slot with its accumulated gradient (slots without one are left
    /// as they are); clips the global norm first. Returns the norm before clipping.
    pub(crate) fn step(
        &mut self,
        slots: &mut [(String, Slot<'_>)],
        grads: Vec<Option<Grad>>,
        lr: f64,
    ) -> f32 {
        let norm = grads
            .iter()
            .flatten()
            .map(Grad::squared_norm)
            .reduce(|a, b| a + b)
            .map_or(0.0, |s| s.into_scalar::<f32>().sqrt());
        let clip = match self.max_grad_norm {
            Some(max) if norm > max => max / (norm + 1e-6),
            _ => 1.0,
        };
        for (((_, slot), grad), state) in slots.iter_mut().zip(grads).zip(self.states.iter_mut()) {
            let Some(grad) = grad else { continue };
            let grad = if clip < 1.0 { grad.scaled(clip) } else { grad };
            match (slot, grad) {
                (Slot::Vector(p), Grad::Vector(g)) => {
                    let previous = match std::mem::replace(state, State::Empty) {
                        State::Vector(s) => Some(s),
                        _ => None,
                    };
                    let (value, next) = self.optimizer.step(lr, p.val().inner(), g, previous);
                    replace_param(p, value);
                    *state = next.map_or(State::Empty, State::Vector);
                }
                (Slot::Matrix(p), Grad::Matrix(g)) => {
                    let previous = match std::mem::replace(state, State::Empty) {
                        State::Matrix(s) => Some(s),
                        _ => None,
                    };
                    let (value, next) = self.optimizer.step(lr, p.val().inner(), g, previous);
                    replace_param(p, value);
                    *state = next.map_or(State::Empty, State::Matrix);
                }
                _ => unreachable!("a parameter's gradient has its rank"),
            }
        }
        norm
    }
}

/// Gives `param` a new value (keeping its id), tracked for the next backward pass.
pub(crate) fn replace_param<const D: usize>(param: &mut Param<Tensor<D>>, value: Tensor<D>) {
    *param = Param::initialized(param.id, value.autodiff().require_grad());
}

/// AdamW's step count and its two moments' values, as a checkpoint stores them.
pub(crate) type Moments = (usize, Vec<f32>, Vec<f32>);

/// A state as its [`Moments`], for a checkpoint.
pub(crate) fn export_state(state: &State) -> Result<Option<Moments>> {
    fn moments<const D: usize>(s: &AdaptiveMomentumState<D>) -> Result<Moments> {
        Ok((
            s.time,
            tensor_to_vec(s.moment_1.clone())?,
            tensor_to_vec(s.moment_2.clone())?,
        ))
    }
    Ok(match state {
        State::Empty => None,
        State::Vector(s) => Some(moments(&s.momentum)?),
        State::Matrix(s) => Some(moments(&s.momentum)?),
    })
}

/// A state of a parameter of `shape` from checkpointed values.
pub(crate) fn import_state(
    shape: &[usize],
    time: usize,
    m1: Vec<f32>,
    m2: Vec<f32>,
    device: &burn::tensor::Device,
) -> Result<State> {
    let n: usize = shape.iter().product();
    if m1.len() != n || m2.len() != n {
        return Err(StudentError::InvalidInput(format!(
            "optimiser moments of {} and {} values for a parameter of shape {shape:?}",
            m1.len(),
            m2.len()
        )));
    }
    Ok(match *shape {
        [a] => State::Vector(AdamWState::new(AdaptiveMomentumState::new(
            time,
            Tensor::<1>::from_data(TensorData::new(m1, [a]), device),
            Tensor::<1>::from_data(TensorData::new(m2, [a]), device),
        ))),
        [a, b] => State::Matrix(AdamWState::new(AdaptiveMomentumState::new(
            time,
            Tensor::<2>::from_data(TensorData::new(m1, [a, b]), device),
            Tensor::<2>::from_data(TensorData::new(m2, [a, b]), device),
        ))),
        _ => {
            return Err(StudentError::InvalidInput(format!(
                "a parameter of shape {shape:?}"
            )))
        }
    })
}
