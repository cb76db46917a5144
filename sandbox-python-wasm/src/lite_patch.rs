//! The load-time rewrite of the lite module that makes a parked interpreter reachable.
//!
//! The lite build is a WASI command: it exports `memory`, `_start` and nothing else the host
//! could call into. To run a turn inside an interpreter whose `_start` was stopped on purpose
//! (see `lite.rs`), the host needs two things the module keeps private:
//!
//! - the C shadow-stack pointer (wasm-ld's `__stack_pointer`, global 0): a turn must run below
//!   the parked frames, and a fork must start where its parent stood;
//! - the indirect-function table: CPython's function pointers are table indices, so the C
//!   function behind a Python builtin can be called once its index is read from memory.
//!
//! Both are added as exports; every other section is copied byte for byte. The DWARF in the
//! shipped module cannot name functions instead: the build was post-processed and every
//! `DW_AT_low_pc` and line-table address in it is zero.
//!
//! The rewrite also proves that the table never changes at run time (no table-writing
//! instruction anywhere in the code), which is what lets a fork skip copying it.

use crate::{Result, SandboxError};
use std::path::Path;
use wasm_encoder::{ExportKind, ExportSection, RawSection};
use wasmparser::{ExternalKind, Operator, Parser, Payload, TypeRef, ValType};

/// Changes whenever the rewrite does: it is part of the compiled-module cache key, so a cached
/// compile of the plain module (or of an older rewrite) is never taken for this one.
pub(crate) const PATCH_TAG: &str = "lite-park-v1+loop-flag-v1";
/// Export name of the shadow-stack pointer (wasm-ld's own name for it).
pub(crate) const SP_EXPORT: &str = "__stack_pointer";
/// Export name of the function table (wasm-ld's name when asked to export it).
pub(crate) const TABLE_EXPORT: &str = "__indirect_function_table";

/// What the rewrite found, for tests and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PatchInfo {
    /// Initial value of the shadow-stack pointer (the top of the C stack).
    pub stack_top: u32,
    /// Size of the function table, in entries.
    pub table_size: u64,
}

fn wrong(path: &Path, reason: impl Into<String>) -> SandboxError {
    SandboxError::WrongModule {
        path: path.to_path_buf(),
        flavour: "lite",
        reason: reason.into(),
    }
}

/// The rewritten module, with the interrupt check at every loop head as well
/// ([`crate::interrupt`]). `path` only names the module in errors.
pub(crate) fn patch(wasm: &[u8], path: &Path) -> Result<Vec<u8>> {
    let (bytes, _) = patch_with_info(wasm, path)?;
    crate::interrupt::insert_loop_checks(&bytes, path)
}

