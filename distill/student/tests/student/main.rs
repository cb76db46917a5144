//! Tests of the student on the real default model and on tiny random models of both
//! architectures, each compared with llama.cpp through the runtime's engine. One test binary;
//! one module per subject.
mod errors;
mod export;
mod qwen2;
mod smollm;
mod train;
mod types;

use std::path::PathBuf;

use small_agent::{ChatMessage, Model};

/// Path of the fetched default model (SmolLM2-135M-Instruct, Q4_1); fails with the fix when
/// it is not installed.
pub fn default_model_path() -> PathBuf {
    let p = small_agent::assets::default_model_path().expect("the asset store is readable");
    assert!(
        p.exists(),
        "the default model {} is not installed: run scripts/setup.sh (or `small-agent models fetch`)",
        p.display()
    );
    p
}

/// An agent conversation as the runtime sends it: the default prompt's system text with the
/// tools filled in, the task, one step with its observation, and the open assistant turn,
/// rendered with the model's own chat template (~500 tokens).
pub fn rendered_agent_conversation(model: &Model) -> String {
    use small_agent::agent::prompt::{fill, PromptTemplate};
    let t = PromptTemplate::builtin();
    let tools = "- web_search(query: str) -> str: searches the local knowledge base and returns \
                 the best passages.\n- final_answer(answer: any): gives the final answer and \
                 ends the task.";
    let question = "In which year was the university attended by the author of \
                    \"The Hobbit\" founded?";
    let messages = [
        ChatMessage::new(
            "system",
            fill(&t.system, &[("tools", tools), ("max_steps", "5")]),
        ),
        ChatMessage::new("user", fill(&t.task, &[("question", question)])),
        ChatMessage::new(
            "assistant",
            "Thought: I need the author of The Hobbit first, then the university.\nCode:\n\
             ```py\nprint(web_search(\"The Hobbit author\"))\n```<end_code>",
        ),
        ChatMessage::new(
            "user",
            fill(
                &t.observation,
                &[(
                    "observation",
                    "[1] (0.91) \"The Hobbit\"\nThe Hobbit is a children's fantasy novel by \
                     J. R. R. Tolkien, published in 1937. Tolkien studied at Exeter College, \
                     Oxford.",
                )],
            ),
        ),
    ];
    model
        .render_chat(&messages, true)
        .expect("the chat template renders")
}
