#!/usr/bin/env python3
"""The student's dev sets: the questions of a distillation dataset's validation split.

    scripts/dev-sets.py DATA OUT_DIR

DATA is the folder `scripts/distill-data.sh` wrote. The validation split holds training-set
questions (GSM8K train through Q-Solv, HotpotQA train through FireAct) that the student never
trains on, so hyper-parameters can be chosen on them without touching an evaluation set.
Writes OUT_DIR/dev-gsm8k.jsonl and OUT_DIR/dev-hotpotqa.jsonl as `{id, question, answer,
dataset_name}` lines, which `small-agent eval --dataset FILE` reads (gsm8k: scored as math).
"""
import json
import pathlib
import sys


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    data, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    ids_file = data / "agent-dataset" / "val.ids.jsonl"
    trajectories = data / "agent.jsonl"
    for f in (ids_file, trajectories):
        if not f.is_file():
            print(f"dev-sets.py: {f} is missing: run scripts/distill-data.sh {data} first",
                  file=sys.stderr)
            return 2
    val_ids = [json.loads(line)["id"] for line in ids_file.open()]
    wanted = set(val_ids)
    rows = {}
    for line in trajectories.open():
        r = json.loads(line)
        if r["id"] in wanted:
            rows[r["id"]] = r
    missing = wanted - rows.keys()
    if missing:
        print(f"dev-sets.py: {len(missing)} validation ids are not in {trajectories} "
              f"(e.g. {sorted(missing)[0]}): the dataset and the trajectories disagree; "
              "run scripts/distill-data.sh again", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    sets = {"gsm8k": [], "hotpotqa": []}
    for i in val_ids:  # the split's order: stable across runs
        r = rows[i]
        name = "gsm8k" if r["answer_kind"] == "math" else "hotpotqa"
        sets[name].append({"id": i, "question": r["question"], "answer": r["true_answers"],
                           "dataset_name": f"{name}-train-dev"})
    for name, items in sets.items():
        path = out / f"dev-{name}.jsonl"
        with path.open("w") as f:
            for item in items:
                f.write(json.dumps(item) + "\n")
        print(f"{path}: {len(items)} questions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
