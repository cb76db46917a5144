//! A real `llama-server` (llama.cpp's OpenAI-compatible server, built by
//! scripts/build-llama-server.sh) started on loopback for a test. Shared by the runtime's and
//! the distiller's test binaries (`#[path]` module).
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to load the model and answer `/health`.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(120);

/// The installed llama-server; fails with the fix when it is missing.
pub fn llama_server_path() -> PathBuf {
    let home = small_agent_models::Store::from_env()
        .unwrap()
        .home()
        .to_path_buf();
    let path = home.join("tools/llama-server");
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-llama-server.sh (scripts/setup.sh --dev builds it)",
        path.display()
    );
    path
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `llama-server` process serving the default model on loopback; killed on drop.
pub struct LlamaServer {
    child: Child,
    log: tempfile::NamedTempFile,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl LlamaServer {
    /// Starts the server with `parallel` slots and waits until it answers `/health`.
    pub fn start(model: &Path, parallel: usize) -> Self {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let ctx = 4096 * parallel;
        let child = Process::new(llama_server_path())
            .args(["-m", &model.display().to_string()])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--parallel", &parallel.to_string(), "-c", &ctx.to_string()])
            // One thread: tests run side by side, and ggml's threads spin at every barrier.
            .args(["--threads", "1", "--no-ui"])
            .stdout(Stdio::from(log.reopen().unwrap()))
            .stderr(Stdio::from(log.reopen().unwrap()))
            .spawn()
            .unwrap();
        let mut server = Self {
            child,
            log,
            url: format!("http://127.0.0.1:{port}"),
        };
        let t0 = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("llama-server exited with {status}:\n{}", server.log_text());
            }
            if let Ok(resp) = ureq::get(&format!("{}/health", server.url)).call() {
                if resp.status() == 200 {
                    break;
                }
            }
            assert!(
                t0.elapsed() < SERVER_START_TIMEOUT,
                "llama-server did not become healthy in {SERVER_START_TIMEOUT:?}:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    /// What the server has logged so far.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        let _ = self.log.reopen().and_then(|mut f| f.read_to_string(&mut s));
        s
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
