//! Agent distillation, offline (Kang et al. 2025, arXiv 2505.17612): teacher trajectories,
//! real teacher data imported into the same format, correctness filtering, and tokenized
//! training datasets with assistant-only loss masks.
//!
//! Every stage reads and writes one trajectory format ([`trajectory`]): the lines `small-agent
//! ask --trajectory` writes, plus ids, gold answers and provenance. This crate depends on the
//! runtime (its engine renders and tokenizes, its agent runs the teacher), never the reverse.
#![warn(missing_docs)]

pub mod dataset;
pub mod filter;
pub mod generate;
pub mod import;
pub mod student;
pub mod trajectory;
