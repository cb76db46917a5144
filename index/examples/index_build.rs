//! Builds a shard with a progress bar and prints the final summary:
//! `cargo run --release -p small-agent-index --example index_build -- INPUT OUT [FORMAT]`.

use std::path::PathBuf;

use small_agent_index::{build_shard, BuildOptions, Format, IngestOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(input), Some(out)) = (args.first(), args.get(1)) else {
        return Err("usage: index_build INPUT OUT [FORMAT]".into());
    };
    let input = PathBuf::from(input);
    let format = match args.get(2) {
        Some(f) => f.parse::<Format>()?,
        None => Format::detect(&input)?,
    };
    let opts = BuildOptions {
        ingest: IngestOptions {
            progress: true,
            ..IngestOptions::default()
        },
        ..BuildOptions::default()
    };
    let report = build_shard(&input, format, &PathBuf::from(out), &opts)?;
    eprintln!("{}", report.stats.summary());
    for m in &report.stats.malformed {
        eprintln!("  {}:{}: {}", input.display(), m.line, m.reason);
    }
    Ok(())
}