pub(crate) fn patch_with_info(wasm: &[u8], path: &Path) -> Result<(Vec<u8>, PatchInfo)> {
    let bad = |e: wasmparser::BinaryReaderError| wrong(path, format!("unreadable module: {e}"));
    let mut out = wasm_encoder::Module::new();
    let mut exports_done = false;
    let mut stack_top = None;
    let mut table_size = None;
    let mut has_start = false;
    let mut has_memory = false;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(bad)?;
        match &payload {
            Payload::Version { encoding, .. } if *encoding != wasmparser::Encoding::Module => {
                return Err(wrong(path, "it is a component, not a core module"));
            }
            Payload::ImportSection(r) => {
                for imports in r.clone() {
                    for imp in imports.map_err(bad)? {
                        let (_, imp) = imp.map_err(bad)?;
                        match imp.ty {
                            TypeRef::Global(_) => {
                                return Err(wrong(
                                    path,
                                    "it imports a global, so global 0 is not its own stack pointer",
                                ))
                            }
                            TypeRef::Table(_) => {
                                return Err(wrong(path, "it imports its function table"))
                            }
                            _ => {}
                        }
                    }
                }
            }
            Payload::TableSection(r) => {
                let tables = r
                    .clone()
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad)?;
                match tables.as_slice() {
                    [t] if t.ty.element_type.is_func_ref() && !t.ty.table64 => {
                        table_size = Some(t.ty.initial)
                    }
                    _ => {
                        return Err(wrong(
                            path,
                            "it does not have exactly one 32-bit function table",
                        ))
                    }
                }
            }
            Payload::GlobalSection(r) => {
                if let Some(g) = r.clone().into_iter().next() {
                    let g = g.map_err(bad)?;
                    if g.ty.content_type != ValType::I32 || !g.ty.mutable || g.ty.shared {
                        return Err(wrong(
                            path,
                            "its global 0 is not a mutable i32 (the C stack pointer)",
                        ));
                    }
                    let mut ops = g.init_expr.get_operators_reader();
                    if let (Ok(Operator::I32Const { value }), Ok(Operator::End)) =
                        (ops.read(), ops.read())
                    {
                        if value > 0 {
                            stack_top = Some(value as u32);
                        }
                    }
                }
            }
            Payload::ExportSection(r) => {
                let mut section = ExportSection::new();
                for e in r.clone() {
                    let e = e.map_err(bad)?;
                    if e.name == SP_EXPORT || e.name == TABLE_EXPORT {
                        return Err(wrong(path, format!("it already exports `{}`", e.name)));
                    }
                    has_start |= e.name == "_start" && e.kind == ExternalKind::Func;
                    has_memory |= e.name == "memory" && e.kind == ExternalKind::Memory;
                    let kind = match e.kind {
                        ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
                        ExternalKind::Table => ExportKind::Table,
                        ExternalKind::Memory => ExportKind::Memory,
                        ExternalKind::Global => ExportKind::Global,
                        ExternalKind::Tag => ExportKind::Tag,
                    };
                    section.export(e.name, kind, e.index);
                }
                section.export(SP_EXPORT, ExportKind::Global, 0);
                section.export(TABLE_EXPORT, ExportKind::Table, 0);
                out.section(&section);
                exports_done = true;
                continue;
            }
            Payload::CodeSectionEntry(body) => {
                let mut ops = body.get_operators_reader().map_err(bad)?;
                while !ops.eof() {
                    match ops.read().map_err(bad)? {
                        Operator::TableSet { .. }
                        | Operator::TableGrow { .. }
                        | Operator::TableFill { .. }
                        | Operator::TableCopy { .. }
                        | Operator::TableInit { .. } => {
                            return Err(wrong(
                                path,
                                "its code writes to a table at run time, which a fork could not reproduce",
                            ))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        if let Some((id, range)) = payload.as_section() {
            // A section header may claim more bytes than the file has (a truncated module);
            // the parser only notices when it reaches them.
            let data = wasm
                .get(range)
                .ok_or_else(|| wrong(path, "unreadable module: a section runs past its end"))?;
            out.section(&RawSection { id, data });
        }
    }
    if !has_start || !has_memory || !exports_done {
        return Err(wrong(
            path,
            "it does not export `_start` and `memory` (a WASI command does)",
        ));
    }
    let stack_top = stack_top.ok_or_else(|| {
        wrong(
            path,
            "it has no global 0 initialised to a constant stack top",
        )
    })?;
    let table_size = table_size.ok_or_else(|| wrong(path, "it has no function table"))?;
    Ok((
        out.finish(),
        PatchInfo {
            stack_top,
            table_size,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{
        CodeSection, ConstExpr, Function, FunctionSection, GlobalSection, GlobalType, Instruction,
        MemorySection, MemoryType, Module, RefType, TableSection, TableType, TypeSection,
    };

    /// A tiny stand-in for a WASI command: one function `_start`, memory, a table, and a
    /// stack-pointer global; `body` fills `_start`.
    fn command(global: Option<GlobalType>, body: &[Instruction<'_>]) -> Vec<u8> {
        let mut m = Module::new();
        let mut types = TypeSection::new();
        types.ty().function([], []);
        m.section(&types);
        let mut funcs = FunctionSection::new();
        funcs.function(0);
        m.section(&funcs);
        let mut tables = TableSection::new();
        tables.table(TableType {
            element_type: RefType::FUNCREF,
            table64: false,
            minimum: 1,
            maximum: Some(1),
            shared: false,
        });
        m.section(&tables);
        let mut mems = MemorySection::new();
        mems.memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        m.section(&mems);
        if let Some(g) = global {
            let mut globals = GlobalSection::new();
            globals.global(g, &ConstExpr::i32_const(4096));
            m.section(&globals);
        }
        let mut exports = ExportSection::new();
        exports.export("memory", ExportKind::Memory, 0);
        exports.export("_start", ExportKind::Func, 0);
        m.section(&exports);
        let mut code = CodeSection::new();
        let mut f = Function::new([]);
        for i in body {
            f.instruction(i);
        }
        f.instruction(&Instruction::End);
        code.function(&f);
        m.section(&code);
        m.finish()
    }

    const SP: GlobalType = GlobalType {
        val_type: wasm_encoder::ValType::I32,
        mutable: true,
        shared: false,
    };

    fn exports_of(wasm: &[u8]) -> Vec<(String, ExternalKind, u32)> {
        let mut v = Vec::new();
        for p in Parser::new(0).parse_all(wasm) {
            if let Payload::ExportSection(r) = p.unwrap() {
                for e in r {
                    let e = e.unwrap();
                    v.push((e.name.to_string(), e.kind, e.index));
                }
            }
        }
        v
    }

    #[test]
    fn the_cache_tag_names_the_interrupt_rewrite_it_applies() {
        // `patch` also applies `interrupt::insert_loop_checks`: a new version of that rewrite
        // must change this tag too, or a stale compile would be taken from the cache.
        assert!(PATCH_TAG.ends_with(&format!("+{}", crate::interrupt::TAG)));
    }

    #[test]
    fn adds_the_two_exports_and_keeps_the_rest() {
        let wasm = command(Some(SP), &[]);
        let (out, info) = patch_with_info(&wasm, Path::new("t.wasm")).unwrap();
        assert_eq!(
            info,
            PatchInfo {
                stack_top: 4096,
                table_size: 1
            }
        );
        let ex = exports_of(&out);
        assert!(
            ex.contains(&(SP_EXPORT.into(), ExternalKind::Global, 0)),
            "{ex:?}"
        );
        assert!(
            ex.contains(&(TABLE_EXPORT.into(), ExternalKind::Table, 0)),
            "{ex:?}"
        );
        assert!(ex.contains(&("_start".into(), ExternalKind::Func, 0)));
        wasmparser::Validator::new().validate_all(&out).unwrap();
        // Only the export section grew: two entries of a few bytes each.
        assert!(out.len() > wasm.len() && out.len() < wasm.len() + 64);
    }

    #[test]
    fn other_modules_are_refused_as_wrong() {
        let p = Path::new("other.wasm");
        let is_wrong = |r: Result<Vec<u8>>| match r {
            Err(SandboxError::WrongModule { reason, .. }) => reason,
            other => panic!("expected WrongModule, got {:?}", other.map(|b| b.len())),
        };
        // Not wasm at all, and a truncated module.
        is_wrong(patch(b"not a module", p));
        let good = command(Some(SP), &[]);
        is_wrong(patch(&good[..good.len() - 3], p));
        // No stack-pointer global, or one of the wrong type.
        assert!(is_wrong(patch(&command(None, &[]), p)).contains("global 0"));
        let immutable = GlobalType {
            mutable: false,
            ..SP
        };
        assert!(is_wrong(patch(&command(Some(immutable), &[]), p)).contains("global 0"));
        // Code that writes its table.
        let writes = command(
            Some(SP),
            &[
                Instruction::I32Const(0),
                Instruction::RefNull(wasm_encoder::HeapType::FUNC),
                Instruction::TableSet(0),
            ],
        );
        assert!(is_wrong(patch(&writes, p)).contains("table"));
    }

    #[test]
    fn the_real_lite_module_is_rewritten() {
        let catalog = small_agent_models::Catalog::builtin().unwrap();
        let store = small_agent_models::Store::from_env().unwrap();
        let Some(m) = catalog.get("python-wasm-lite") else {
            panic!("manifest python-wasm-lite missing");
        };
        let path = store.file_path(m, "python-3.12.0.wasm");
        let Ok(wasm) = std::fs::read(&path) else {
            eprintln!("lite module not installed at {}; skipped", path.display());
            return;
        };
        let (out, info) = patch_with_info(&wasm, &path).unwrap();
        // wasm-ld's layout: the C stack sits first in memory, its top below 1 MiB.
        assert!(
            info.stack_top >= 64 << 10 && info.stack_top <= 1 << 20,
            "{info:?}"
        );
        assert!(info.table_size > 1000, "{info:?}");
        let ex = exports_of(&out);
        assert!(ex.contains(&(SP_EXPORT.into(), ExternalKind::Global, 0)));
        assert!(ex.contains(&(TABLE_EXPORT.into(), ExternalKind::Table, 0)));
        assert!(out.len() > wasm.len() && out.len() - wasm.len() < 64);
    }
}
