//! The split files: writing them one example at a time, reading and checking them whole.
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::manifest::{Manifest, FORMAT_NAME, FORMAT_VERSION};
use super::DatasetFileError;

/// One line of `SPLIT.ids.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExampleId {
    /// The trajectory's id.
    pub id: String,
    /// Index of its source in the manifest's `sources`.
    pub source: usize,
    /// Tokens.
    pub len: usize,
    /// Tokens with mask 1.
    pub masked: usize,
}

/// The names of a split's files, in `dir`.
pub fn split_paths(dir: &Path, split: &str) -> [PathBuf; 4] {
    ["tokens", "mask", "offsets", "ids.jsonl"].map(|ext| dir.join(format!("{split}.{ext}")))
}

/// The split's conversations as chat messages, one JSON line per example in the order of
/// its tokens (`{"messages": [{"role", "content"}, ...]}`: the conversational format
/// Hugging Face TRL's SFT trainer reads, for training on a GPU cluster with
/// `assistant_only_loss`). Not read back here.
pub fn messages_path(dir: &Path, split: &str) -> PathBuf {
    dir.join(format!("{split}.messages.jsonl"))
}

/// Writes one split's files, one example at a time.
#[derive(Debug)]
pub struct SplitWriter {
    paths: [PathBuf; 4],
    tokens: BufWriter<File>,
    mask: BufWriter<File>,
    ids: BufWriter<File>,
    messages: BufWriter<File>,
    offsets: Vec<u64>,
}

impl SplitWriter {
    /// Creates the split's files in `dir`.
    pub fn create(dir: &Path, split: &str) -> std::io::Result<Self> {
        let paths = split_paths(dir, split);
        let open = |p: &Path| File::create(p).map(BufWriter::new);
        Ok(Self {
            tokens: open(&paths[0])?,
            mask: open(&paths[1])?,
            ids: open(&paths[3])?,
            messages: open(&messages_path(dir, split))?,
            paths,
            offsets: vec![0],
        })
    }

    /// Appends one example: its tokens and mask, and the messages they were rendered from.
    pub fn push(
        &mut self,
        tokens: &[u32],
        mask: &[u8],
        id: &ExampleId,
        messages: &[small_agent::engine::ChatMessage],
    ) -> std::io::Result<()> {
        assert_eq!(tokens.len(), mask.len(), "one mask byte per token");
        let chat: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
            .collect();
        serde_json::to_writer(&mut self.messages, &serde_json::json!({ "messages": chat }))?;
        self.messages.write_all(b"\n")?;
        let mut buf = Vec::with_capacity(tokens.len() * 4);
        for t in tokens {
            buf.extend_from_slice(&t.to_le_bytes());
        }
        self.tokens.write_all(&buf)?;
        self.mask.write_all(mask)?;
        serde_json::to_writer(&mut self.ids, id)?;
        self.ids.write_all(b"\n")?;
        let last = *self.offsets.last().expect("starts with 0");
        self.offsets.push(last + tokens.len() as u64);
        Ok(())
    }

    /// Writes the offsets and syncs every file.
    pub fn finish(self) -> std::io::Result<()> {
        let mut off = BufWriter::new(File::create(&self.paths[2])?);
        for o in &self.offsets {
            off.write_all(&o.to_le_bytes())?;
        }
        for w in [self.tokens, self.mask, self.ids, self.messages, off] {
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        Ok(())
    }
}

/// A split read into memory and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    name: String,
    tokens: Vec<u32>,
    mask: Vec<u8>,
    offsets: Vec<u64>,
    ids: Vec<ExampleId>,
}

