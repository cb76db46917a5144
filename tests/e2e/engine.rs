//! The engine on the real model: template, stop strings, seeds, KV reuse, limits, errors.
use std::io::Write;

use small_agent::{
    engine::{AfterEnd, SessionParams},
    ChatMessage, EngineError, FinishReason, GenerateParams, Model, SamplingParams,
};

fn model() -> Model {
    Model::load(&crate::default_model_path()).expect("default model loads")
}

fn params(n_ctx: u32) -> SessionParams {
    SessionParams {
        n_ctx,
        n_threads: 1,
        n_threads_batch: 1,
        ..SessionParams::default()
    }
}

fn greedy(max_tokens: u32) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    }
}

fn user(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage::new("user", text)]
}

#[test]
fn chat_template_is_the_models_own_and_generation_answers() {
    let m = model();
    let rendered = m.render_chat(&user("Name three colours."), true).unwrap();
    assert!(
        rendered.contains("<|im_start|>user\nName three colours.<|im_end|>")
            && rendered.ends_with("<|im_start|>assistant\n"),
        "not ChatML: {rendered:?}"
    );
    let mut s = m.session(&params(1024)).unwrap();
    let mut streamed = String::new();
    let c = s
        .chat(&user("Name three colours."), &greedy(48), &mut |t| {
            streamed.push_str(t);
            true
        })
        .unwrap();
    assert_eq!(streamed, c.text, "streamed text differs from the result");
    let lower = c.text.to_lowercase();
    assert!(
        ["red", "blue", "green", "yellow"]
            .iter()
            .filter(|w| lower.contains(*w))
            .count()
            >= 2,
        "{:?}",
        c.text
    );
    assert!(c.stats.prompt_tokens > 5 && c.stats.gen_tokens > 0 && c.stats.gen_ms > 0.0);
}

#[test]
fn stop_strings_end_generation_and_are_not_emitted() {
    let m = model();
    let q = user("Write the numbers from one to twenty in words, separated by commas.");
    let free = m
        .session(&params(1024))
        .unwrap()
        .chat(&q, &greedy(64), &mut |_| true)
        .unwrap();
    // Stop at the second word of the free-running output: it must end right before it.
    let words: Vec<&str> = free.text.split_whitespace().collect();
    assert!(words.len() > 3, "{:?}", free.text);
    let stop = words[2].to_owned();
    let cut = free.text.find(&stop).unwrap();
    let mut streamed = String::new();
    let c = m
        .session(&params(1024))
        .unwrap()
        .chat(
            &q,
            &GenerateParams {
                stop: vec![stop.clone()],
                ..greedy(64)
            },
            &mut |t| {
                streamed.push_str(t);
                true
            },
        )
        .unwrap();
    assert_eq!(c.finish_reason, FinishReason::Stop);
    assert_eq!(c.stop.as_deref(), Some(stop.as_str()));
    assert_eq!(c.text, free.text[..cut], "stop {stop:?}");
    assert_eq!(streamed, c.text);
}

#[test]
fn a_fixed_seed_gives_identical_output() {
    let m = model();
    let sample = |seed| {
        let p = GenerateParams {
            max_tokens: 40,
            sampling: SamplingParams {
                temperature: 1.0,
                seed,
                ..SamplingParams::default()
            },
            ..Default::default()
        };
        m.session(&params(512))
            .unwrap()
            .chat(&user("Tell me a story about a cat."), &p, &mut |_| true)
            .unwrap()
            .text
    };
    let a = sample(7);
    assert_eq!(a, sample(7), "same seed, different text");
    let others = [sample(8), sample(9), sample(10)];
    assert!(others.iter().any(|o| *o != a), "the seed has no effect");
}

