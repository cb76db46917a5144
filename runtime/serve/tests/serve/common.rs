//! The server process and small HTTP helpers (ureq for ordinary requests, raw TCP where a
//! test must control every header, e.g. `Host`).
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use serde_json::Value;

/// A running `small-agent-serve`; killed when dropped (and when the test process dies).
pub struct Server {
    pub child: Child,
    pub port: u16,
    /// Everything it wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server with `args` (plus `--port 0`, and `--threads 1` unless `args` set
    /// threads) and waits until it listens.
    ///
    /// One decoding thread per session: the test harness runs several servers (and other
    /// tests' models) at once, and ggml's worker threads spin at every barrier of a graph,
    /// so two multi-threaded models on the same cores wait out each other's time slices at
    /// every one of a token's ~1,500 barriers. One thread has no barriers.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with_env(args, &[])
    }

    /// [`Server::start`] with the cores shared out over the sessions as a user's server
    /// does (the benchmarks, which run alone).
    pub fn start_sharing_cores(args: &[&str]) -> Server {
        Self::spawn(args, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut all = args.to_vec();
        if !args.iter().any(|a| *a == "--threads" || *a == "-t") {
            all.extend(["--threads", "1"]);
        }
        Self::spawn(&all, env)
    }

    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_small-agent-serve"));
        cmd.args(["--port", "0"])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn,small_agent_serve=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The server dies with the test process, even when a shared one is never dropped.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = spawn_kept(cmd);
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let port = rest
                        .split('/')
                        .next()
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok());
                    let _ = tx.send(port);
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
            let _ = tx.send(None);
        });
        let port = rx
            .recv_timeout(Duration::from_secs(300))
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "the server did not start; its log:\n{}",
                    log.lock().unwrap()
                )
            });
        Server { child, port, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn health(&self) -> Value {
        get_json(&self.url("/health"))
    }

    /// Waits until no session is busy (a session that never comes back fails the test).
    pub fn wait_idle(&self, within: Duration) {
        let t0 = Instant::now();
        loop {
            let h = self.health();
            if h["busy"] == 0 && h["queued"] == 0 {
                return;
            }
            assert!(
                t0.elapsed() < within,
                "sessions still busy after {within:?}: {h}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A counter of `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let text = ureq::get(&self.url("/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
            .parse()
            .unwrap()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t0.elapsed() < within,
                "the server did not stop within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns on a thread that lives as long as the test process: the parent-death signal
/// follows the spawning thread, and a test's own thread ends with the test.
fn spawn_kept(cmd: Command) -> Child {
    type Req = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<std::sync::mpsc::Sender<Req>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Req>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        });
        Mutex::new(tx)
    });
    let (reply, child) = std::sync::mpsc::channel();
    tx.lock().unwrap().send((cmd, reply)).unwrap();
    child.recv().unwrap().expect("start small-agent-serve")
}

/// The server most tests share: 2 sessions, queue 8, the defaults otherwise.
pub fn shared() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| Server::start(&["--sessions", "2", "--timeout", "20"]))
}

pub fn get_json(url: &str) -> Value {
    ureq::get(url).call().unwrap().into_json().unwrap()
}

/// POSTs JSON; returns the status and the body as JSON (error statuses included).
pub fn post_json(url: &str, body: &Value) -> (u16, Value) {
    match ureq::post(url).send_json(body.clone()) {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

/// A raw HTTP/1.1 exchange: `head` is the request line and headers (without the blank
/// line); returns the status, the headers (lower-case names) and the body.
pub fn raw(port: u16, head: &str, body: &[u8]) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = head.trim_end().replace('\n', "\r\n");
    req.push_str(&format!(
        "\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (e.g. 413) before it has read the whole body.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub data: String,
    /// When it arrived.
    pub at: Instant,
}

impl Sse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| {
            panic!("event {} data is not JSON ({e}): {}", self.event, self.data)
        })
    }
}

/// Reads SSE events from a response body, calling `f` for each until it returns `false` or
/// the stream ends.
pub fn read_sse(reader: impl Read, mut f: impl FnMut(&Sse) -> bool) {
    let mut r = BufReader::new(reader);
    let mut event = String::from("message");
    let mut data: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            if !data.is_empty() {
                let e = Sse {
                    event: std::mem::replace(&mut event, "message".into()),
                    data: data.join("\n"),
                    at: Instant::now(),
                };
                data.clear();
                if !f(&e) {
                    return;
                }
            }
            event = "message".into();
            continue;
        }
        if let Some(v) = l.strip_prefix("event:") {
            event = v.trim().to_owned();
        } else if let Some(v) = l.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
        }
    }
}

/// Starts an agent run with SSE; returns the response reader.
pub fn start_run(server: &Server, body: &Value) -> Box<dyn Read + Send> {
    let r = ureq::post(&server.url("/v1/agent/runs"))
        .set("Accept", "text/event-stream")
        .send_json(body.clone())
        .unwrap_or_else(|e| panic!("POST /v1/agent/runs: {e}"));
    assert_eq!(r.status(), 200);
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("text/event-stream"),
        "{:?}",
        r.header("content-type")
    );
    r.into_reader()
}

/// Runs a question to the end with SSE; returns every event.
pub fn run_all(server: &Server, body: &Value) -> Vec<Sse> {
    let mut all = Vec::new();
    read_sse(start_run(server, body), |e| {
        all.push(e.clone());
        true
    });
    all
}

/// Where the server binary is (for tests of the CLI).
pub fn server_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_small-agent-serve"))
}

/// A grammar that admits exactly one step running `code` (as the runtime's e2e tests force
/// code): the real model decodes it, the real sandbox runs it.
pub fn forced(code: &str) -> String {
    let lit = format!("Thought: I will run it.\nCode:\n```py\n{code}\n```<end_code>");
    format!("root ::= {}", serde_json::to_string(&lit).unwrap())
}

/// A run whose code loops until stopped (the sandbox runs it for up to --timeout).
pub fn endless_run() -> Value {
    serde_json::json!({
        "question": "Wait forever.",
        "max_steps": 1,
        "grammar_gbnf": forced("import time\nwhile True:\n    time.sleep(0.01)"),
    })
}
