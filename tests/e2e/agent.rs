//! The agent end to end on real parts: the default model, the full-flavour WASM
//! interpreter and the default knowledge shard (built by scripts/setup.sh).
use std::sync::Arc;

use small_agent::{
    agent::{agent_toolbox, Agent, AgentConfig, AgentEvent, SearchFn},
    assets,
    engine::SessionParams,
    Model,
};
use small_agent_sandbox::Flavour;

fn search() -> SearchFn {
    let dir = assets::default_shard_dir().unwrap();
    let shard =
        Arc::new(small_agent_index::Shard::open(&dir).unwrap_or_else(|e| {
            panic!("the default shard is not usable ({e}): run scripts/setup.sh")
        }));
    Arc::new(move |q: &str| small_agent_index::agent_search(&*shard, q).map_err(|e| e.to_string()))
}

fn run(config: AgentConfig, question: &str) -> small_agent::agent::AgentRun {
    run_counting_redos(config, question).0
}

/// [`run`], also counting the `Redo` events.
fn run_counting_redos(
    config: AgentConfig,
    question: &str,
) -> (small_agent::agent::AgentRun, usize) {
    let model = Model::load(&crate::default_model_path()).unwrap();
    let python = assets::python_backend(Flavour::Full).expect("full interpreter installed");
    let tools = agent_toolbox(Some(search())).unwrap();
    let session = SessionParams {
        n_ctx: config.context_size(4096),
        n_threads: 1,
        n_threads_batch: 1,
        ..SessionParams::default()
    };
    let mut agent = Agent::new(&model, &session, python, tools, config).unwrap();
    let (mut events, mut redos) = (0, 0);
    let run = agent
        .run(question, &mut |e| {
            match e {
                AgentEvent::Step(_) => events += 1,
                AgentEvent::Redo(_) => redos += 1,
                AgentEvent::Token(_) => {}
            }
            true
        })
        .unwrap();
    assert_eq!(events, run.steps.len(), "one Step event per step");
    (run, redos)
}

/// A grammar that forces one exact step: the real model, sandbox and tools still run it.
fn forced(code: &str) -> Option<String> {
    let lit = format!("Thought: I will run it.\nCode:\n```py\n{code}\n```<end_code>");
    Some(format!("root ::= {}", serde_json::to_string(&lit).unwrap()))
}

#[test]
fn steps_reuse_the_kv_cache_and_run_their_code() {
    let run = run(
        AgentConfig {
            max_steps: 2,
            step_tokens: 96,
            ..AgentConfig::default()
        },
        "What is the capital of France?",
    );
    assert!(!run.answer.is_empty());
    assert!(!run.steps.is_empty() && run.steps.len() <= 2);
    let first = &run.steps[0];
    assert!(
        first.llm.prompt_tokens > 100,
        "system prompt missing: {:?}",
        first.llm
    );
    for s in &run.steps {
        assert_eq!(s.candidates.len(), 1);
        // The grammar admits only well-formed steps; only the token cap can cut one short.
        if !s.parse_error {
            assert!(
                s.code.is_some() && s.observation.starts_with("Observation:"),
                "{s:?}"
            );
        }
    }
    if run.steps.len() == 2 {
        // Step 2 evaluates only what step 1 added after its reply: the conversation's text
        // tokenizes back to the reply's tokens (the grammar's forced start is in the prompt,
        // not spelled out by the model), all but the last sampled one, never evaluated, and
        // what the reply's closing may re-spell.
        let second = &run.steps[1];
        assert!(
            second.llm.cached_tokens + 3 >= first.llm.prompt_tokens + first.llm.gen_tokens,
            "{:?} after {:?}",
            second.llm,
            first.llm
        );
    }
    if run.answer_source == "fallback" {
        assert!(run.fallback.unwrap().cached_tokens > first.llm.prompt_tokens);
    }
}