#[test]
fn kv_cache_is_reused_and_only_new_tokens_are_evaluated() {
    let m = model();
    let mut s = m.session(&params(2048)).unwrap();
    let mut msgs = user("What is the capital of France?");
    let first = s.chat(&msgs, &greedy(24), &mut |_| true).unwrap();
    assert_eq!(first.stats.cached_tokens, 0);
    msgs.push(ChatMessage::new("assistant", first.text.clone()));
    msgs.push(ChatMessage::new("user", "And of Italy?"));
    let second = s.chat(&msgs, &greedy(24), &mut |_| true).unwrap();
    let prompt2 = m.tokenize(&m.render_chat(&msgs, true).unwrap(), true);
    assert_eq!(second.stats.prompt_tokens, prompt2.len());
    // Everything up to the first reply is already in the cache.
    assert!(
        second.stats.cached_tokens >= first.stats.prompt_tokens,
        "{:?} then {:?}",
        first.stats,
        second.stats
    );
    assert!(second.stats.cached_tokens < second.stats.prompt_tokens);
    assert_eq!(&s.cached_tokens(0)[..prompt2.len()], &prompt2[..]);
    // The same request on a cold cache evaluates everything and answers the same.
    let cold = m
        .session(&params(2048))
        .unwrap()
        .chat(&msgs, &greedy(24), &mut |_| true)
        .unwrap();
    assert_eq!(cold.stats.cached_tokens, 0);
    assert_eq!(cold.text, second.text);
    // Asking the identical prompt again re-evaluates only its last token.
    let again = s.chat(&msgs, &greedy(4), &mut |_| true).unwrap();
    assert_eq!(again.stats.cached_tokens, again.stats.prompt_tokens - 1);
}

#[test]
fn sequences_can_be_forked_without_re_evaluation() {
    let m = model();
    let mut s = m
        .session(&SessionParams {
            n_seq_max: 4,
            ..params(1024)
        })
        .unwrap();
    s.chat(&user("Hello"), &greedy(4), &mut |_| true).unwrap();
    for dst in 1..4 {
        s.fork_sequence(0, dst).unwrap();
        assert_eq!(s.cached_tokens(dst), s.cached_tokens(0));
    }
    assert!(matches!(
        s.fork_sequence(0, 4),
        Err(EngineError::InvalidParameter(_))
    ));
}

