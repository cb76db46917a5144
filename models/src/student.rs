//! Distilled students: a LoRA adapter of a base asset, trained by `small-agent-distill`, with
//! the prompt it was trained with.
//!
//! A student's manifest (`models/students/<name>.toml`) pins its adapter file (size and
//! sha256), the base asset and the base file's sha256, the dataset it was trained on, the
//! commands that rebuild it and its evaluation numbers. The adapter itself sits beside the
//! manifest and is embedded in the binary; [`Store::install_student`] writes it into the
//! cache (`$SMALL_AGENT_HOME/assets/<name>/`) the first time it is needed, because llama.cpp
//! loads adapters from files.

use std::{fs, io::Write, path::PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{builtin, io_err, Error, Result, Store};

/// A student's manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StudentManifest {
    /// Unique name; the adapter is installed under `assets/<name>/`.
    pub name: String,
    /// One line for humans.
    pub description: String,
    /// `ask`, `eval` and `serve` run this student unless told otherwise (`--base`,
    /// `--model`, `--adapter`).
    #[serde(default)]
    pub default: bool,
    /// The base asset (a manifest name of `models/*.toml`).
    pub base: String,
    /// sha256 of the base file the adapter was trained on.
    pub base_sha256: String,
    /// The adapter file, beside the manifest in `models/students/`.
    pub adapter: String,
    /// Its size in bytes.
    pub adapter_size: u64,
    /// Its sha256.
    pub adapter_sha256: String,
    /// The prompt template it was trained with (a file of `models/prompts/`).
    pub prompt: String,
    /// sha256 of the training dataset's `manifest.json`.
    pub dataset_manifest_sha256: String,
    /// The commands that rebuild the adapter, in order.
    pub commands: Vec<String>,
    /// How training went (steps, tokens, time, validation loss), for humans.
    pub training: String,
    /// Evaluation rows: set name → what was measured, for humans.
    #[serde(default)]
    pub eval: std::collections::BTreeMap<String, String>,
}

/// A built-in student: its manifest, its adapter's bytes and its prompt's text.
#[derive(Debug, Clone)]
pub struct Student {
    /// The manifest.
    pub manifest: StudentManifest,
    /// The adapter GGUF.
    pub adapter_bytes: &'static [u8],
    /// The prompt template's TOML text.
    pub prompt_text: &'static str,
}

impl Student {
    /// Every student of `models/students/`, embedded at build time, each checked against its
    /// manifest (adapter size and sha256, prompt present).
    pub fn builtin() -> Result<Vec<Student>> {
        manifests()?.into_iter().map(Student::checked).collect()
    }

    /// The student of `manifest`, its adapter checked against it. Hashing an adapter takes
    /// tens of milliseconds, so only the student a command runs is checked.
    fn checked(manifest: StudentManifest) -> Result<Student> {
        let adapter_bytes = builtin::STUDENT_ADAPTERS
            .iter()
            .find(|(f, _)| *f == manifest.adapter)
            .map(|(_, b)| *b)
            .ok_or_else(|| Error::StudentInvalid {
                name: manifest.name.clone(),
                reason: format!(
                    "its adapter {} is not in models/students/",
                    manifest.adapter
                ),
            })?;
        let prompt_text = builtin::PROMPTS
            .iter()
            .find(|(f, _)| *f == manifest.prompt)
            .map(|(_, t)| *t)
            .ok_or_else(|| Error::StudentInvalid {
                name: manifest.name.clone(),
                reason: format!("its prompt {} is not in models/prompts/", manifest.prompt),
            })?;
        let actual = hex::encode(Sha256::digest(adapter_bytes));
        if adapter_bytes.len() as u64 != manifest.adapter_size || actual != manifest.adapter_sha256
        {
            return Err(Error::StudentInvalid {
                name: manifest.name.clone(),
                reason: format!(
                    "its adapter has {} B with sha256 {actual}, the manifest pins {} B \
                     with sha256 {}",
                    adapter_bytes.len(),
                    manifest.adapter_size,
                    manifest.adapter_sha256
                ),
            });
        }
        Ok(Student {
            manifest,
            adapter_bytes,
            prompt_text,
        })
    }

    /// The student marked `default = true`, if one is built in.
    pub fn default_student() -> Result<Option<Student>> {
        manifests()?
            .into_iter()
            .find(|m| m.default)
            .map(Student::checked)
            .transpose()
    }

    /// The built-in student called `name`; an unknown name is an error that lists the others.
    pub fn named(name: &str) -> Result<Student> {
        let all = manifests()?;
        let names: Vec<String> = all.iter().map(|m| m.name.clone()).collect();
        all.into_iter()
            .find(|m| m.name == name)
            .map(Student::checked)
            .transpose()?
            .ok_or_else(|| Error::UnknownStudent {
                name: name.to_owned(),
                known: if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                },
            })
    }
}

/// The manifests of `models/students/`, parsed (nothing checked against the adapters yet).
fn manifests() -> Result<Vec<StudentManifest>> {
    builtin::STUDENT_MANIFESTS
        .iter()
        .map(|(file, text)| {
            toml::from_str(text).map_err(|source| Error::Manifest {
                file: format!("students/{file}"),
                source,
            })
        })
        .collect()
}

impl Store {
    /// The student's adapter file in the cache, written there from the binary when it is
    /// missing or differs (checked by size and sha256; written to a temporary file and
    /// renamed, so a reader never sees half a file).
    pub fn install_student(&self, student: &Student) -> Result<PathBuf> {
        let dir = self.home().join("assets").join(&student.manifest.name);
        let path = dir.join(&student.manifest.adapter);
        let want = &student.manifest.adapter_sha256;
        if let Ok(meta) = fs::metadata(&path) {
            if meta.len() == student.manifest.adapter_size {
                let bytes = fs::read(&path).map_err(io_err(&path))?;
                if &hex::encode(Sha256::digest(&bytes)) == want {
                    return Ok(path);
                }
            }
            tracing::warn!(path = %path.display(), "student adapter differs from the built-in one; rewriting it");
        }
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let tmp = dir.join(format!(
            "{}.{}{}",
            student.manifest.adapter,
            std::process::id(),
            crate::PARTIAL_SUFFIX
        ));
        {
            let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(student.adapter_bytes).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        tracing::info!(path = %path.display(), "student adapter installed");
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_students_match_their_manifests() {
        let students = Student::builtin().unwrap();
        assert!(students.iter().filter(|s| s.manifest.default).count() <= 1);
        for s in &students {
            assert!(s.adapter_bytes.starts_with(b"GGUF"), "{}", s.manifest.name);
            assert!(
                s.adapter_bytes.len() <= 25 << 20,
                "{} is over 25 MiB",
                s.manifest.name
            );
            assert!(!s.manifest.commands.is_empty());
        }
    }

    #[test]
    fn an_unknown_student_names_the_built_in_ones() {
        let e = Student::named("no-such-student").err().unwrap().to_string();
        assert!(e.contains("agent-smollm2-135m"), "{e}");
    }

    #[test]
    fn install_writes_once_and_repairs_a_damaged_file() {
        let student = Student::named("agent-smollm2-135m").unwrap();
        let home = tempfile::tempdir().unwrap();
        let store = Store::new(home.path());
        let path = store.install_student(&student).unwrap();
        assert_eq!(fs::read(&path).unwrap(), student.adapter_bytes);
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(store.install_student(&student).unwrap(), path);
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime);
        // A damaged copy of the same size is replaced.
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        store.install_student(&student).unwrap();
        assert_eq!(fs::read(&path).unwrap(), student.adapter_bytes);
    }
}
