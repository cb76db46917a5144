//! The sandbox benchmark behind `small-agent bench sandbox`: first and later new sessions,
//! warm `print(1)`, fork, the memory an idle session holds, and CPU-bound snippets, each
//! compared with native CPython run as a subprocess on the same snippets in the same run.

use crate::{PythonBackend, Result, SessionOptions};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// CPU-bound snippets: (name, setup run untimed, timed body, whether it is pure Python). The
/// body is run the same way in both interpreters: after the setup, in a warm interpreter. The
/// first is the module-level integer loop the sandbox's target was first stated on; the other
/// pure-Python ones cover calls, strings, dicts, sorting and objects, and sympy is pure-Python
/// library code.
pub const CPU_SNIPPETS: &[(&str, &str, &str, bool)] = &[
    (
        "pure-python loop",
        "",
        "s = 0\nfor i in range(1_000_000):\n    s += i * i % 7\n",
        true,
    ),
    (
        "pure-python recursion",
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)",
        "fib(22)\n",
        true,
    ),
    (
        "pure-python strings",
        "def strings(n):\n    out = []\n    for i in range(n):\n        out.append('item-%d:%s' % (i, str(i * 3)[::-1]))\n    return ','.join(out).count('1')",
        "strings(100_000)\n",
        true,
    ),
    (
        "pure-python dicts",
        "def dicts(n):\n    d = {}\n    for i in range(n):\n        k = 'k' + str(i % 5000)\n        d[k] = d.get(k, 0) + i\n    return sum(d.values())",
        "dicts(100_000)\n",
        true,
    ),
    (
        "pure-python sort with key",
        "xs = [(i * 7919) % 100_003 for i in range(100_000)]",
        "ys = sorted(xs, key=lambda x: -x)\n",
        true,
    ),
    (
        "pure-python objects",
        "class P:\n    __slots__ = ('x', 'y')\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n    def norm(self):\n        return self.x * self.x + self.y * self.y",
        "t = sum(P(i, i + 1).norm() for i in range(100_000))\n",
        true,
    ),
    (
        "numpy matmul 200x200 x10",
        "import numpy as np\na = np.arange(40000, dtype=float).reshape(200, 200) / 40000.0",
        "for _ in range(10):\n    b = a @ a\n",
        false,
    ),
    (
        "sympy solve",
        "import sympy",
        "x = sympy.Symbol('x')\nr = sympy.solve(x**3 - 6*x**2 + 11*x - 6, x)\n",
        true,
    ),
];

/// Candidates of the measured SAG step (the paper's N).
pub const SAG_CANDIDATES: usize = 8;
/// Rounds of the SAG step measure (fewer when the run asks for under 20 repetitions); each
/// runs both ways, the order alternating.
pub const SAG_ROUNDS: usize = 3;
/// What each candidate runs in the SAG step measure: a typical math step's code.
pub const SYMPY_CANDIDATE: &str =
    "import sympy as sp\nx = sp.Symbol('x')\nprint(sp.solve(x**2 - 5*x + 6, x))\n";

/// Milliseconds of one SAG step's code (forks included), medians of [`SAG_ROUNDS`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SagSympy {
    /// Every fork imports sympy itself.
    pub cold_ms: f64,
    /// The session preloads what the candidate imports before each fork.
    pub preloaded_ms: f64,
}

/// Runs [`SAG_CANDIDATES`] candidates of [`SYMPY_CANDIDATE`] on forks of a fresh session, the
/// way the agent does (forks kept until the step ends); `None` when a candidate fails.
fn sag_step(backend: &dyn PythonBackend, preload: bool) -> Result<Option<Duration>> {
    let mut session = backend.open(bench_options())?;
    let started = Instant::now();
    let mut forks = Vec::with_capacity(SAG_CANDIDATES);
    for _ in 0..SAG_CANDIDATES {
        if preload {
            let slow = crate::slow_imports(SYMPY_CANDIDATE);
            session.preload(&slow)?;
        }
        let mut fork = session.fork()?;
        if !fork.exec(SYMPY_CANDIDATE).ok() {
            return Ok(None);
        }
        forks.push(fork);
    }
    let took = started.elapsed();
    drop(forks);
    Ok(Some(took))
}

