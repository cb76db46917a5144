#!/usr/bin/env python3
"""End-to-end speed of small-agent against smolagents' CodeAgent on llama-cpp-python.

Both agents answer the same questions in the same run, question by question (the order of
the two sides alternates, so a slow phase of a shared machine hits both), with the same
GGUF, context size, threads, greedy decoding, token cap per step and step limit, and a
`web_search` tool that returns the same text for the same query.

What each time includes:
  ours  `run`   : the agent run as `small-agent ask --json` reports it (`total_ms`): every
                  step's model call, code execution and search, the fallback answer call;
                  not the process start, model load, shard open or interpreter load.
  ours  `proc`  : the whole `ask` process (one per question), i.e. `run` plus all loading.
  peer  `run`   : wall time of `CodeAgent.run(question)` with the model already loaded
                  in-process (loaded once, time reported separately). Its `web_search`
                  starts a `small-agent index search` process per call; that time is
                  reported as `search` and also taken out in the `run - search` ratio.
  per step      : (run time - fallback answer call) / number of agent steps, both sides.

Run it through scripts/bench-peer.sh, which sets up the peer's virtualenv. `--help` lists
the options; `--json` prints the records, `--out FILE` writes them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
DEFAULT_SETS = {
    "hotpotqa-train": DATA / "hipporag-samples" / "hotpotqa_train.json",
    "math-train": DATA / "agent-distillation" / "math" / "train" / "math_1000_20250414.json",
}
# Our agent's caps (runtime/src/agent/mod.rs: DEFAULT_STEP_TOKENS, FALLBACK_TOKENS).
STEP_TOKENS = 384
FALLBACK_TOKENS = 96
WARMUP_QUESTION = "What is 2 + 2?"


def default_binary() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR") or str(ROOT / "target")
    built = Path(target) / "release" / "small-agent"
    linked = ROOT / "bin" / "small-agent"  # what scripts/setup.sh links
    return built if built.is_file() or not linked.exists() else linked


def load_questions(path: Path, limit: int, offset: int) -> list[dict]:
    if not path.is_file():
        sys.exit(f"bench_peer.py: question file {path} is missing (see ../shared/data/README.md)")
    data = json.loads(path.read_text())
    items = data["examples"] if isinstance(data, dict) else data
    out = []
    for it in items[offset:]:
        if it.get("answer") is None:
            continue
        out.append({"question": str(it["question"]), "answer": str(it["answer"])})
        if len(out) == limit:
            break
    return out


def default_model(binary: Path) -> Path:
    listing = json.loads(subprocess.run([str(binary), "models", "list", "--json"],
                                        check=True, capture_output=True, text=True).stdout)
    for asset in listing["assets"]:
        if asset["kind"] == "llm" and asset["installed"]:
            return Path(asset["files"][0]["path"])
    sys.exit("bench_peer.py: no model installed; run `small-agent models fetch`")


# ---------------------------------------------------------------------------------- ours
def run_ours(args, question: str) -> dict:
    cmd = [str(args.binary), "ask", "--json", "--greedy", "--threads", str(args.threads),
           "--ctx-size", str(args.ctx_size), "--max-steps", str(args.max_steps),
           "--model", str(args.model)]
    if args.index:
        cmd += ["--index", str(args.index)]
    if args.no_grammar:
        cmd.append("--no-grammar")
    t0 = time.perf_counter()
    p = subprocess.run(cmd + ["--", question], capture_output=True, text=True)
    proc_ms = (time.perf_counter() - t0) * 1000
    try:
        run = json.loads(p.stdout)
    except json.JSONDecodeError:
        return {"error": f"exit {p.returncode}: {p.stderr.strip()[-300:]}", "proc_ms": proc_ms}
    fb = run.get("fallback")
    fallback_ms = fb["prompt_ms"] + fb["gen_ms"] if fb else 0.0
    steps = run["steps"]
    return {
        "answer": run["answer"],
        "answer_source": run["answer_source"],
        "error": run.get("error"),
        "steps": len(steps),
        "run_ms": run["total_ms"],
        "proc_ms": proc_ms,
        "fallback_ms": fallback_ms,
        "step_ms": [s["llm"]["prompt_ms"] + s["llm"]["gen_ms"] + s["exec_ms"] for s in steps],
        "searches": sum(s["tool_calls"] for s in steps),
        "prompt_tokens_evaluated": sum(s["llm"]["prompt_tokens"] - s["llm"]["cached_tokens"]
                                       for s in steps),
        "gen_tokens": sum(s["llm"]["gen_tokens"] for s in steps) + (fb["gen_tokens"] if fb else 0),
        "system_prompt": run["messages"][0]["content"] if run.get("messages") else None,
    }


# ---------------------------------------------------------------------------------- peer
def make_peer(args):
    """Builds the peer's model and search tool (imports the venv's packages)."""
    from llama_cpp import Llama
    from smolagents import Model, Tool
    from smolagents.models import ChatMessage, MessageRole
    from smolagents.monitoring import TokenUsage

    class LlamaCppModel(Model):
        """A smolagents model over an in-process llama_cpp.Llama, greedy."""

        def __init__(self, llm: Llama):
            super().__init__(flatten_messages_as_text=True, model_id="llama-cpp-local")
            self.llm = llm

        def generate(self, messages, stop_sequences=None, response_format=None,
                     tools_to_call_from=None, **kwargs):
            prepared = self._prepare_completion_kwargs(messages, stop_sequences=stop_sequences)
            chat = [{"role": getattr(m["role"], "value", m["role"]), "content": m["content"]}
                    for m in prepared["messages"]]
            # CodeAgent passes stop sequences on its steps and none on the fallback answer
            # call after the last step: the same caps as our agent's two kinds of call.
            cap = STEP_TOKENS if stop_sequences is not None else FALLBACK_TOKENS
            out = self.llm.create_chat_completion(
                messages=chat, stop=prepared.get("stop"), max_tokens=cap,
                temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, seed=42)
            usage = out["usage"]
            return ChatMessage(
                role=MessageRole.ASSISTANT, content=out["choices"][0]["message"]["content"] or "",
                token_usage=TokenUsage(input_tokens=usage["prompt_tokens"],
                                       output_tokens=usage["completion_tokens"]))

    binary, index = args.binary, args.index

    class ShardSearch(Tool):
        name = "web_search"
        description = ("Searches the local Wikipedia shard and returns the top 3 passages, "
                       "each headed with its rank and score.")
        inputs = {"query": {"type": "string", "description": "what to look for"}}
        output_type = "string"

        def __init__(self):
            super().__init__()
            self.calls = 0
            self.ms = 0.0

        def forward(self, query: str) -> str:
            t0 = time.perf_counter()
            cmd = [str(binary), "index", "search", "-k", "3", "--json"]
            if index:
                cmd += ["--index", str(index)]
            p = subprocess.run(cmd + ["--", str(query)], capture_output=True, text=True,
                               check=True)
            hits = json.loads(p.stdout)["results"]
            self.calls += 1
            self.ms += (time.perf_counter() - t0) * 1000
            return format_for_agent(hits)

    t0 = time.perf_counter()
    llm = Llama(model_path=str(args.model), n_ctx=args.ctx_size, n_batch=512,
                n_threads=args.threads, n_threads_batch=args.threads, seed=42, verbose=False)
    load_ms = (time.perf_counter() - t0) * 1000
    return LlamaCppModel(llm), ShardSearch, load_ms


def format_for_agent(hits: list[dict]) -> str:
    """The text of our web_search (small_agent_index::format_for_agent), from the CLI's JSON."""
    if not hits:
        return "No passages matched the query. Try other keywords."
    return "\n\n".join(f'Result {h["rank"]} (score {h["score"]:.3f}):\n"{h["title"]}"\n'
                       f'{h["text"].strip()}' for h in hits[:3])


