#!/usr/bin/env bash
# The project's own evaluation regression: any change that moves a score fails here, with the
# report of `dseval compare` (the same gate users run). Runs with the python3 on PATH (in CI:
# the dev venv of .ci/run).
#
#  1. The `tiny` preset (random weights, real tokenizer) on CPU over the first 2 docs of every
#     task (per MMLU subject), as base and chat prompts, plus a small needle sweep. One thread,
#     so the run is reproducible on a machine; `dseval compare --exact` checks every sample's
#     output digest and metrics bitwise against results/baselines/, and its loglikelihoods to
#     1e-4 nats: CPU models with other vector widths sum float32 in another order (about 2e-6
#     apart on MMLU here), while a prompt, tokenizer or model change moves them far more.
#  2. Replay of gold answers (.ci/gold_outputs.py, built from the data folder at run time):
#     HumanEval's canonical solutions, MATH-500's and DROP's gold answers must score 100%
#     (floors in .ci/gold-replay.toml) and equal the pinned per-doc scores.
#
# `.ci/eval_regression.sh --update` re-pins the baselines after an intended change (commit the
# diff of results/baselines/ with the change that explains it). JUnit XML lands in $JUNIT_DIR
# when that is set.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${DSEVAL_DATA_DIR:-$(pwd)/../shared/data}
baselines=results/baselines
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONHASHSEED=0
dseval() { python3 -m dseval "$@"; }

# Every registered task except the needle sweep (its own command below) and the tasks that need
# an input the data folder lacks: a judge (arena_hard, alpacaeval2; their scoring is pinned by
# tests/test_judged_tasks.py), LiveCodeBench's test files and perplexity's text file (both
# tested on fixtures).
tasks=$(python3 -c 'from dseval.task import all_tasks; skip = {"niah", "arena_hard", "alpacaeval2", "livecodebench", "perplexity"}; print(" ".join(t for t in all_tasks() if t not in skip))')
tiny=(--model tiny --device cpu --limit 2 --max-tokens 16 --data-dir "$data")

echo "== tiny on CPU: $tasks"
dseval run $tasks "${tiny[@]}" --out "$work/tiny-base" >/dev/null
dseval run $tasks "${tiny[@]}" --chat --out "$work/tiny-chat" >/dev/null
dseval niah --model tiny --device cpu --lengths 1k,2k --depths 0,50,100 --data-dir "$data" --out "$work/tiny-niah" >/dev/null
echo "== gold answers replayed"
python3 .ci/gold_outputs.py "$data" "$work/gold.jsonl"
dseval run humaneval math500 drop --model "replay:$work/gold.jsonl" --limit 500 --data-dir "$data" --out "$work/gold-replay" >/dev/null

runs=(tiny-base tiny-chat tiny-niah gold-replay)
if [[ "${1:-}" == "--update" ]]; then
  for run in "${runs[@]}"; do dseval baseline update "$work/$run" --root "$baselines"; done
  exit 0
fi

status=0
pinned=$(python3 -c 'import json, sys; print(" ".join(json.load(open(sys.argv[1]))["tasks"]))' "$baselines/tiny-base/run.json")
if [[ "$pinned" != "$tasks" ]]; then
  echo "the pinned tasks ($pinned) are not the registered ones ($tasks): run .ci/eval_regression.sh --update"
  status=1
fi
for run in "${runs[@]}"; do
  options=(--exact --loglikelihood-atol 1e-4)
  [[ -f ".ci/$run.toml" ]] && options+=(--tolerances ".ci/$run.toml")
  [[ -n "${JUNIT_DIR:-}" ]] && options+=(--junit "$JUNIT_DIR/$run.xml")
  dseval compare "$baselines/$run" "$work/$run" "${options[@]}" || status=1
done
exit $status