/// Sample statistics in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// Number of samples.
    pub n: usize,
}

impl Stats {
    fn of(mut v: Vec<Duration>) -> Stats {
        v.sort();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
        Stats {
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            n: v.len(),
        }
    }
}

/// Rounds of the CPU-bound snippets. Each round times a snippet in the sandbox and then in
/// native CPython, back to back; the ratio reported is the median of the rounds' ratios, so
/// that the machine's drift between minutes (seen: ±6% on the native side) cancels out.
pub const CPU_ROUNDS: usize = 5;

/// One CPU-bound snippet's timing in both interpreters.
#[derive(Debug, Clone)]
pub struct CpuRow {
    /// Snippet name.
    pub name: String,
    /// Whether the snippet is pure Python (see [`CPU_SNIPPETS`]).
    pub pure_python: bool,
    /// Sandbox: median over rounds of each round's p50.
    pub sandbox_ms: Option<f64>,
    /// Native: the same (None when native Python lacks the package).
    pub native_ms: Option<f64>,
    /// Each round's sandbox p50 / native p50.
    pub round_ratios: Vec<f64>,
}

impl CpuRow {
    /// sandbox / native: the median of the rounds' ratios.
    pub fn ratio(&self) -> Option<f64> {
        median(self.round_ratios.clone())
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// Everything the benchmark measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Flavour benchmarked.
    pub flavour: &'static str,
    /// Time to obtain the compiled module when the back-end was loaded, and from where.
    pub module_load: (crate::ModuleSource, Duration),
    /// The first `open` of the run. For the lite flavour this also makes the back-end's parked
    /// template when no session was opened before: restored from the cache dir's snapshot, or
    /// booted (and saved) when there is none yet; `first_session_template` says which.
    pub first_session: Duration,
    /// Lite: where the template of the first session came from (None: full, or made earlier).
    pub first_session_template: Option<crate::TemplateSource>,
    /// Opening a new session after the first (full: instance + driver boot; lite: a fork of
    /// the parked template + its configuration turn).
    pub cold_session: Stats,
    /// Resident memory one more idle session costs the process, in MiB (Linux only).
    pub idle_session_rss_mib: Option<f64>,
    /// Native: `python3 -c pass` as a subprocess.
    pub native_cold: Option<Stats>,
    /// Warm `print(1)` in an open session.
    pub warm_print: Stats,
    /// Native: `print(1)` exec'd in a warm native interpreter.
    pub native_warm_print: Option<Stats>,
    /// `Session::fork` after numpy and sympy were imported (None where unsupported).
    pub fork: Option<Stats>,
    /// A SAG step's code when every candidate imports sympy: [`SAG_CANDIDATES`] forks of a
    /// fresh session each running [`SYMPY_CANDIDATE`], without and with
    /// [`crate::Session::preload`] before forking (None where sympy is missing).
    pub sag_sympy: Option<SagSympy>,
    /// CPU-bound snippets.
    pub cpu: Vec<CpuRow>,
}

impl BenchReport {
    /// Geometric mean of the pure-Python snippets' ratios, and how many had one.
    pub fn pure_python_geomean(&self) -> Option<(f64, usize)> {
        let ratios: Vec<f64> = self
            .cpu
            .iter()
            .filter(|c| c.pure_python)
            .filter_map(CpuRow::ratio)
            .collect();
        (!ratios.is_empty()).then(|| {
            let mean_log = ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64;
            (mean_log.exp(), ratios.len())
        })
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "n/a".into());
        writeln!(f, "sandbox benchmark ({} flavour)", self.flavour)?;
        writeln!(
            f,
            "module load: {:?} in {:.1} ms",
            self.module_load.0,
            self.module_load.1.as_secs_f64() * 1e3
        )?;
        writeln!(
            f,
            "{:<28} {:>12} {:>12} {:>8}",
            "measure", "sandbox ms", "native ms", "ratio"
        )?;
        let row = |f: &mut std::fmt::Formatter<'_>, name: &str, s: Option<f64>, n: Option<f64>| {
            let r = match (s, n) {
                (Some(s), Some(n)) if n > 0.0 => format!("{:.2}", s / n),
                _ => "n/a".into(),
            };
            writeln!(f, "{:<28} {:>12} {:>12} {:>8}", name, opt(s), opt(n), r)
        };
        let first = match self.first_session_template {
            Some(crate::TemplateSource::Snapshot) => "first session (snapshot)",
            Some(crate::TemplateSource::Booted) => "first session (booted)",
            None => "first session",
        };
        row(f, first, Some(self.first_session.as_secs_f64() * 1e3), None)?;
        row(
            f,
            "cold session (p50)",
            Some(self.cold_session.p50_ms),
            self.native_cold.map(|s| s.p50_ms),
        )?;
        row(
            f,
            "warm print(1) (p50)",
            Some(self.warm_print.p50_ms),
            self.native_warm_print.map(|s| s.p50_ms),
        )?;
        row(
            f,
            "warm print(1) (p90)",
            Some(self.warm_print.p90_ms),
            self.native_warm_print.map(|s| s.p90_ms),
        )?;
        row(f, "fork (p50)", self.fork.map(|s| s.p50_ms), None)?;
        if let Some(s) = self.sag_sympy {
            writeln!(
                f,
                "{:<28} {:>12.1} {:>12} {:>8.2}  (vs {:.1} ms without preload)",
                format!("SAG step, {SAG_CANDIDATES}x import sympy"),
                s.preloaded_ms,
                "",
                s.preloaded_ms / s.cold_ms,
                s.cold_ms
            )?;
        }
        if let Some(mib) = self.idle_session_rss_mib {
            writeln!(f, "{:<28} {:>12.1}", "idle session RSS (MiB)", mib)?;
        }
        for c in &self.cpu {
            let spread = match (
                c.round_ratios.iter().copied().reduce(f64::min),
                c.round_ratios.iter().copied().reduce(f64::max),
            ) {
                (Some(lo), Some(hi)) => {
                    format!("  ({} rounds: {lo:.2}–{hi:.2})", c.round_ratios.len())
                }
                _ => String::new(),
            };
            writeln!(
                f,
                "{:<28} {:>12} {:>12} {:>8}{spread}",
                c.name,
                opt(c.sandbox_ms),
                opt(c.native_ms),
                opt(c.ratio()).trim_end_matches('0').trim_end_matches('.'),
            )?;
        }
        if let Some((g, n)) = self.pure_python_geomean() {
            writeln!(
                f,
                "{:<28} {:>12} {:>12} {:>8.2}  (geometric mean of {n})",
                "pure python, all", "", "", g
            )?;
        }
        Ok(())
    }
}

