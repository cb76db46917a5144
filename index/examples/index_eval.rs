//! Prints the recall/MRR tables: `cargo run --release -p small-agent-index --example index_eval
//! [--features rerank] -- DATA_DIR WORK_DIR [ONNXRUNTIME_SO MODEL_ONNX TOKENIZER_JSON]`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let data = PathBuf::from(args.first().map(String::as_str).unwrap_or("../shared/data"));
    let work = PathBuf::from(
        args.get(1)
            .map(String::as_str)
            .unwrap_or("target/index-eval"),
    );
    #[cfg(feature = "rerank")]
    if args.len() >= 5 {
        use small_agent_index::rerank::{RerankAssets, Reranker};
        let reranker = Reranker::load(&RerankAssets {
            onnxruntime: args[2].clone().into(),
            model: args[3].clone().into(),
            tokenizer: args[4].clone().into(),
        })?;
        let rows = small_agent_index::eval::run_standard(&data, &work, Some(&reranker))?;
        println!("{}", small_agent_index::eval::markdown_table(&rows));
        return Ok(());
    }
    let rows = small_agent_index::eval::run_standard(&data, &work, None)?;
    println!("{}", small_agent_index::eval::markdown_table(&rows));
    Ok(())
}
