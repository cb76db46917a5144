//! Interrupting a running guest: a flag word in the guest's memory, tested at every loop head.
//!
//! wasmtime's epoch interruption keeps the epoch counter's address and the deadline live
//! across every function, and in CPython's evaluation loop (one huge function with a loop
//! head per bytecode) those two values are spilled and reloaded at every dispatch: measured,
//! it made a pure-Python loop ~24% slower. This rewrite instead inserts, at the head of every
//! `loop`,
//!
//! ```text
//! i32.const 0  i32.load offset=FLAG_ADDR  if  unreachable  end
//! ```
//!
//! one load relative to the memory base the loop needs anyway. The host raises the flag from
//! the ticker thread once a deadline has passed (see `engine.rs`), so the guest traps at its
//! next loop head; the trap is reported as a timeout because the host raised the flag.
//! Straight-line code and calls always reach a loop head or return, so every unbounded run is
//! stopped (recursion ends at the wasm stack limit).
//!
//! The flag lives in the lowest kilobyte of linear memory, which wasm-ld leaves unused (C's
//! null page: the data starts at `--global-base`, 1024 by default). The rewrite refuses a
//! module whose active data reaches into it. Guest code could only write there through a
//! stray null-pointer store; a cleared flag is raised again at the next tick, and a stray
//! non-zero word merely ends that exec as a timeout.

use crate::{Result, SandboxError};
use std::path::Path;
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{BlockType, CodeSection, Instruction, MemArg};

/// Address of the interrupt flag (an aligned `u32`) in linear memory.
pub const FLAG_ADDR: u32 = 512;
/// Lowest address active data may start at for the flag to be free.
const NULL_PAGE_END: u32 = 1024;

/// Changes whenever the inserted code does; part of the compiled-module cache key.
pub(crate) const TAG: &str = "loop-flag-v1";

struct LoopChecks;

impl Reencode for LoopChecks {
    type Error = std::convert::Infallible;

    fn parse_function_body(
        &mut self,
        code: &mut CodeSection,
        func: wasmparser::FunctionBody<'_>,
    ) -> std::result::Result<(), wasm_encoder::reencode::Error<Self::Error>> {
        let mut f = self.new_function_with_parsed_locals(&func)?;
        let mut reader = func.get_operators_reader()?;
        while !reader.eof() {
            let op = reader.read()?;
            let is_loop = matches!(op, wasmparser::Operator::Loop { .. });
            f.instruction(&RoundtripReencoder.instruction(op)?);
            if is_loop {
                f.instruction(&Instruction::I32Const(0));
                f.instruction(&Instruction::I32Load(MemArg {
                    offset: u64::from(FLAG_ADDR),
                    align: 2,
                    memory_index: 0,
                }));
                f.instruction(&Instruction::If(BlockType::Empty));
                f.instruction(&Instruction::Unreachable);
                f.instruction(&Instruction::End);
            }
        }
        code.function(&f);
        Ok(())
    }
}

fn wrong(path: &Path, reason: impl Into<String>) -> SandboxError {
    SandboxError::WrongModule {
        path: path.to_path_buf(),
        flavour: "interpreter",
        reason: reason.into(),
    }
}

/// Checks that the flag's word is outside every active data segment of memory 0.
fn check_flag_is_free(wasm: &[u8], path: &Path) -> Result<()> {
    let bad = |e: wasmparser::BinaryReaderError| wrong(path, format!("unreadable module: {e}"));
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::DataSection(r) = payload.map_err(bad)? {
            for d in r {
                let d = d.map_err(bad)?;
                if let wasmparser::DataKind::Active {
                    memory_index: 0,
                    offset_expr,
                } = d.kind
                {
                    let mut ops = offset_expr.get_operators_reader();
                    let start =
                        match ops.read().map_err(bad)? {
                            wasmparser::Operator::I32Const { value } => value as u32 as u64,
                            wasmparser::Operator::I64Const { value } => value as u64,
                            // A computed offset cannot be checked: refuse rather than guess.
                            _ => return Err(wrong(
                                path,
                                "a data segment has a computed offset, so the interrupt flag's \
                                 address cannot be shown to be free",
                            )),
                        };
                    let end = start + d.data.len() as u64;
                    if !d.data.is_empty() && start < u64::from(NULL_PAGE_END) && end > 0 {
                        return Err(wrong(
                            path,
                            format!(
                                "data at {start:#x}..{end:#x} overlaps the first {NULL_PAGE_END} \
                                 bytes, where the interrupt flag lives"
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// `wasm` with the flag test at every loop head. `path` only names the module in errors.
pub(crate) fn insert_loop_checks(wasm: &[u8], path: &Path) -> Result<Vec<u8>> {
    check_flag_is_free(wasm, path)?;
    let mut module = wasm_encoder::Module::new();
    LoopChecks
        .parse_core_module(&mut module, wasmparser::Parser::new(0), wasm)
        .map_err(|e| wrong(path, format!("could not rewrite the module: {e}")))?;
    Ok(module.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{
        CodeSection, ConstExpr, DataSection, Function, FunctionSection, MemorySection, MemoryType,
        Module, TypeSection,
    };

    /// A module with one memory, one function `(loop (br 0))`-shaped body with `loops` loops,
    /// and a data segment at `data_at`.
    fn module(loops: usize, data_at: Option<i32>) -> Vec<u8> {
        let mut m = Module::new();
        let mut types = TypeSection::new();
        types.ty().function([], []);
        m.section(&types);
        let mut funcs = FunctionSection::new();
        funcs.function(0);
        m.section(&funcs);
        let mut mems = MemorySection::new();
        mems.memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        m.section(&mems);
        let mut code = CodeSection::new();
        let mut f = Function::new([]);
        for _ in 0..loops {
            f.instruction(&Instruction::Loop(BlockType::Empty));
            f.instruction(&Instruction::End);
        }
        f.instruction(&Instruction::End);
        code.function(&f);
        m.section(&code);
        if let Some(at) = data_at {
            let mut data = DataSection::new();
            data.active(0, &ConstExpr::i32_const(at), b"abcd".iter().copied());
            m.section(&data);
        }
        m.finish()
    }

    fn loads_of_the_flag(wasm: &[u8]) -> usize {
        let mut n = 0;
        for p in wasmparser::Parser::new(0).parse_all(wasm) {
            if let wasmparser::Payload::CodeSectionEntry(body) = p.unwrap() {
                let mut ops = body.get_operators_reader().unwrap();
                while !ops.eof() {
                    if let wasmparser::Operator::I32Load { memarg } = ops.read().unwrap() {
                        assert_eq!(memarg.offset, u64::from(FLAG_ADDR));
                        n += 1;
                    }
                }
            }
        }
        n
    }

    #[test]
    fn every_loop_head_gets_a_valid_flag_check() {
        let out = insert_loop_checks(&module(3, Some(4096)), Path::new("t.wasm")).unwrap();
        wasmparser::Validator::new().validate_all(&out).unwrap();
        assert_eq!(loads_of_the_flag(&out), 3);
        assert_eq!(loads_of_the_flag(&module(3, None)), 0);
    }

    #[test]
    fn a_module_with_data_where_the_flag_lives_is_refused() {
        for at in [0, FLAG_ADDR as i32, 1020] {
            let err = insert_loop_checks(&module(1, Some(at)), Path::new("t.wasm")).unwrap_err();
            assert!(
                matches!(err, SandboxError::WrongModule { .. }),
                "data at {at}: {err}"
            );
        }
        assert!(insert_loop_checks(&module(1, Some(1024)), Path::new("t.wasm")).is_ok());
    }
}