/// The process's resident set, from `/proc/self/status` (in kB there, whatever the page size).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resident memory per idle session: eight sessions opened and used once, held together.
fn idle_rss(backend: &dyn PythonBackend) -> Result<Option<f64>> {
    const N: usize = 8;
    let Some(before) = rss_bytes() else {
        return Ok(None);
    };
    let mut held = Vec::new();
    for _ in 0..N {
        let mut s = backend.open(SessionOptions::default())?;
        s.exec("x = 1");
        held.push(s);
    }
    let after = rss_bytes();
    drop(held);
    Ok(after.map(|a| a.saturating_sub(before) as f64 / N as f64 / (1u64 << 20) as f64))
}

/// A native CPython kept running for the whole benchmark: it reads `INDEX REPS` lines (an index
/// into [`CPU_SNIPPETS`], or one past its end for `print(1)`), runs that snippet's setup the
/// first time, times its body `REPS` times with `perf_counter` and answers with the p50 in
/// milliseconds, or `NA` when the setup failed (e.g. numpy missing).
struct NativePython {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

const NATIVE_HARNESS: &str = r#"import json, time, sys, io
snips = json.loads(sys.argv[1])
envs = {}
for line in sys.stdin:
    i, reps = map(int, line.split())
    name, setup, body = snips[i]
    if i not in envs:
        envs.clear()
        g = {}
        try:
            exec(setup, g)
            envs[i] = (g, compile(body, "<bench>", "exec"))
        except Exception:
            envs[i] = None
    if envs[i] is None:
        print("NA", flush=True); continue
    g, code = envs[i]
    ts = []
    for _ in range(reps):
        out, sys.stdout = sys.stdout, io.StringIO()
        t = time.perf_counter(); exec(code, g); ts.append(time.perf_counter() - t)
        sys.stdout = out
    ts.sort()
    print(ts[len(ts) // 2] * 1e3, flush=True)
"#;

/// Index of `print(1)` in the native harness's list.
const NATIVE_PRINT: usize = CPU_SNIPPETS.len();

impl NativePython {
    fn start(python3: &Path) -> Option<Self> {
        use std::process::Stdio;
        let snippets: Vec<serde_json::Value> = CPU_SNIPPETS
            .iter()
            .map(|(n, s, b, _)| serde_json::json!([n, s, b]))
            .chain(std::iter::once(serde_json::json!([
                "print(1)", "", "print(1)"
            ])))
            .collect();
        let mut child = Command::new(python3)
            .arg("-c")
            .arg(NATIVE_HARNESS)
            .arg(serde_json::Value::Array(snippets).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let stdin = child.stdin.take()?;
        let stdout = std::io::BufReader::new(child.stdout.take()?);
        Some(Self {
            child,
            stdin,
            stdout,
        })
    }

    /// p50 of `reps` runs of snippet `index`; None when it cannot run natively.
    fn time(&mut self, index: usize, reps: usize) -> Option<f64> {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{index} {reps}").ok()?;
        self.stdin.flush().ok()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).ok()?;
        line.trim().parse().ok()
    }
}

impl Drop for NativePython {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sessions of the measures after the first: any import, a generous timeout.
fn bench_options() -> SessionOptions {
    SessionOptions {
        limits: crate::Limits {
            allowed_imports: None,
            timeout: Duration::from_secs(120),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Runs the benchmark. `python3` is the native interpreter to compare with (None skips the
/// native side); `reps` is the sample count of the fast measures (CPU snippets use reps/20).
pub fn run(
    backend: &dyn PythonBackend,
    python3: Option<&Path>,
    reps: usize,
) -> Result<BenchReport> {
    let reps = reps.max(5);
    let report = backend.load_report();
    let t = Instant::now();
    drop(backend.open(SessionOptions::default())?);
    let first_session = t.elapsed();
    // Only when this open made the template: otherwise it was a plain fork.
    let first_session_template = match report.template_source {
        None => backend.load_report().template_source,
        Some(_) => None,
    };
    let mut cold = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let s = backend.open(SessionOptions::default())?;
        cold.push(t.elapsed());
        drop(s);
    }
    let idle_session_rss_mib = idle_rss(backend)?;
    let mut session = backend.open(bench_options())?;
    let mut warm = Vec::new();
    for _ in 0..reps {
        let r = session.exec("print(1)");
        warm.push(r.duration);
    }
    let cpu_reps = (reps / 20).max(3);
    let (mut native_cold, mut native_warm, mut native) = (None, None, None);
    // Resolve launchers (pyenv shims, wrappers) to the interpreter itself, so that the cold
    // start compares interpreters, not shell scripts.
    let resolved = python3.and_then(|py| {
        let out = Command::new(py)
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()?;
        let exe = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !exe.is_empty()).then(|| std::path::PathBuf::from(exe))
    });
    if let Some(py) = resolved.as_deref() {
        let mut ts = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            if Command::new(py)
                .args(["-c", "pass"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
            {
                ts.push(t.elapsed());
            }
        }
        if !ts.is_empty() {
            native_cold = Some(Stats::of(ts));
        }
        native = NativePython::start(py);
        if let Some(n) = native.as_mut() {
            native_warm = n.time(NATIVE_PRINT, cpu_reps).map(|ms| Stats {
                p50_ms: ms,
                p90_ms: ms,
                n: cpu_reps,
            });
        }
    }
    let mut cpu = Vec::new();
    // Each snippet runs in a fresh session (natively: a fresh namespace, the previous one
    // dropped), so no snippet pays for the objects an earlier one left (the cyclic GC walks
    // them: sympy's solve measured 1.6x slower after the sort snippet's lists).
    for (i, (name, setup, body, pure_python)) in CPU_SNIPPETS.iter().enumerate() {
        let mut session = backend.open(bench_options())?;
        let setup_ok = session.exec(setup).ok();
        let (mut sandbox_p50s, mut native_p50s, mut round_ratios) = (vec![], vec![], vec![]);
        for _ in 0..CPU_ROUNDS {
            let mut ts = Vec::new();
            if setup_ok {
                for _ in 0..cpu_reps {
                    let r = session.exec(body);
                    if !r.ok() {
                        break;
                    }
                    ts.push(r.duration);
                }
            }
            let sandbox = (ts.len() == cpu_reps).then(|| Stats::of(ts).p50_ms);
            let nat = native.as_mut().and_then(|n| n.time(i, cpu_reps));
            sandbox_p50s.extend(sandbox);
            native_p50s.extend(nat);
            if let (Some(s), Some(n)) = (sandbox, nat) {
                round_ratios.push(s / n);
            }
        }
        cpu.push(CpuRow {
            name: name.to_string(),
            pure_python: *pure_python,
            sandbox_ms: median(sandbox_p50s),
            native_ms: median(native_p50s),
            round_ratios,
        });
    }
    // Forks of a session that imported numpy and sympy, as an agent's session would have.
    for (_, setup, _, _) in CPU_SNIPPETS.iter().filter(|s| s.1.starts_with("import")) {
        session.exec(setup);
    }
    let fork = match session.fork() {
        Ok(first) => {
            drop(first);
            let mut ts = Vec::new();
            for _ in 0..8 {
                let t = Instant::now();
                let f = session.fork()?;
                ts.push(t.elapsed());
                drop(f);
            }
            Some(Stats::of(ts))
        }
        Err(_) => None,
    };
    let mut sag = (Vec::new(), Vec::new());
    // Each round imports sympy nine times (~8 s in the full flavour): a quick run does one.
    for round in 0..(reps / 20).clamp(1, SAG_ROUNDS) {
        for preload in [round % 2 == 1, round % 2 == 0] {
            if let Some(t) = sag_step(backend, preload)? {
                let side = if preload { &mut sag.1 } else { &mut sag.0 };
                side.push(t.as_secs_f64() * 1e3);
            }
        }
    }
    let sag_sympy = match (median(sag.0), median(sag.1)) {
        (Some(cold_ms), Some(preloaded_ms)) => Some(SagSympy {
            cold_ms,
            preloaded_ms,
        }),
        _ => None,
    };
    Ok(BenchReport {
        flavour: backend.flavour().as_str(),
        module_load: (report.module_source, report.module_load),
        first_session,
        first_session_template,
        cold_session: Stats::of(cold),
        idle_session_rss_mib,
        native_cold,
        warm_print: Stats::of(warm),
        native_warm_print: native_warm,
        fork,
        sag_sympy,
        cpu,
    })
}
