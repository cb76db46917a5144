#!/usr/bin/env bash
# Speed of the portable build against the native one on `bench llm`, in one run: the two
# binaries alternate (which goes first swaps every round), each round one `bench llm --rounds 1`
# (pp512 / tg128 of the default model, with llama-bench as both sides' common yardstick).
#
#   scripts/bench-portable.sh [--rounds N] [--threads T] [--as-is]
#
# Needs scripts/setup.sh --dev (native build, llama-bench) and scripts/build-portable.sh.
# Prints one line per run and the median tok/s of each build with the ratio portable/native.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3
threads=2
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --as-is) extra+=(--as-is); shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "bench-portable.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
native=bin/small-agent
[ "$(readlink -f bin/small-agent)" != "$(readlink -f dist/small-agent-portable/small-agent)" ] || {
  echo "bench-portable.sh: bin/small-agent is the portable build; run scripts/setup.sh first" >&2; exit 2; }
portable=dist/small-agent-portable/small-agent
[ -x "$portable" ] || { echo "bench-portable.sh: $portable is missing: run scripts/build-portable.sh" >&2; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for i in $(seq 1 "$rounds"); do
  if [ $((i % 2)) = 1 ]; then order="native portable"; else order="portable native"; fi
  for b in $order; do
    exe=$native; [ "$b" = portable ] && exe=$portable
    "$exe" bench llm --rounds 1 --threads "$threads" "${extra[@]}" --json >"$out/$b-$i.json"
    echo "round $i: $b done" >&2
  done
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys, os
d, rounds = sys.argv[1], int(sys.argv[2])
res = {b: {"pp": [], "tg": [], "pp_vs_lb": [], "tg_vs_lb": []} for b in ("native", "portable")}
for b in res:
    for i in range(1, rounds + 1):
        r = json.load(open(os.path.join(d, f"{b}-{i}.json")))["rounds"][0]
        for k in ("pp", "tg"):
            res[b][k].append(r["ours"][k]["tokens_per_s"])
            res[b][k + "_vs_lb"].append(r["ours"][k]["tokens_per_s"] / r["llama_bench"][k]["tokens_per_s"])
med = statistics.median
for k in ("pp", "tg"):
    n, p = med(res["native"][k]), med(res["portable"][k])
    print(f"{k}: native {n:.1f} tok/s, portable {p:.1f} tok/s: portable/native {p / n:.3f}; "
          f"against llama-bench in the same round: native {med(res['native'][k + '_vs_lb']):.3f}, "
          f"portable {med(res['portable'][k + '_vs_lb']):.3f}")
PY
