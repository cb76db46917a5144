#!/usr/bin/env python3
"""PyTorch side of `small-agent-distill bench train` (issue #24, point 5).

Measures whole training steps (forward, causal-LM loss, backward, AdamW step,
zero_grad) of a llama-architecture model converted from a GGUF file, with
PyPI torch + transformers + peft, on the CPU, and prints ONE JSON line on
stdout. Everything else goes to stderr.

Run it with the venv that scripts/setup-torch-bench.sh creates:

  PY=$(scripts/setup-torch-bench.sh | tail -1)
  $PY scripts/bench_train_torch.py --gguf MODEL.gguf --mode lora --seq 512 --threads 2
  $PY scripts/bench_train_torch.py --matmul-peak --threads 2

The GGUF is converted once (dequantised by transformers' GGUF loader, which
also undoes llama.cpp's q/k row permutation) to a Hugging Face directory in
safetensors, cached at
  ${SMALL_AGENT_HOME:-~/.cache/small-agent}/torch-models/<sha256 of the GGUF>/
The conversion runs in a child process so that it does not count in
peak_rss_mb.

Exit codes: 0 ok, 2 bad input (missing file, bad option), 1 anything else
(e.g. packages missing: run scripts/setup-torch-bench.sh).
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DTYPES = {"f32": "float32"}


def log(*a):
    print("[bench_train_torch]", *a, file=sys.stderr, flush=True)


def bad_input(msg):
    print(f"bench_train_torch: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def cache_root():
    home = os.environ.get("SMALL_AGENT_HOME")
    if home:
        return home
    return os.path.join(os.path.expanduser("~"), ".cache", "small-agent")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="bench_train_torch.py",
        description="PyTorch training-step benchmark (CPU) for small-agent-distill bench train; "
        "prints one JSON line on stdout.",
    )
    p.add_argument("--gguf", help="llama-architecture GGUF model (required unless --matmul-peak)")
    p.add_argument("--mode", default="lora", choices=["lora", "full"])
    p.add_argument("--seq", type=int, default=512, help="sequence length (tokens per sample)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op and inter-op threads (default: torch's default)")
    p.add_argument("--dtype", default="f32", help="only f32 is supported")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=0.01,
                   help="AdamW weight decay (torch's default 0.01)")
    p.add_argument("--warmup-steps", type=int, default=1, help="untimed steps before measuring")
    p.add_argument("--steps", type=int, default=5, help="measured steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"],
                   help="transformers attention implementation (default sdpa, transformers' own default)")
    p.add_argument("--matmul-peak", action="store_true",
                   help="measure f32 matmul GFLOP/s (2048^3) instead of training")
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--matmul-reps", type=int, default=5)
    # internal: convert the GGUF to a cached HF directory and exit (run in a child process)
    p.add_argument("--convert-only", metavar="OUT_DIR", help=argparse.SUPPRESS)

    a = p.parse_args(argv)
    if a.dtype not in DTYPES:
        bad_input(f"unsupported --dtype {a.dtype!r} (supported: {', '.join(DTYPES)})")
    for name in ("seq", "batch", "steps", "matmul_size", "matmul_reps"):
        if getattr(a, name) < 1:
            bad_input(f"--{name.replace('_', '-')} must be >= 1")
    if a.seq < 2 and not a.matmul_peak:
        bad_input("--seq must be >= 2 (the causal-LM loss needs a next token)")
    if a.warmup_steps < 0:
        bad_input("--warmup-steps must be >= 0")
    if a.threads is not None and a.threads < 1:
        bad_input("--threads must be >= 1")
    if a.rank < 1:
        bad_input("--rank must be >= 1")
    if not (0.0 <= a.dropout < 1.0):
        bad_input("--dropout must be in [0, 1)")
    if not a.matmul_peak:
        if not a.gguf:
            bad_input("--gguf PATH is required (or use --matmul-peak)")
        if not os.path.isfile(a.gguf):
            bad_input(f"GGUF file not found: {a.gguf}")
        with open(a.gguf, "rb") as f:
            if f.read(4) != b"GGUF":
                bad_input(f"not a GGUF file (bad magic): {a.gguf}")
    return a


def import_torch(threads):
    if threads is not None:
        # Before importing torch, so OpenMP/MKL pools start at the right size.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
    try:
        import torch
    except ImportError as e:
        print(f"bench_train_torch: cannot import torch ({e}); run scripts/setup-torch-bench.sh "
              "and use the python it prints", file=sys.stderr)
        sys.exit(1)
    if threads is not None:
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError as e:  # only settable once, before any inter-op work
            log(f"warning: set_num_interop_threads failed: {e}")
    return torch


def peak_rss_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ----------------------------------------------------------------------------
# GGUF -> Hugging Face safetensors directory (cached by sha256)


def convert(gguf_path, out_dir):
    """Runs in a child process: dequantise the GGUF with transformers and save safetensors."""
    torch = import_torch(None)
    from transformers import AutoModelForCausalLM

    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    gguf_path = os.path.abspath(gguf_path)
    log(f"converting {gguf_path} -> {out_dir} (dequantising to f32)")
    kw = {"gguf_file": os.path.basename(gguf_path)}
    try:  # transformers >= 5 keeps GGUF blocks packed unless told to dequantise
        from transformers import GgufConfig
        kw["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    model = load_causal_lm(AutoModelForCausalLM, torch, os.path.dirname(gguf_path), **kw)
    # The dequantised model is a plain dense one, but transformers still marks it as
    # "GGUF-quantised, not serialisable": drop that marking before saving.
    model.hf_quantizer = None
    for obj in (model, model.config):
        if hasattr(obj, "quantization_config"):
            try:
                delattr(obj, "quantization_config")
            except AttributeError:
                pass
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    model.save_pretrained(tmp, safe_serialization=True)
    with open(os.path.join(tmp, "small-agent-source.json"), "w") as f:
        json.dump({"gguf": gguf_path, "sha256": os.path.basename(out_dir),
                   "transformers_gguf_loader": "dequantize"}, f)
    os.replace(tmp, out_dir)
    log(f"converted in {time.perf_counter() - t0:.1f}s")


def load_causal_lm(auto_cls, torch, path, **kw):
    kw.setdefault("attn_implementation", "eager")
    try:
        return auto_cls.from_pretrained(path, dtype=torch.float32, **kw)
    except TypeError:  # older transformers spell it torch_dtype
        return auto_cls.from_pretrained(path, torch_dtype=torch.float32, **kw)


def converted_dir(gguf_path):
    log(f"hashing {gguf_path}")
    sha = sha256_file(gguf_path)
    base = os.path.join(cache_root(), "torch-models")
    out = os.path.join(base, sha)
    if os.path.isfile(os.path.join(out, "config.json")) and any(
        n.endswith(".safetensors") for n in os.listdir(out)
    ):
        log(f"using cached conversion {out}")
        return out
    os.makedirs(base, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    # Child process: the dequantising load's memory must not count in our peak RSS.
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--gguf", gguf_path,
                        "--convert-only", out], stdout=sys.stderr)
    if r.returncode != 0 or not os.path.isfile(os.path.join(out, "config.json")):
        print(f"bench_train_torch: converting {gguf_path} failed (exit {r.returncode})",
              file=sys.stderr)
        sys.exit(1)
    return out


# ----------------------------------------------------------------------------


def matmul_peak(a, torch):
    n = a.matmul_size
    g = torch.Generator().manual_seed(a.seed)
    x = torch.randn(n, n, generator=g, dtype=torch.float32)
    y = torch.randn(n, n, generator=g, dtype=torch.float32)
    torch.mm(x, y)  # warm-up
    times = []
    for _ in range(a.matmul_reps):
        t0 = time.perf_counter()
        torch.mm(x, y)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {
        "framework": "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dtype": "f32",
        "matmul_size": n,
        "matmul_seconds": times,
        "matmul_gflops": 2.0 * n ** 3 / t / 1e9,
    }


def train_bench(a, torch):
    import transformers
    from transformers import AutoModelForCausalLM

    model_dir = converted_dir(a.gguf)
    torch.manual_seed(a.seed)
    model = load_causal_lm(AutoModelForCausalLM, torch, model_dir, attn_implementation=a.attn)
    model.config.use_cache = False
    vocab = model.config.vocab_size
    log(f"model: {model.config.model_type}, {model.config.num_hidden_layers} layers, "
        f"hidden {model.config.hidden_size}, vocab {vocab}, "
        f"tied embeddings {getattr(model.config, 'tie_word_embeddings', None)}, attn {a.attn}")

    peft_version = None
    if a.mode == "lora":
        import peft
        from peft import LoraConfig, get_peft_model
        peft_version = peft.__version__
        cfg = LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=a.dropout,
                         target_modules=LORA_TARGETS, bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()

    # Count unique tensors (tied embedding/head counted once).
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=a.weight_decay)
    log(f"mode {a.mode}: trainable {trainable:,} / total {total:,} params; "
        f"seq {a.seq} batch {a.batch} threads {torch.get_num_threads()} "
        f"(interop {torch.get_num_interop_threads()})")

    gen = torch.Generator().manual_seed(a.seed)
    step_seconds, losses = [], []
    for i in range(a.warmup_steps + a.steps):
        ids = torch.randint(0, vocab, (a.batch, a.seq), generator=gen)
        t0 = time.perf_counter()
        # labels=ids: transformers shifts internally, mean cross-entropy of
        # logits[:, :-1] against ids[:, 1:] (seq-1 predictions per sample).
        out = model(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        loss = float(out.loss.detach())
        del out
        measured = i >= a.warmup_steps
        if measured:
            step_seconds.append(dt)
            losses.append(loss)
        log(f"step {i + 1}/{a.warmup_steps + a.steps} {'measured' if measured else 'warm-up '} "
            f"{dt:.3f}s loss {loss:.4f} ({a.seq * a.batch / dt:.1f} tok/s)")

    tps = statistics.median(a.seq * a.batch / s for s in step_seconds)
    return {
        "framework": "pytorch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft_version,
        "mode": a.mode,
        "seq": a.seq,
        "batch": a.batch,
        "threads": torch.get_num_threads(),
        "dtype": a.dtype,
        "attn": a.attn,
        "rank": a.rank if a.mode == "lora" else None,
        "alpha": a.alpha if a.mode == "lora" else None,
        "dropout": a.dropout if a.mode == "lora" else None,
        "steps": a.steps,
        "warmup_steps": a.warmup_steps,
        "tokens_per_s": tps,
        "step_seconds": step_seconds,
        "losses": losses,
        "peak_rss_mb": peak_rss_mb(),
        "params_trainable": trainable,
        "params_total": total,
    }


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)

    if a.convert_only:
        convert(a.gguf, a.convert_only)
        return 0

    # Keep stdout for the one JSON line: anything else written to fd 1 (library
    # prints, native code) goes to stderr.
    sys.stdout.flush()
    json_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    torch = import_torch(a.threads)
    result = matmul_peak(a, torch) if a.matmul_peak else train_bench(a, torch)

    with os.fdopen(json_fd, "w") as out:
        out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