/// Under greedy decoding the real model repeats its code; the guard refuses a repeat,
/// generates the step again sampling, and runs a repeat only when its retries are spent.
#[test]
fn a_step_that_repeats_earlier_code_is_generated_again() {
    // Free choice of one digit, the same context every step: greedy picks one and keeps it.
    let grammar = Some(
        "root ::= \"Thought: I will print a digit.\\nCode:\\n```py\\nprint(\" [0-9] \")\\n```<end_code>\""
            .to_owned(),
    );
    let config = |repeat_retries| AgentConfig {
        max_steps: 3,
        grammar: grammar.clone(),
        repeat_retries,
        ..AgentConfig::default()
    };
    let question = "Print a digit.";
    let codes = |run: &small_agent::agent::AgentRun| -> Vec<String> {
        run.steps.iter().map(|s| s.code.clone().unwrap()).collect()
    };
    let (plain, redos) = run_counting_redos(config(0), question);
    let plain_codes = codes(&plain);
    assert_eq!(plain_codes.len(), 3);
    assert_eq!(redos, 0);
    assert!(
        plain_codes[1..].contains(&plain_codes[0]),
        "greedy did not repeat, so this test shows nothing: {plain_codes:?}"
    );
    let (guarded, redos) = run_counting_redos(config(2), question);
    let guarded_codes = codes(&guarded);
    assert_eq!(
        guarded.steps[0].code, plain.steps[0].code,
        "step 1 has nothing to repeat"
    );
    assert_eq!(guarded.steps[0].redone, 0);
    for (i, step) in guarded.steps.iter().enumerate() {
        let repeat = guarded_codes[..i].contains(&guarded_codes[i]);
        // A repeat runs only after both retries were refused.
        assert!(
            !repeat || step.redone == 2,
            "step {i}: {guarded_codes:?} {step:?}"
        );
        if step.redone > 0 {
            // The attempt that ran still found the conversation in the KV cache.
            assert!(
                step.llm.cached_tokens >= guarded.steps[0].llm.prompt_tokens,
                "{:?}",
                step.llm
            );
        }
    }
    let redone: usize = guarded.steps.iter().map(|s| s.redone).sum();
    assert!(redone > 0, "no step was generated again: {guarded_codes:?}");
    assert_eq!(redos, redone, "one Redo event per attempt generated again");
    assert!(
        guarded_codes[1] != guarded_codes[0] || guarded.steps[1].redone == 2,
        "{guarded_codes:?}"
    );
}

#[test]
fn final_answer_ends_the_run_with_its_value() {
    let run = run(
        AgentConfig {
            grammar: forced("final_answer(\"Paris\")"),
            ..AgentConfig::default()
        },
        "What is the capital of France?",
    );
    assert_eq!(
        (run.answer.as_str(), run.answer_source),
        ("Paris", "final_answer")
    );
    assert_eq!(run.steps.len(), 1);
    assert_eq!(run.steps[0].final_answer.as_deref(), Some("Paris"));
}

#[test]
fn web_search_reads_the_local_shard() {
    let run = run(
        AgentConfig {
            max_steps: 1,
            grammar: forced("r = web_search(\"capital of France\")\nprint(r)"),
            ..AgentConfig::default()
        },
        "What is the capital of France?",
    );
    let s = &run.steps[0];
    assert_eq!(s.tool_calls, 1, "{s:?}");
    assert!(!s.exec_error, "{}", s.observation);
    assert!(s.observation.contains("Paris"), "{}", s.observation);
    assert_eq!(run.answer_source, "fallback");
}

#[test]
fn python_errors_come_back_as_an_error_turn() {
    let run = run(
        AgentConfig {
            max_steps: 1,
            grammar: forced("print(1 / 0)"),
            ..AgentConfig::default()
        },
        "What is one divided by zero?",
    );
    let s = &run.steps[0];
    assert!(
        s.exec_error && s.observation.contains("ZeroDivisionError"),
        "{s:?}"
    );
}