impl Split {
    /// Reads split `name` of the dataset in `dir` and checks it against itself and
    /// `manifest`: file sizes, offsets (start at 0, never decrease, end at the token count),
    /// mask bytes 0 or 1, token ids below the vocabulary size, one id line per example, and
    /// the manifest's counts.
    pub fn read(dir: &Path, manifest: &Manifest, name: &str) -> Result<Self, DatasetFileError> {
        let Some(stats) = manifest.splits.get(name) else {
            return Err(DatasetFileError::UnknownSplit {
                name: name.to_owned(),
                known: manifest.splits.keys().cloned().collect(),
            });
        };
        let paths = split_paths(dir, name);
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| DatasetFileError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        let corrupt = |p: &Path, why: String| DatasetFileError::Corrupt {
            path: p.to_path_buf(),
            why,
        };
        let tok_bytes = read(&paths[0])?;
        let mask = read(&paths[1])?;
        let off_bytes = read(&paths[2])?;
        if tok_bytes.len() % 4 != 0 {
            return Err(corrupt(
                &paths[0],
                format!("{} bytes: not whole u32 tokens", tok_bytes.len()),
            ));
        }
        if off_bytes.len() % 8 != 0 || off_bytes.is_empty() {
            return Err(corrupt(
                &paths[2],
                format!(
                    "{} bytes: not one or more whole u64 offsets",
                    off_bytes.len()
                ),
            ));
        }
        let tokens: Vec<u32> = tok_bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let offsets: Vec<u64> = off_bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let n = offsets.len() - 1;
        if n != stats.examples {
            return Err(corrupt(
                &paths[2],
                format!("{n} examples, the manifest says {}", stats.examples),
            ));
        }
        if tokens.len() as u64 != stats.tokens {
            return Err(corrupt(
                &paths[0],
                format!(
                    "{} tokens, the manifest says {}",
                    tokens.len(),
                    stats.tokens
                ),
            ));
        }
        if mask.len() != tokens.len() {
            return Err(corrupt(
                &paths[1],
                format!("{} mask bytes for {} tokens", mask.len(), tokens.len()),
            ));
        }
        if offsets[0] != 0
            || offsets.windows(2).any(|w| w[1] < w[0])
            || offsets[n] != tokens.len() as u64
        {
            return Err(corrupt(
                &paths[2],
                format!(
                    "offsets must start at 0, never decrease and end at the token count {}",
                    tokens.len()
                ),
            ));
        }
        if let Some(i) = mask.iter().position(|&m| m > 1) {
            return Err(corrupt(
                &paths[1],
                format!("byte {i} is {}, not 0 or 1", mask[i]),
            ));
        }
        let masked = mask.iter().map(|&m| m as u64).sum::<u64>();
        if masked != stats.masked_tokens {
            return Err(corrupt(
                &paths[1],
                format!(
                    "{masked} masked tokens, the manifest says {}",
                    stats.masked_tokens
                ),
            ));
        }
        if let Some(i) = tokens.iter().position(|&t| t >= manifest.tokenizer.n_vocab) {
            return Err(corrupt(
                &paths[0],
                format!(
                    "token {i} is {}, beyond the vocabulary ({})",
                    tokens[i], manifest.tokenizer.n_vocab
                ),
            ));
        }
        let ids_file = File::open(&paths[3]).map_err(|source| DatasetFileError::Io {
            path: paths[3].clone(),
            source,
        })?;
        let mut ids = Vec::with_capacity(n);
        for (i, line) in BufReader::new(ids_file).lines().enumerate() {
            let line = line.map_err(|source| DatasetFileError::Io {
                path: paths[3].clone(),
                source,
            })?;
            let id: ExampleId = serde_json::from_str(&line)
                .map_err(|e| corrupt(&paths[3], format!("line {}: {e}", i + 1)))?;
            ids.push(id);
        }
        if ids.len() != n {
            return Err(corrupt(
                &paths[3],
                format!("{} id lines for {n} examples", ids.len()),
            ));
        }
        for (i, id) in ids.iter().enumerate() {
            if id.len as u64 != offsets[i + 1] - offsets[i] {
                return Err(corrupt(
                    &paths[3],
                    format!(
                        "line {}: length {} but the offsets give {}",
                        i + 1,
                        id.len,
                        offsets[i + 1] - offsets[i]
                    ),
                ));
            }
        }
        Ok(Self {
            name: name.to_owned(),
            tokens,
            mask,
            offsets,
            ids,
        })
    }

    /// The split's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Examples.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether it holds no example.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Example `i`: its token ids and one mask byte per token (1: the loss counts it).
    /// Panics when `i >= len()`.
    pub fn example(&self, i: usize) -> (&[u32], &[u8]) {
        let (a, b) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        (&self.tokens[a..b], &self.mask[a..b])
    }

