//! Embeds every `models/*.toml` manifest into the library, so the installed binary knows
//! its assets without the source tree; and the distilled students of `models/students/`
//! with the prompts of `models/prompts/`.
use std::{env, fs, path::PathBuf};

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut entries: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && !p.ends_with("Cargo.toml"))
        .collect();
    entries.sort();
    let mut out = String::from("/// Built-in manifests: (file name, TOML text).\npub(crate) const BUILTIN: &[(&str, &str)] = &[\n");
    for p in entries {
        println!("cargo:rerun-if-changed={}", p.display());
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        out.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            p.display().to_string()
        ));
    }
    out.push_str("];\n");
    // Distilled students: their manifests, adapter files and the prompts they name. The
    // adapter is in the binary so that an installed `small-agent` (or the C library) runs
    // its default student without the source tree.
    for (konst, sub, ext, bytes) in [
        ("STUDENT_MANIFESTS", "students", "toml", false),
        ("STUDENT_ADAPTERS", "students", "gguf", true),
        ("PROMPTS", "prompts", "toml", false),
    ] {
        let sub_dir = dir.join(sub);
        println!("cargo:rerun-if-changed={}", sub_dir.display());
        let mut files: Vec<PathBuf> = fs::read_dir(&sub_dir)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == ext))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let ty = if bytes { "&[u8]" } else { "&str" };
        let mac = if bytes {
            "include_bytes"
        } else {
            "include_str"
        };
        out.push_str(&format!(
            "/// `models/{sub}/*.{ext}`: (file name, contents).\npub(crate) const {konst}: &[(&str, {ty})] = &[\n"
        ));
        for p in files {
            println!("cargo:rerun-if-changed={}", p.display());
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            out.push_str(&format!(
                "    ({name:?}, {mac}!({:?})),\n",
                p.display().to_string()
            ));
        }
        out.push_str("];\n");
    }
    fs::write(
        PathBuf::from(env::var("OUT_DIR").unwrap()).join("builtin.rs"),
        out,
    )
    .unwrap();
}
