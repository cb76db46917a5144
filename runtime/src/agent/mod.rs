//! The code agent: Thought → Python code → Observation, with tools, over the engine.
pub mod prompt;
pub mod protocol;