    /// Example `i`'s id line.
    pub fn id(&self, i: usize) -> &ExampleId {
        &self.ids[i]
    }

    /// Every token of the split, examples one after another.
    pub fn all_tokens(&self) -> &[u32] {
        &self.tokens
    }
}

/// Reads `manifest.json` in `dir` and checks its format name and version.
pub fn read_manifest(dir: &Path) -> Result<Manifest, DatasetFileError> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|source| DatasetFileError::Io {
        path: path.clone(),
        source,
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| DatasetFileError::Corrupt {
            path: path.clone(),
            why: format!("not JSON: {e}"),
        })?;
    if v["format"].as_str() != Some(FORMAT_NAME) {
        return Err(DatasetFileError::Corrupt {
            path,
            why: format!(
                "`format` is {}, not {FORMAT_NAME:?}: not a dataset manifest",
                v["format"]
            ),
        });
    }
    match v["version"].as_u64() {
        Some(n) if n == u64::from(FORMAT_VERSION) => {}
        other => {
            return Err(DatasetFileError::Version {
                path,
                found: other.map_or_else(|| v["version"].to_string(), |n| n.to_string()),
                supported: FORMAT_VERSION,
            })
        }
    }
    serde_json::from_value(v).map_err(|e| DatasetFileError::Corrupt {
        path,
        why: format!("bad manifest: {e}"),
    })
}

/// A split is what the student's trainer reads.
impl small_agent_student::train::TrainingData for Split {
    fn len(&self) -> usize {
        Split::len(self)
    }