def run_peer(args, model, search_cls, question: str, our_system_prompt: str | None) -> dict:
    from smolagents import CodeAgent
    from smolagents.monitoring import LogLevel
    from smolagents.memory import ActionStep
    from smolagents.utils import AgentMaxStepsError

    search = search_cls()
    kwargs = {}
    if args.peer_prompt == "ours":
        # Our system prompt text, word for word, and our ```py fences.
        kwargs["code_block_tags"] = "markdown"
    agent = CodeAgent(tools=[search], model=model, max_steps=args.max_steps,
                      additional_authorized_imports=["numpy", "sympy"],
                      verbosity_level=LogLevel.OFF, **kwargs)
    if args.peer_prompt == "ours":
        if not our_system_prompt:
            raise RuntimeError("--peer-prompt ours needs our run's system prompt")
        agent.prompt_templates["system_prompt"] = "{% raw %}" + our_system_prompt + "{% endraw %}"
    t0 = time.perf_counter()
    error = None
    try:
        answer = agent.run(question)
    except Exception as e:  # a generation error (e.g. context overflow) ends the run
        answer, error = None, f"{type(e).__name__}: {e}"[:300]
    run_ms = (time.perf_counter() - t0) * 1000
    steps, fallback_ms, gen_tokens, prompt_tokens, errors = [], 0.0, 0, 0, 0
    for s in agent.memory.steps:
        if not isinstance(s, ActionStep):
            continue
        ms = (s.timing.duration or 0.0) * 1000
        if s.token_usage:
            gen_tokens += s.token_usage.output_tokens
            prompt_tokens += s.token_usage.input_tokens
        if isinstance(s.error, AgentMaxStepsError):
            fallback_ms = ms
            continue
        errors += s.error is not None
        steps.append(ms)
    return {
        "answer": None if answer is None else str(answer),
        "error": error,
        "steps": len(steps),
        "step_errors": errors,
        "run_ms": run_ms,
        "fallback_ms": fallback_ms,
        "step_ms": steps,
        "searches": search.calls,
        "search_ms": search.ms,
        "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens,
    }


