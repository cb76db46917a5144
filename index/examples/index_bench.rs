//! The 1M-passage speed benchmark (not part of `cargo test`):
//! `cargo run --release -p small-agent-index --example index_bench -- DATA_DIR WORK_DIR
//! [PASSAGES] [PYTHON_WITH_BM25S]`.

use std::path::PathBuf;

use small_agent_index::bench::{self, BenchOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = BenchOptions {
        data_dir: PathBuf::from(args.first().map(String::as_str).unwrap_or("../shared/data")),
        work_dir: PathBuf::from(
            args.get(1)
                .map(String::as_str)
                .unwrap_or("target/index-bench"),
        ),
        passages: args
            .get(2)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(bench::DEFAULT_BENCH_PASSAGES),
        queries: bench::DEFAULT_BENCH_QUERIES,
        seed: bench::DEFAULT_BENCH_SEED,
        threads: 2,
        python: args.get(3).map(PathBuf::from),
    };
    let report = bench::run(&opts)?;
    println!("{}", report.summary());
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
