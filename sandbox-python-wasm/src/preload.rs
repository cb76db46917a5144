//! Packages that take long to import in the sandbox, and finding which ones a snippet imports.
//!
//! Why: self-consistent action generation runs each candidate's code on its own fork of the
//! step's session. When the candidates of a math step each start with `import sympy`, every
//! fork imports it again (~0.8 s each in the full flavour on a 2-core x86 machine, several
//! seconds on a small ARM board). Importing it once into the session before forking, with
//! [`crate::Session::preload`], lets every later fork find it in the module cache.

/// Allowed packages whose import costs far more than a fork (hundreds of milliseconds): the
/// ones worth importing into a session before forking it.
pub const SLOW_IMPORTS: &[&str] = &["sympy", "numpy"];

/// The packages of [`SLOW_IMPORTS`] that `code` imports (`import sympy as sp`,
/// `from numpy.linalg import norm`, `import math, sympy`, also inside indented blocks), each
/// once, in [`SLOW_IMPORTS`]' order. A line-based reading, not a parse: an import inside a
/// string literal counts too, which only costs an unneeded preload.
pub fn slow_imports(code: &str) -> Vec<&'static str> {
    let mut found = [false; SLOW_IMPORTS.len()];
    for line in code.lines() {
        // Statements joined with `;` on one line.
        for stmt in line.split(';') {
            let stmt = stmt.trim();
            let names: Vec<&str> = if let Some(rest) = stmt.strip_prefix("import ") {
                rest.split(',')
                    .filter_map(|part| part.split_whitespace().next())
                    .collect()
            } else if let Some(rest) = stmt.strip_prefix("from ") {
                rest.split_whitespace().next().into_iter().collect()
            } else {
                continue;
            };
            for name in names {
                let top = name.split('.').next().unwrap_or(name);
                if let Some(i) = SLOW_IMPORTS.iter().position(|s| *s == top) {
                    found[i] = true;
                }
            }
        }
    }
    SLOW_IMPORTS
        .iter()
        .zip(found)
        .filter_map(|(name, f)| f.then_some(*name))
        .collect()
}

/// The snippet [`crate::Session::preload`] runs: imports through the guest's guarded
/// `__import__` (so the allow-list applies as to any snippet) and evaluates to `None`, so it
/// binds no name and reports no value.
pub(crate) fn preload_source(modules: &[&str]) -> String {
    let calls: Vec<String> = modules
        .iter()
        .map(|m| format!("__import__({})", crate::session::py_str(m)))
        .collect();
    format!("({},) and None\n", calls.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_import_forms_are_found() {
        assert_eq!(
            slow_imports("import sympy as sp\nx = sp.Symbol('x')"),
            ["sympy"]
        );
        assert_eq!(slow_imports("from sympy import symbols, solve"), ["sympy"]);
        assert_eq!(
            slow_imports("from numpy.linalg import norm\nimport math, sympy"),
            ["sympy", "numpy"]
        );
        assert_eq!(
            slow_imports("def f():\n    import numpy as np\n    return np.zeros(2)"),
            ["numpy"]
        );
        assert_eq!(slow_imports("import math; import numpy"), ["numpy"]);
        assert_eq!(slow_imports("import sympy\nimport sympy"), ["sympy"]);
    }

    #[test]
    fn other_modules_and_lookalikes_are_not() {
        assert!(slow_imports("import math\nprint(math.pi)").is_empty());
        assert!(slow_imports("import sympyx\nfrom numpyish import a").is_empty());
        assert!(slow_imports("x = 'sympy'\nimported = 1").is_empty());
        assert!(slow_imports("").is_empty());
    }

    #[test]
    fn the_preload_snippet_is_one_expression_that_is_none() {
        assert_eq!(
            preload_source(&["sympy", "numpy"]),
            "(__import__(\"sympy\"), __import__(\"numpy\"),) and None\n"
        );
    }
}
