//! The browser test: `browser.js` in headless Chromium against a real server.
//!
//! Needs Debian's `chromium` (`apt-get install -y chromium`) and `playwright-core` from npm
//! (`npm install --prefix ~/.cache/small-agent/node playwright-core@1`, or set
//! `SMALL_AGENT_NODE_MODULES` to a `node_modules` that has it). The screenshot of the
//! answered question goes to `$SMALL_AGENT_SCREENSHOT` when set (the README's
//! `docs/serve-screenshot.png` is made so), else into the test's temporary directory.
use std::path::PathBuf;

use crate::common::Server;

fn node_modules() -> PathBuf {
    if let Ok(p) = std::env::var("SMALL_AGENT_NODE_MODULES") {
        return PathBuf::from(p);
    }
    let home = std::env::var("SMALL_AGENT_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/small-agent")
        });
    home.join("node/node_modules")
}

#[test]
fn the_page_in_headless_chromium() {
    let modules = node_modules();
    assert!(
        modules.join("playwright-core").is_dir(),
        "playwright-core not found in {}: npm install --prefix {} playwright-core@1",
        modules.display(),
        modules.parent().unwrap().display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} not found: apt-get install -y chromium"
    );
    let shot = std::env::var("SMALL_AGENT_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-screenshot.png")
        });
    let _ = std::fs::remove_file(&shot);
    let s = Server::start(&["--sessions", "1", "--timeout", "20"]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/serve/browser.js");
    let out = std::process::Command::new("node")
        .arg(&script)
        .arg(s.url(""))
        .arg(&shot)
        .env("NODE_PATH", &modules)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        s.log.lock().unwrap()
    );
    assert!(stdout.trim_end().ends_with("ok"));
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    eprintln!("screenshot: {}", shot.display());
}