# ------------------------------------------------------------------------------- report
def per_step(side: dict) -> float | None:
    if not side.get("steps"):
        return None
    return (side["run_ms"] - side["fallback_ms"]) / side["steps"]


def ratios(records: list[dict], key) -> list[float]:
    out = []
    for r in records:
        a, b = key(r["peer"]), key(r["ours"])
        if a and b:
            out.append(a / b)
    return out


def mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def summary(records: list[dict]) -> dict:
    def stat(xs):
        return {"median": statistics.median(xs), "mean": statistics.fmean(xs), "n": len(xs)} \
            if xs else None

    ok = [r for r in records if not r["ours"].get("error") and not r["peer"].get("error")]
    return {
        "questions": len(records),
        "both_finished": len(ok),
        "question_peer_over_ours_run": stat(ratios(ok, lambda s: s["run_ms"])),
        "question_peer_over_ours_process": stat(
            [r["peer"]["run_ms"] / r["ours"]["proc_ms"] for r in ok]),
        "question_peer_minus_search_over_ours_run": stat(
            [(r["peer"]["run_ms"] - r["peer"]["search_ms"]) / r["ours"]["run_ms"] for r in ok]),
        "step_peer_over_ours": stat(ratios(ok, per_step)),
        # Normalised by the tokens each side generated (whole run / generated tokens): how much
        # of the gap is the peer writing longer replies rather than each token costing more.
        "per_generated_token_peer_over_ours": stat(
            [(r["peer"]["run_ms"] / r["peer"]["gen_tokens"]) / (r["ours"]["run_ms"] / r["ours"]["gen_tokens"])
             for r in ok if r["peer"]["gen_tokens"] and r["ours"]["gen_tokens"]]),
        "sum_peer_over_ours_run": (sum(r["peer"]["run_ms"] for r in ok)
                                   / sum(r["ours"]["run_ms"] for r in ok)) if ok else None,
        "mean_ms": {
            side: {
                "run": mean([r[side]["run_ms"] for r in ok]),
                "per_step": mean([x for r in ok if (x := per_step(r[side]))]),
                "steps": mean([r[side]["steps"] for r in ok]),
                "gen_tokens": mean([r[side]["gen_tokens"] for r in ok]),
            } for side in ("ours", "peer")
        },
    }