    fn example(&self, i: usize) -> (&[u32], &[u8]) {
        Split::example(self, i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::manifest::*;
    use crate::dataset::Dataset;
    use std::collections::BTreeMap;

    type Ex = (Vec<u32>, Vec<u8>);
    /// A file and how to damage it.
    type Damage = (&'static str, fn(&Path));

    fn write(dir: &Path, splits: &[(&str, Vec<Ex>)]) {
        let mut stats = BTreeMap::new();
        for (name, examples) in splits {
            let mut w = SplitWriter::create(dir, name).unwrap();
            let mut s = SplitStats::default();
            for (i, (t, m)) in examples.iter().enumerate() {
                let masked = m.iter().filter(|&&b| b == 1).count();
                let id = ExampleId {
                    id: format!("{name}/{i}"),
                    source: 0,
                    len: t.len(),
                    masked,
                };
                w.push(t, m, &id, &[]).unwrap();
                s.examples += 1;
                s.questions += 1;
                s.tokens += t.len() as u64;
                s.masked_tokens += masked as u64;
            }
            w.finish().unwrap();
            stats.insert(name.to_string(), s);
        }
        let m = Manifest {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            created_by: serde_json::json!({}),
            sources: vec![],
            by_source: BTreeMap::new(),
            splits: stats,
            dropped: BTreeMap::new(),
            tokenizer: TokenizerInfo {
                path: "m.gguf".into(),
                sha256: "00".into(),
                n_vocab: 1000,
                add_bos: true,
            },
            chat_template: ChatTemplateInfo {
                probe: String::new(),
                probe_open: String::new(),
                sha256: String::new(),
            },
            student_prompt: StudentPromptInfo {
                template: "t".into(),
                template_sha256: String::new(),
                system: String::new(),
                system_sha256: String::new(),
                max_steps: 5,
                tools: vec![],
            },
            max_len: 4096,
            val_frac: 0.5,
            seed: 0,
            split_rule: String::new(),
            mask_rule: String::new(),
            grammar_prefill: Some("Thought:".into()),
        };
        std::fs::write(
            dir.join("manifest.json"),
            serde_json::to_string(&m).unwrap(),
        )
        .unwrap();
    }

    fn sample() -> Vec<(&'static str, Vec<Ex>)> {
        vec![
            (
                "train",
                vec![
                    (vec![1, 2, 3, 999], vec![0, 0, 1, 1]),
                    (vec![], vec![]),
                    (vec![7, 8], vec![1, 0]),
                ],
            ),
            ("val", vec![(vec![4, 5, 6], vec![0, 1, 1])]),
        ]
    }

    #[test]
    fn the_reader_gives_back_what_the_writer_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let want = sample();
        write(dir.path(), &want);
        let ds = Dataset::open(dir.path()).unwrap();
        for (name, examples) in &want {
            let s = ds.split(name).unwrap();
            assert_eq!(s.len(), examples.len());
            for (i, (t, m)) in examples.iter().enumerate() {
                assert_eq!(s.example(i), (&t[..], &m[..]));
                assert_eq!(s.id(i).id, format!("{name}/{i}"));
            }
        }
        assert!(matches!(
            ds.split("test"),
            Err(DatasetFileError::UnknownSplit { .. })
        ));
    }

    #[test]
    fn damaged_files_are_corruption_errors_and_missing_ones_io_errors() {
        let cases: [Damage; 7] = [
            ("train.tokens", |p| {
                let b = std::fs::read(p).unwrap();
                std::fs::write(p, &b[..b.len() - 4]).unwrap()
            }),
            ("train.tokens", |p| {
                let b = std::fs::read(p).unwrap();
                std::fs::write(p, &b[..b.len() - 1]).unwrap()
            }),
            ("train.mask", |p| {
                let b = std::fs::read(p).unwrap();
                std::fs::write(p, &b[..b.len() - 1]).unwrap()
            }),
            ("train.mask", |p| {
                std::fs::write(p, [0, 0, 1, 2, 1, 0]).unwrap()
            }),
            ("train.offsets", |p| {
                let b = std::fs::read(p).unwrap();
                std::fs::write(p, &b[..b.len() - 8]).unwrap()
            }),
            ("train.offsets", |p| {
                let mut b = std::fs::read(p).unwrap();
                b[8] = 200; // example 0 ends beyond the tokens
                std::fs::write(p, b).unwrap()
            }),
            ("train.ids.jsonl", |p| {
                let t = std::fs::read_to_string(p).unwrap();
                std::fs::write(p, t.lines().take(2).collect::<Vec<_>>().join("\n")).unwrap()
            }),
        ];
        for (i, (file, damage)) in cases.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), &sample());
            damage(&dir.path().join(file));
            let ds = Dataset::open(dir.path()).unwrap();
            match ds.split("train") {
                Err(DatasetFileError::Corrupt { path, .. }) => {
                    assert!(
                        path.ends_with(file) || file.ends_with("offsets"),
                        "case {i}: {path:?}"
                    )
                }
                other => panic!("case {i} ({file}): {other:?}"),
            }
            // The other split is untouched.
            assert_eq!(ds.split("val").unwrap().len(), 1);
        }
        // A token beyond the vocabulary.
        let dir = tempfile::tempdir().unwrap();
        let mut s = sample();
        s[0].1[0].0[0] = 1000;
        write(dir.path(), &s);
        let e = Dataset::open(dir.path())
            .unwrap()
            .split("train")
            .unwrap_err();
        assert!(e.to_string().contains("beyond the vocabulary"), "{e}");
        // A missing file is an I/O error, not corruption.
        std::fs::remove_file(dir.path().join("val.mask")).unwrap();
        assert!(matches!(
            Dataset::open(dir.path()).unwrap().split("val"),
            Err(DatasetFileError::Io { .. })
        ));
    }

    #[test]
    fn an_unknown_version_or_foreign_manifest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &sample());
        let p = dir.path().join("manifest.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v["version"] = serde_json::json!(FORMAT_VERSION + 1);
        std::fs::write(&p, v.to_string()).unwrap();
        assert!(matches!(
            Dataset::open(dir.path()),
            Err(DatasetFileError::Version { .. })
        ));
        std::fs::write(&p, "{\"format\": \"other\"}").unwrap();
        assert!(matches!(
            Dataset::open(dir.path()),
            Err(DatasetFileError::Corrupt { .. })
        ));
        std::fs::write(&p, "{\"format\": \"small-agent-distill-dataset\", \"vers").unwrap();
        assert!(matches!(
            Dataset::open(dir.path()),
            Err(DatasetFileError::Corrupt { .. })
        ));
    }
}
