//! End-to-end tests of small-agent on the real default model (fetched by
//! `scripts/setup.sh`). One test binary; one module per subject.
mod agent;
mod cli;
mod engine;
mod eval;
mod ffi;
mod installed;
mod llama_server;
mod portable;
mod remote;

pub use installed::default_model_path;