def print_table(label: str, records: list[dict], s: dict) -> None:
    print(f"\n## {label}: {s['questions']} questions, both finished {s['both_finished']}")
    print("| # | ours s (proc) | peer s (search) | ratio | ours steps · s/step | "
          "peer steps · s/step | ratio/step |")
    print("|---|---|---|---|---|---|---|")
    for i, r in enumerate(records):
        o, p = r["ours"], r["peer"]
        if o.get("error") and "run_ms" not in o or p.get("error") and not p.get("steps"):
            print(f"| {i} | error: {o.get('error') or ''} | {p.get('error') or ''} |||||")
            continue
        ps_o, ps_p = per_step(o), per_step(p)
        print(f"| {i} | {o['run_ms']/1000:.1f} ({o['proc_ms']/1000:.1f}) "
              f"| {p['run_ms']/1000:.1f} ({p['search_ms']/1000:.1f}) "
              f"| {p['run_ms']/o['run_ms']:.1f}× "
              f"| {o['steps']} · {ps_o/1000 if ps_o else 0:.2f} "
              f"| {p['steps']} · {ps_p/1000 if ps_p else 0:.2f} "
              f"| {(ps_p/ps_o) if ps_o and ps_p else float('nan'):.1f}× |")

    def fmt(k):
        v = s[k]
        return f"median {v['median']:.2f}×, mean {v['mean']:.2f}× (n={v['n']})" if v else "n/a"
    print(f"\nper question, peer run / ours run:            {fmt('question_peer_over_ours_run')}")
    print(f"per question, peer run / ours whole process:  {fmt('question_peer_over_ours_process')}")
    print(f"per question, (peer run - search) / ours run: "
          f"{fmt('question_peer_minus_search_over_ours_run')}")
    print(f"per step, peer / ours:                        {fmt('step_peer_over_ours')}")
    print(f"run time per generated token, peer / ours:    "
          f"{fmt('per_generated_token_peer_over_ours')}")
    for side, m in s["mean_ms"].items():
        if m["run"] is not None:
            print(f"{side}: mean {m['run']/1000:.1f} s per question, {m['steps']:.1f} steps, "
                  f"{m['per_step']/1000:.2f} s per step, {m['gen_tokens']:.0f} tokens generated "
                  f"per question (fallback call included)")
    print("target (BRIEF §6): ≥ 3× per question")