#[test]
fn a_prompt_longer_than_the_context_is_an_error_naming_the_sizes() {
    let m = model();
    let mut s = m.session(&params(64)).unwrap();
    let long = "word ".repeat(200);
    let err = s.chat(&user(&long), &greedy(8), &mut |_| true).unwrap_err();
    match &err {
        EngineError::ContextOverflow {
            prompt_tokens,
            n_ctx,
            ..
        } => assert!(*prompt_tokens > 64 && *n_ctx == 64),
        e => panic!("expected overflow, got {e}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("64") && msg.contains("--ctx-size"), "{msg}");
    // The session is still usable afterwards.
    s.chat(&user("Hi"), &greedy(2), &mut |_| true).unwrap();
}

#[test]
fn a_full_context_ends_generation_visibly() {
    let m = model();
    let mut s = m.session(&params(48)).unwrap();
    let c = s
        .chat(
            &user("Count to one hundred."),
            &GenerateParams {
                ignore_eog: true,
                ..greedy(200)
            },
            &mut |_| true,
        )
        .unwrap();
    assert_eq!(c.finish_reason, FinishReason::ContextFull);
    assert_eq!(s.cached_tokens(0).len(), 48);
}

#[test]
fn a_grammar_constrains_the_output() {
    let m = model();
    let mut s = m.session(&params(512)).unwrap();
    let p = GenerateParams {
        grammar: Some(r#"root ::= ("yes" | "no") "." "#.to_owned()),
        ..greedy(8)
    };
    let c = s
        .chat(&user("Is the sky green?"), &p, &mut |_| true)
        .unwrap();
    assert!(c.text == "yes." || c.text == "no.", "{:?}", c.text);
    let bad = GenerateParams {
        grammar: Some("root ::= (".to_owned()),
        ..greedy(8)
    };
    assert!(matches!(
        s.chat(&user("x"), &bad, &mut |_| true),
        Err(EngineError::Grammar(_))
    ));
}

#[test]
fn missing_foreign_and_truncated_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.gguf");
    let e = Model::load(&missing).unwrap_err();
    assert!(matches!(e, EngineError::ModelNotFound(_)), "{e}");
    assert!(e.to_string().contains("models fetch"), "{e}");

    let text = dir.path().join("notes.gguf");
    std::fs::write(&text, "hello, not a model").unwrap();
    let e = Model::load(&text).unwrap_err();
    assert!(matches!(e, EngineError::NotGguf { .. }), "{e}");

    let truncated = dir.path().join("truncated.gguf");
    let real = std::fs::read(crate::default_model_path()).unwrap();
    std::fs::File::create(&truncated)
        .unwrap()
        .write_all(&real[..real.len() / 3])
        .unwrap();
    let e = Model::load(&truncated).unwrap_err();
    assert!(matches!(e, EngineError::LoadFailed { .. }), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn parallel_candidates_share_the_prompt_and_decode_in_one_batch() {
    let m = model();
    let mut s = m
        .session(&SessionParams {
            n_seq_max: 4,
            ..params(2048)
        })
        .unwrap();
    let prompt = m.tokenize(&m.render_chat(&user("Name a fruit."), true).unwrap(), true);
    // Greedy: every candidate equals the single-sequence answer of the same context (a
    // multi-sequence context may use other attention kernels than a single-sequence one, and
    // a last-bit difference can change an argmax).
    let single = s
        .complete_tokens(&prompt, &greedy(16), &mut |_| true)
        .unwrap();
    let mut streamed = vec![String::new(); 4];
    let cands = s
        .complete_parallel(&prompt, 4, &greedy(16), &mut |i, t| {
            streamed[i].push_str(t);
            true
        })
        .unwrap();
    assert_eq!(cands.len(), 4);
    for (i, c) in cands.iter().enumerate() {
        assert_eq!(c.text, single.text, "candidate {i}");
        assert_eq!(streamed[i], c.text);
        assert_eq!(c.stats.prompt_tokens, prompt.len());
        // Identical candidates share one evaluation per position, and each sequence still
        // holds the whole history.
        assert_eq!(
            c.stats.decoded_tokens, single.stats.decoded_tokens,
            "candidate {i}"
        );
        assert_eq!(s.cached_tokens(i), s.cached_tokens(0), "sequence {i}");
    }
    assert!(s.cached_tokens(0).len() > prompt.len());
    // Sampling: candidates use different seeds, and the prompt is not evaluated again.
    let sampled = GenerateParams {
        max_tokens: 24,
        sampling: SamplingParams {
            temperature: 1.2,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplingParams::default()
        },
        ..Default::default()
    };
    let cands = s
        .complete_parallel(&prompt, 4, &sampled, &mut |_, _| true)
        .unwrap();
    assert_eq!(cands[0].stats.cached_tokens, prompt.len() - 1);
    let distinct: std::collections::HashSet<_> = cands.iter().map(|c| c.text.clone()).collect();
    assert!(distinct.len() > 1, "all candidates equal: {cands:?}");
    let all_tokens: usize = cands.iter().map(|c| c.stats.gen_tokens).sum();
    assert!(cands[0].stats.decoded_tokens <= all_tokens, "{cands:?}");
    // Adopting candidate 2 makes it the conversation that the next call continues.
    let mut kept = s.cached_tokens(2).to_vec();
    s.keep_sequence(2).unwrap();
    assert_eq!(s.cached_tokens(0), &kept[..]);
    assert!(s.cached_tokens(1).is_empty() && s.cached_tokens(2).is_empty());
    let adopted = kept.len();
    kept.extend(m.tokenize(" And a vegetable?", false));
    let next = s.complete_tokens(&kept, &greedy(4), &mut |_| true).unwrap();
    assert_eq!(next.stats.cached_tokens, adopted);
}

/// Moving the kept candidate's spread cells to the front of the cache changes where they
/// are, not what they hold: the conversation continues from them (reused, not evaluated
/// again) as it does from cells left where they were decoded.
#[test]
fn a_kept_candidate_moved_to_the_front_continues_as_left_in_place() {
    let m = model();
    let continue_after_keep = |compact_kept: bool| {
        let (mut s, prompt) = four_candidates_after_a_chat_prompt_with(&m, compact_kept);
        let sampled = GenerateParams {
            max_tokens: 24,
            sampling: SamplingParams {
                temperature: 1.0,
                seed: 5,
                ..SamplingParams::default()
            },
            ..Default::default()
        };
        let cands = s
            .complete_parallel(&prompt, 4, &sampled, &mut |_, _| true)
            .unwrap();
        assert!(cands[0].stats.decoded_tokens > 40, "{cands:?}");
        let mut kept = s.cached_tokens(3).to_vec();
        s.keep_sequence(3).unwrap();
        assert_eq!(s.cache_extent(0), kept.len());
        let adopted = kept.len();
        kept.extend(m.tokenize("\nAnd now one line about the sea:", false));
        let next = s
            .complete_tokens(&kept, &greedy(24), &mut |_| true)
            .unwrap();
        assert_eq!(next.stats.cached_tokens, adopted);
        next.text
    };
    assert_eq!(continue_after_keep(true), continue_after_keep(false));
}

/// A session for 4 parallel sequences and a short chat prompt.
fn four_candidates_after_a_chat_prompt(
    m: &Model,
) -> (
    small_agent::engine::Session<'_>,
    Vec<llama_cpp_2::token::LlamaToken>,
) {
    four_candidates_after_a_chat_prompt_with(m, SessionParams::default().compact_kept)
}

/// The same, choosing whether the kept candidate's cells move to the front.
fn four_candidates_after_a_chat_prompt_with(
    m: &Model,
    compact_kept: bool,
) -> (
    small_agent::engine::Session<'_>,
    Vec<llama_cpp_2::token::LlamaToken>,
) {
    let s = m
        .session(&SessionParams {
            n_seq_max: 4,
            compact_kept,
            ..params(2048)
        })
        .unwrap();
    let prompt = m.tokenize(&m.render_chat(&user("Write a poem."), true).unwrap(), true);
    (s, prompt)
}

/// A candidate released once it has ended leaves llama.cpp's cache at once (its cells serve
/// the others), the others decode on with their histories intact, and the session refuses to
/// adopt it.
#[test]
fn released_candidates_leave_the_cache_and_cannot_be_kept() {
    let m = model();
    let (mut s, prompt) = four_candidates_after_a_chat_prompt(&m);
    // Sampled lines that end at their first full stop or after 12 tokens.
    let params = GenerateParams {
        max_tokens: 12,
        sampling: SamplingParams {
            temperature: 1.0,
            seed: 11,
            ..SamplingParams::default()
        },
        stop: vec![".".into()],
        ..Default::default()
    };
    let mut released = None;
    let cands = s
        .complete_parallel_until(&prompt, 4, &params, &mut |_, _| true, &mut |i, c| {
            // The first one that has evaluated tokens of its own to give back.
            if released.is_none() && c.text.chars().count() >= 2 {
                released = Some(i);
                AfterEnd {
                    stop: false,
                    release: vec![i],
                }
            } else {
                AfterEnd::go_on()
            }
        })
        .unwrap();
    let r = released.expect("a candidate with some text ended");
    assert!(cands[r].stats.gen_tokens >= 2, "{cands:?}");
    // llama.cpp holds only the shared prompt for it; every other candidate holds what the
    // session's mirror says, its whole history.
    assert_eq!(s.cache_extent(r), prompt.len());
    assert_eq!(s.cached_tokens(r), &prompt[..]);
    let others: Vec<usize> = (0..4).filter(|&i| i != r).collect();
    for &i in &others {
        assert_eq!(s.cache_extent(i), s.cached_tokens(i).len(), "candidate {i}");
        assert!(
            s.cached_tokens(i).len() >= prompt.len(),
            "candidate {i}: {cands:?}"
        );
    }
    assert!(s.keep_sequence(r).is_err());
    // Another one is adopted, and the conversation continues from its cells.
    let keep = others[0];
    let mut kept = s.cached_tokens(keep).to_vec();
    s.keep_sequence(keep).unwrap();
    assert_eq!(s.cache_extent(0), kept.len());
    let adopted = kept.len();
    kept.extend(m.tokenize(" And then?", false));
    let next = s.complete_tokens(&kept, &greedy(4), &mut |_| true).unwrap();
    assert_eq!(next.stats.cached_tokens, adopted);
}

#[test]
fn parallel_decoding_stops_the_candidates_still_running_when_asked() {
    let m = model();
    let (mut s, prompt) = four_candidates_after_a_chat_prompt(&m);
    // Near-random text that ends at its first space: the candidates end at different
    // positions, and the caller wants only the first one to end.
    let params = GenerateParams {
        max_tokens: 32,
        sampling: SamplingParams {
            temperature: 3.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 7,
            ..SamplingParams::default()
        },
        stop: vec![" ".into()],
        ..Default::default()
    };
    let mut first: Option<(usize, String)> = None;
    let cands = s
        .complete_parallel_until(&prompt, 4, &params, &mut |_, _| true, &mut |i, c| {
            assert!(first.is_none(), "called again after asking to stop");
            first = Some((i, c.text.clone()));
            AfterEnd::stop()
        })
        .unwrap();
    let (winner, text) = first.expect("one candidate ended");
    assert_eq!(cands[winner].text, text);
    let ended_at = cands[winner].stats.gen_tokens;
    for (i, c) in cands.iter().enumerate() {
        // Nobody decoded past the position where the first candidate ended.
        assert!(c.stats.gen_tokens <= ended_at, "candidate {i}: {c:?}");
        if c.finish_reason == FinishReason::Abandoned {
            assert_ne!(i, winner);
        }
    }
    assert!(
        cands
            .iter()
            .any(|c| c.finish_reason == FinishReason::Abandoned)
            || cands.iter().all(|c| c.stats.gen_tokens == ended_at),
        "{cands:?}"
    );
}

/// The default model's Q4_1 matrices load as Q4_0 plus per-block offsets (`engine::split`):
/// the same weights, so the split model scores a text like the file does; the Q4_0 reading
/// alone (the offsets left out) is far off, which is what this comparison would catch.
#[test]
fn the_q4_1_split_scores_text_like_the_file_and_needs_its_offsets() {
    use small_agent::engine::{split, LoadOptions};
    let path = crate::default_model_path();
    let as_is = Model::load_with(&path, &LoadOptions::as_is()).unwrap();
    let split_model = Model::load(&path).unwrap();
    assert!(!as_is.is_split());
    assert_eq!(split_model.is_split(), split::pays_here(false));
    let text = as_is
        .render_chat(
            &[
                ChatMessage::new("system", "You answer questions about geography briefly."),
                ChatMessage::new(
                    "user",
                    "Which river flows through Vienna, and where does it end?",
                ),
                ChatMessage::new(
                    "assistant",
                    "The Danube flows through Vienna. It rises in the Black Forest in Germany, \
                     crosses ten countries and ends in the Black Sea, where it forms a wide \
                     delta on the border of Romania and Ukraine.",
                ),
            ],
            false,
        )
        .unwrap();
    let tokens = as_is.tokenize(&text, true);
    let nll = |m: &Model| {
        let mut s = m.session(&params(512)).unwrap();
        let lp = s.score(&tokens).unwrap();
        assert_eq!(lp.len(), tokens.len() - 1);
        (-lp.iter().sum::<f32>() / lp.len() as f32, lp)
    };
    let (ref_nll, ref_lp) = nll(&as_is);
    let (split_nll, split_lp) = nll(&split_model);
    let worst = ref_lp
        .iter()
        .zip(&split_lp)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!(
        "mean NLL as is {ref_nll:.4}, split {split_nll:.4}; largest per-token gap {worst:.4}"
    );
    assert!(ref_nll > 0.1 && ref_nll < 6.0, "implausible NLL {ref_nll}");
    assert!(
        (split_nll - ref_nll).abs() < 0.02,
        "{split_nll} vs {ref_nll}"
    );
    assert!(worst < 1.0, "a token's log-probability moved by {worst}");
    if split_model.is_split() {
        let files = split::derive(&path, &split::default_cache_dir().unwrap())
            .unwrap()
            .expect("the default model has Q4_1 matrices");
        let base_only = Model::load_with(&files.base, &LoadOptions::as_is()).unwrap();
        let (base_nll, _) = nll(&base_only);
        assert!(
            base_nll > ref_nll + 1.0,
            "without offsets {base_nll} vs {ref_nll}"
        );
    }
}

/// Contexts for several sequences (SAG) keep their keys as Q8_0, which makes candidates'
/// attention faster on the CPU: a text scores as with f16 keys up to that quantisation's
/// small error, and not identically (identical would mean the setting did nothing).
#[test]
fn q8_0_keys_score_text_like_f16_keys() {
    let m = model();
    let text = m
        .render_chat(
            &[
                ChatMessage::new("system", "You solve problems with short Python programs."),
                ChatMessage::new(
                    "user",
                    "A train leaves at 9:40 and arrives at 13:05. How long is the trip?",
                ),
                ChatMessage::new(
                    "assistant",
                    "Thought: I will count the minutes from departure to arrival and turn \
                     them into hours and minutes.\nCode:\n```py\nstart = 9 * 60 + 40\n\
                     end = 13 * 60 + 5\nminutes = end - start\nprint(minutes // 60, \
                     minutes % 60)\n```<end_code>\nObservation: 3 25\nThought: The trip \
                     takes 3 hours and 25 minutes, that is 205 minutes in all.\nCode:\n\
                     ```py\nfinal_answer(\"3 hours 25 minutes\")\n```<end_code>",
                ),
            ],
            false,
        )
        .unwrap();
    let tokens = m.tokenize(&text, true);
    let score = |q8_0_keys: bool| {
        let mut s = m
            .session(&SessionParams {
                n_seq_max: 8,
                q8_0_keys,
                ..params(1024)
            })
            .unwrap();
        s.score(&tokens).unwrap()
    };
    let (f16, q8) = (score(false), score(true));
    let nll = |lp: &[f32]| -lp.iter().sum::<f32>() / lp.len() as f32;
    let worst = f16
        .iter()
        .zip(&q8)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!(
        "{} tokens: mean NLL f16 keys {:.4}, Q8_0 keys {:.4}; largest per-token gap {worst:.4}",
        tokens.len(),
        nll(&f16),
        nll(&q8)
    );
    assert!(worst > 0.0, "Q8_0 keys changed nothing: not applied?");
    assert!(
        (nll(&q8) - nll(&f16)).abs() < 0.02,
        "{} vs {}",
        nll(&q8),
        nll(&f16)
    );
    // For scale: the same text in a single-sequence context (flash attention, f16 keys)
    // differs from the f16 plain-attention one by up to 0.37 per token; Q8_0 keys by 0.47.
    assert!(worst < 1.0, "a token's log-probability moved by {worst}");
}

/// A damaged derived file is not the user's problem: the model loads as it is, and the
/// damaged files are removed so the next load derives them again.
#[test]
fn a_damaged_split_cache_falls_back_to_the_file_and_is_rederived() {
    use small_agent::engine::{split, LoadOptions};
    if !split::pays_here(false) {
        return; // no split on this CPU: nothing to damage
    }
    let path = crate::default_model_path();
    let cache = tempfile::tempdir().unwrap();
    let options = LoadOptions {
        split_q4_1: true,
        split_cache: Some(cache.path().to_path_buf()),
        adapter: None,
    };
    let files = split::derive(&path, cache.path())
        .unwrap()
        .expect("the default model has Q4_1 matrices");
    let mut bytes = std::fs::read(&files.base).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&files.base, &bytes).unwrap();
    let m = Model::load_with(&path, &options).unwrap();
    assert!(!m.is_split(), "the damaged split must not be used");
    assert!(!files.base.exists() && !files.offsets.exists());
    let mut s = m.session(&params(256)).unwrap();
    let out = s
        .chat(&user("Say hello."), &greedy(4), &mut |_| true)
        .unwrap();
    assert!(!out.text.is_empty());
    assert!(Model::load_with(&path, &options).unwrap().is_split());
    assert!(files.base.exists());
}

/// Where the CPU has AVX-512 VNNI, the default model's Q8_0 output matrix is multiplied by
/// our own kernel (`engine::head`) instead of llama.cpp's: the log-probabilities of a text
/// and the candidates SAG samples must be those llama.cpp's own product gives.
#[test]
fn the_own_output_product_gives_llama_cpps_logits() {
    use small_agent::engine::head::OutputHead;
    let m = model();
    assert_eq!(
        m.has_own_output_head(),
        OutputHead::supported_here(),
        "the default model's output matrix is Q8_0: the own product applies wherever the \
         CPU has the instructions"
    );
    let text = m
        .render_chat(
            &[
                ChatMessage::new("user", "How many legs does a spider have?"),
                ChatMessage::new(
                    "assistant",
                    "A spider has eight legs, attached to the front part of its body.",
                ),
            ],
            false,
        )
        .unwrap();
    let tokens = m.tokenize(&text, true);
    for n_seq_max in [1, 8] {
        let session = |own: bool| {
            m.session(&SessionParams {
                n_seq_max,
                own_output_head: own,
                ..params(512)
            })
            .unwrap()
        };
        let (mut own, mut llama) = (session(true), session(false));
        let (a, b) = (own.score(&tokens).unwrap(), llama.score(&tokens).unwrap());
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-3,
            "{n_seq_max} sequences: a token's log-probability differs by {worst}"
        );
        // SAG's sampling, 8 candidates: the same texts.
        let prompt = m.tokenize(
            &m.render_chat(&user("Name three colours."), true).unwrap(),
            true,
        );
        let gen = GenerateParams {
            max_tokens: 40,
            sampling: small_agent::agent::AgentConfig::default()
                .with_sag(8)
                .sampling,
            ..Default::default()
        };
        let k = n_seq_max as usize;
        let texts = |s: &mut small_agent::engine::Session<'_>| {
            s.complete_parallel(&prompt, k, &gen, &mut |_, _| true)
                .unwrap()
                .into_iter()
                .map(|c| c.text)
                .collect::<Vec<_>>()
        };
        assert_eq!(texts(&mut own), texts(&mut llama), "{n_seq_max} sequences");
    }
}
