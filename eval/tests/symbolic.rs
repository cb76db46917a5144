//! The symbolic check runs sympy in the WASM sandbox (full interpreter), on real answers of
//! the MATH train files whose equality needs algebra, under a timeout.
use std::{sync::Arc, time::Duration};

use small_agent_eval::{
    math::{math_equal, MathMethod},
    SandboxSympy, SymbolicChecker, SymbolicVerdict,
};
use small_agent_sandbox::{load_backend, Flavour, PythonBackend, PythonRuntimeFiles};

/// The full interpreter from the asset store (fetched by scripts/setup.sh).
fn full() -> Arc<dyn PythonBackend> {
    let catalog = small_agent_models::Catalog::builtin().expect("manifests parse");
    let m = catalog
        .get("python-wasm-full")
        .expect("python-wasm-full manifest")
        .clone();
    let store = small_agent_models::Store::from_env().expect("SMALL_AGENT_HOME resolves");
    assert!(
        store.is_installed(&m),
        "the full Python interpreter is not installed in {}: run scripts/setup.sh or \
         `small-agent models fetch python-wasm-full`",
        store.home().display()
    );
    let sha = m
        .files
        .iter()
        .find(|f| f.path.ends_with("python-snapshot.wasm"))
        .map(|f| f.sha256.clone());
    let files = PythonRuntimeFiles {
        flavour: Flavour::Full,
        wasm: store.file_path(&m, "python-snapshot.wasm"),
        wasm_sha256: sha,
        stdlib_zip: Some(store.file_path(&m, "python-stdlib.zip")),
        site_packages: vec![],
    };
    load_backend(&files, Some(&store.home().join("cache").join("wasm"))).expect("backend loads")
}

#[test]
fn sympy_in_the_sandbox_decides_algebraic_equality() {
    let checker = SandboxSympy::new(full(), Duration::from_secs(20));
    // Gold answers of MATH train items (math_1000: ids 159, 560; math_medium: 287, 54).
    let cases: &[(&str, &str, bool)] = &[
        ("x^2 - x - 1", "-1 - x + x**2", true),
        ("3x^2 - 12", "3(x-2)(x+2)", true),
        ("x^4-16", "(x^2+4)(x-2)(x+2)", true),
        (
            "(-9x^2+x+2)(9x^2+x+2)",
            "-81x^4 - 17x^2 + 4x + 4 + 0",
            false,
        ),
        (
            "(-9x^2+x+2)(9x^2+x+2)",
            "-81*x**4 - 17*x**2 + 4*x + 4 - 18*x**3 + 18*x**3 + x**2 - x**2",
            false,
        ),
        ("\\frac{x}{2}", "x/2", true),
        ("3x^2 - 12", "3x^2 - 11", false),
    ];
    for &(gold, pred, want) in cases {
        let v = math_equal(pred, gold, Some(&checker));
        assert_eq!(v.equal, want, "{pred} vs {gold}: {v:?}");
        if want {
            assert!(
                matches!(v.method, MathMethod::Symbolic | MathMethod::Text),
                "{v:?}"
            );
        }
    }
    // Unparsable input is undecided, not an error of the harness.
    assert!(matches!(
        checker.equivalent("x +* 2", "x"),
        SymbolicVerdict::Undecided(_)
    ));
}

#[test]
fn a_runaway_check_times_out_and_the_checker_recovers() {
    let checker = SandboxSympy::new(full(), Duration::from_millis(1500));
    let t = std::time::Instant::now();
    let v = checker.equivalent("factorint(2**512 + 1 + x - x)", "1");
    assert!(matches!(v, SymbolicVerdict::Undecided(_)), "{v:?}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert_eq!(checker.equivalent("2*x", "x + x"), SymbolicVerdict::Equal);
}