def report(results: dict) -> dict:
    """Prints each set's table and one over all sets; returns the overall summary."""
    m = results["meta"]
    print(f"threads {m['threads']}, ctx {m['ctx_size']}, max steps {m['max_steps']}, "
          f"grammar {m['grammar']}, peer prompt {m['peer_prompt']}; smolagents "
          f"{m['smolagents']}, llama-cpp-python {m['llama_cpp_python']}; peer model load "
          f"{m['peer_model_load_ms']:.0f} ms (once); load average at start {m['loadavg_start']}")
    all_records = []
    for label, s in results["sets"].items():
        print_table(label, s["records"], summary(s["records"]))
        all_records += s["records"]
    overall = summary(all_records)
    if len(results["sets"]) > 1:
        print_table("all", all_records, overall)
    return overall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", action="append", type=Path, metavar="FILE",
                    help="question file ([{question, answer}] or {examples: [...]}), repeatable "
                         "[default: HotpotQA train (HippoRAG samples) and MATH train]")
    ap.add_argument("--limit", type=int, default=10, help="questions per file [10]")
    ap.add_argument("--offset", type=int, default=0, help="skip this many per file [0]")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads, both sides [2]")
    ap.add_argument("--max-steps", type=int, default=5, help="agent steps, both sides [5]")
    ap.add_argument("--ctx-size", type=int, default=8192,
                    help="context size, both sides [8192: the peer's own prompt is ~4k tokens]")
    ap.add_argument("--binary", type=Path, default=default_binary(),
                    help="small-agent release binary [$CARGO_TARGET_DIR/release/small-agent, "
                         "else bin/small-agent]")
    ap.add_argument("--model", type=Path, help="GGUF [the installed default model]")
    ap.add_argument("--index", type=Path, help="shard directory [the default shard]")
    ap.add_argument("--no-grammar", action="store_true", help="run ours without the step grammar")
    ap.add_argument("--peer-prompt", choices=["smolagents", "ours"], default="smolagents",
                    help="the peer's system prompt: its own CodeAgent prompt (what its users "
                         "get), or our prompt word for word with ```py fences [smolagents]")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the one unrecorded warm-up question on each side")
    ap.add_argument("--json", action="store_true", help="print the records as JSON")
    ap.add_argument("--out", type=Path, help="write the records as JSON to FILE")
    ap.add_argument("--report", type=Path, metavar="FILE",
                    help="print the tables of an earlier --out FILE (finished or not) and exit")
    args = ap.parse_args()
    if args.report:
        report(json.loads(args.report.read_text()))
        return
    if not args.binary.is_file():
        sys.exit(f"bench_peer.py: {args.binary} is missing; build it (scripts/setup.sh)")
    args.model = args.model or default_model(args.binary)
    sets = ({p.stem: p for p in args.questions} if args.questions else DEFAULT_SETS)

    model, search_cls, load_ms = make_peer(args)
    import llama_cpp
    import smolagents
    meta = {
        "threads": args.threads, "max_steps": args.max_steps, "ctx_size": args.ctx_size,
        "model": str(args.model), "index": str(args.index or "default shard"),
        "grammar": not args.no_grammar, "peer_prompt": args.peer_prompt,
        "smolagents": smolagents.__version__, "llama_cpp_python": llama_cpp.__version__,
        "peer_model_load_ms": load_ms, "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }
    print(f"peer: smolagents {meta['smolagents']}, llama-cpp-python {meta['llama_cpp_python']}, "
          f"model loaded once in {load_ms:.0f} ms; threads {args.threads}, "
          f"ctx {args.ctx_size}, max steps {args.max_steps}", file=sys.stderr)

    our_prompt = None
    if not args.no_warmup:
        our_prompt = run_ours(args, WARMUP_QUESTION).get("system_prompt")
        run_peer(args, model, search_cls, WARMUP_QUESTION, our_prompt)
    results = {"meta": meta, "sets": {}}
    questions = {label: load_questions(path, args.limit, args.offset) for label, path in sets.items()}
    for label in sets:
        results["sets"][label] = {"records": []}
    # The sets take turns question by question, so a run cut short still covers each of them;
    # the records are written after every question.
    step = 0
    for i in range(max(len(q) for q in questions.values())):
        for label, qs in questions.items():
            if i >= len(qs):
                continue
            q = qs[i]
            # Alternate which side goes first, so drifting load on a shared machine hits both.
            order = ("ours", "peer") if step % 2 == 0 else ("peer", "ours")
            step += 1
            rec = {"question": q["question"], "gold": q["answer"], "first": order[0]}
            for side in order:
                if side == "ours":
                    rec["ours"] = run_ours(args, q["question"])
                    our_prompt = our_prompt or rec["ours"].get("system_prompt")
                    rec["ours"].pop("system_prompt", None)
                else:
                    rec["peer"] = run_peer(args, model, search_cls, q["question"], our_prompt)
            o, p = rec["ours"], rec["peer"]
            print(f"[{label} {i + 1}/{len(qs)}] ours {o.get('run_ms', 0)/1000:.1f} s "
                  f"{o.get('steps', 0)} steps · peer {p['run_ms']/1000:.1f} s {p['steps']} steps"
                  f"{' · ours error: ' + o['error'] if o.get('error') else ''}"
                  f"{' · peer error: ' + p['error'] if p.get('error') else ''}", file=sys.stderr)
            results["sets"][label]["records"].append(rec)
            if args.out:
                args.out.write_text(json.dumps(results, indent=1))
    for label, s in results["sets"].items():
        s["summary"] = summary(s["records"])
    meta["loadavg_end"] = os.getloadavg()

    results["summary"] = report(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