#[test]
fn sag_decodes_candidates_together_and_votes_on_forks() {
    let run = run(
        AgentConfig {
            max_steps: 1,
            step_tokens: 96,
            ..AgentConfig::default().with_sag(4)
        },
        "What is 12 times 12?",
    );
    let s = &run.steps[0];
    assert_eq!(s.candidates.len(), 4);
    let best = s.candidates.iter().map(|c| c.votes).max().unwrap();
    if best > 0 {
        assert_eq!(s.candidates[s.winner].votes, best, "{s:?}");
        assert!(s.candidates[s.winner].ran);
        // The first candidate of the largest group wins.
        assert!(
            s.candidates[..s.winner].iter().all(|c| c.votes < best),
            "{s:?}"
        );
    } else {
        assert_eq!(s.winner, 0);
    }
    // Candidates stopped early did not run or vote, and they were stopped only because
    // the winner was out of reach even if every one of them had joined one rival: that rival
    // stays smaller, or ties while coming later (ties go to the earliest candidate).
    let abandoned: Vec<usize> = (0..s.candidates.len())
        .filter(|&i| s.candidates[i].abandoned)
        .collect();
    assert!(!s.candidates[s.winner].abandoned, "{s:?}");
    for &i in &abandoned {
        assert!(!s.candidates[i].ran && s.candidates[i].votes == 0, "{s:?}");
    }
    if let Some(&first_abandoned) = abandoned.first() {
        let in_best = s.candidates.iter().filter(|c| c.votes == best).count();
        // The largest rival and the earliest candidate it may start with. A second group of
        // the winner's size starts after the winner (the winner is the earliest of them).
        let (other, rival_first) = if in_best > best {
            (best, s.winner + 1)
        } else {
            let other = s
                .candidates
                .iter()
                .map(|c| c.votes)
                .filter(|&v| v != best)
                .max()
                .unwrap_or(0);
            let first = (0..s.candidates.len())
                .find(|&i| other > 0 && s.candidates[i].votes == other)
                .unwrap_or(usize::MAX);
            (other, first)
        };
        let grown = other + abandoned.len();
        assert!(
            grown < best || (grown == best && rival_first.min(first_abandoned) > s.winner),
            "{s:?}"
        );
    }
    assert!(s.llm.decoded_tokens > 0, "{s:?}");
}

#[test]
fn the_first_thought_prefix_starts_the_first_reply() {
    let run = run(
        AgentConfig {
            max_steps: 1,
            step_tokens: 96,
            first_thought: true,
            ..AgentConfig::default()
        },
        "How many legs do three spiders have?",
    );
    let para = run.first_thought.clone().expect("a first thought");
    assert!(
        !para.is_empty() && !para.contains('\n') && !para.contains('`'),
        "{para:?}"
    );
    let reply = &run.steps[0].reply;
    assert!(reply.starts_with(&format!("Thought: {para}")), "{reply:?}");
    // The conversation holds the whole reply, prefix included.
    assert!(
        run.messages[2].content.starts_with("Thought: "),
        "{:?}",
        run.messages
    );
}

#[test]
fn only_the_winning_candidates_effects_reach_the_session() {
    use small_agent::agent::execute_candidates;
    let python = assets::python_backend(Flavour::Full).unwrap();
    let mut py = python.open(Default::default()).unwrap();
    py.exec("shared = []");
    let codes = [
        Some("a_var = 1\nshared.append('a')\nprint('x')".to_owned()),
        None,
        Some("b_var = 2\nshared.append('b')\nprint('y')".to_owned()),
        Some("1 / 0".to_owned()),
        Some("c_var = 3\nshared.append('c')\nprint('y')".to_owned()),
    ];
    let step = execute_candidates(&mut py, &codes).unwrap();
    // The two candidates that printed "y" form the largest group; the first of them wins.
    assert_eq!(step.winner, 2);
    let votes: Vec<usize> = step.candidates.iter().map(|c| c.votes).collect();
    assert_eq!(votes, [1, 0, 2, 0, 2]);
    assert_eq!(step.result.as_ref().unwrap().output, "y\n");
    let seen = py.exec("print([n for n in ('a_var', 'b_var', 'c_var') if n in globals()], shared)");
    assert_eq!(seen.output, "['b_var'] ['b']\n", "{seen:?}");
}

#[test]
fn an_out_of_steps_reply_in_the_step_format_answers_with_its_final_answer() {
    use small_agent::agent::fallback_answer;
    let python = assets::python_backend(Flavour::Full).unwrap();
    let mut py = python.open(Default::default()).unwrap();
    py.exec("found = 'Eenasul Fateh'");
    // The student's reply when its steps ran out (eval, hotpotqa-distractor): the answer is
    // the value final_answer receives, computed from the session's variables.
    let step = "Thought: The search named him.\nCode:\n```py\nfinal_answer(found)\n```<end_code>";
    assert_eq!(fallback_answer(step, &mut py), "Eenasul Fateh");
    // Code without final_answer, or plain words: the reply's text is the answer.
    let no_answer = "Thought: Let me look.\nCode:\n```py\nprint(found)\n```<end_code>";
    assert_eq!(fallback_answer(no_answer, &mut py), no_answer);
    assert_eq!(fallback_answer("  Paris\n", &mut py), "Paris");
}

#[test]
fn a_package_one_candidate_imports_is_loaded_once_for_the_later_forks() {
    use small_agent::agent::execute_candidates;
    use small_agent_sandbox::{Limits, SessionOptions, DEFAULT_ALLOWED_IMPORTS};
    let python = assets::python_backend(Flavour::Full).unwrap();
    // The agent's allow-list plus `sys`, to look at the module cache.
    let mut allowed: Vec<String> = DEFAULT_ALLOWED_IMPORTS
        .iter()
        .map(|m| m.to_string())
        .collect();
    allowed.push("sys".into());
    let mut py = python
        .open(SessionOptions {
            limits: Limits {
                allowed_imports: Some(allowed),
                ..Limits::default()
            },
            ..Default::default()
        })
        .unwrap();
    let probe = "import sys\nprint('sympy' in sys.modules)";
    let codes = [
        Some("import sympy\nprint(sympy.Integer(7) / 2)".to_owned()),
        Some(probe.to_owned()),
        Some(probe.to_owned()),
    ];
    let step = execute_candidates(&mut py, &codes).unwrap();
    // Candidate 0's import was made in the session before its fork, so the forks of 1 and 2
    // found sympy loaded: they agree and win.
    assert_eq!(step.winner, 1, "{step:?}");
    assert_eq!(step.result.as_ref().unwrap().output, "True\n");
    // No name of candidate 0 reached the session.
    let seen = py.exec("print('sympy' in globals())");
    assert_eq!(seen.output, "False\n", "{seen:?}");
}

#[test]
fn after_a_candidate_used_the_timeout_the_others_get_their_share_of_it() {
    use small_agent::agent::execute_candidates;
    use small_agent_sandbox::Limits;
    use std::time::Duration;
    let python = assets::python_backend(Flavour::Full).unwrap();
    let mut py = python.open(Default::default()).unwrap();
    py.set_limits(Limits {
        timeout: Duration::from_secs(1),
        ..py.limits().clone()
    })
    .unwrap();
    let nap = "import time\ntime.sleep(0.6)\nprint('rested')";
    let codes = [
        Some("while True:\n    pass".to_owned()),
        Some(nap.to_owned()),
        Some("print('rested')".to_owned()),
    ];
    let step = execute_candidates(&mut py, &codes).unwrap();
    // The loop used the step's whole second, so the nap got a third of it and was stopped:
    // alone, "rested" from candidate 2 wins. With its own full second the nap would have
    // joined it and won as the earlier one.
    let ran: Vec<bool> = step.candidates.iter().map(|c| c.ran).collect();
    assert_eq!(ran, [false, false, true], "{step:?}");
    assert_eq!(step.winner, 2, "{step:?}");
    // On its own, the nap fits the session's limit.
    let alone = execute_candidates(&mut py, &[Some(nap.to_owned())]).unwrap();
    assert!(alone.candidates[0].ran, "{alone:?}");
}
