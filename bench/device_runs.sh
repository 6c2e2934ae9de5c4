#!/usr/bin/env bash
# The device runs of bench/README.md, from a bare checkout: `bash bench/device_runs.sh WHAT OUTDIR`.
#   w3:     the one-GPU W3 table (issue 5): every batch x prompt cell, the 128K prefill and
#           transformers at the same cells (as far as its time budget and memory reach).
# On one host of 2 H200s (device kind nvidia-h200-x2):
#   proof:  W3 (3 layers) on one GPU, then TP2, EP2 (all-to-all), EP2 (reference all-reduce)
#           and DP2 (two replicas): decode at batch 1 and 32, eval throughput, and each sharded
#           layout's decode logits against the single GPU's.
#   fused:  the one-GPU cells at prompts 256 and 4K with a kernel profile of a B=1 step, then TP2.
#   dp:     eval throughput alone, one GPU against two data-parallel replicas.
#   tpep:   one GPU against TP2 attention + EP2 experts on the same two ranks (both exchanges)
#           and TP2 alone, decode at batch 1 and 32 and eval throughput, with the logits check.
#   fp8:    the FP8 prefill-attention kernel against bf16 cuDNN at W3 shapes, then its config
#           sweep, then the 128K prefill with each attention backend.
#   prefill: every kernel check at real sizes, the MoE and prefill-GEMM sections, the MoE prefill
#           configs, then the 128K prefill with each attention backend and a kernel profile of
#           the FP8-attention one.
#   chunks: every kernel check at real sizes, then the 128K prefill at token budgets of 16K, 32K
#           and 64K per step (FP8 and bf16 attention; a kernel profile of the 16K FP8 one).
#   harness: bench/harness.py: W3 written to disk, then `dseval run` per task as a user runs it,
#           the transformers loglikelihood loop and the engine alone on the same prompts. Needs
#           the benchmark data and the V3 tokenizer in DATA (default ../shared/data) and, on the
#           device, math-verify's wheels (bench/harness.py's docstring). Then bench/load.py on
#           the checkpoint it wrote: pageable against pinned staged host-to-GPU copies. On two
#           GPUs (nvidia-h200-x2), BENCH_EXTRA="--dp 2" adds each task on two replicas.
#   shapes: first-call cost of each prefill-attention backend on unseen prompt lengths.
#   oneshot: one GPU, then TP2 and EP2 each with small all-reduces by the one-shot symmetric-memory
#           kernel (engine/parallel/one_shot_all_reduce.py, with the logits check) and by NCCL, decode at
#           batch 1 and 32.
#   profile: kernel profiles of a TP2 decode step at batch 1 and an EP2 one at batch 32 (where
#           the sharded layouts lose time), and TP2 with NCCL's low-latency protocol.
#   layers: TP2 attention + EP2 experts at two layer counts, for the per-layer extrapolation
#           of the 61-layer model; then bench/expert_parallel.py (one V3 MoE layer, both
#           expert-parallel exchanges).
# On one host of 4 H200s (device kind nvidia-h200-x4):
#   x4:     one GPU, then TP4 (small all-reduces one-shot, with the logits check, and NCCL), EP4
#           (logits check) at batch 1 and 32, and eval throughput of four data-parallel replicas.
# The checkout is put on the import path as the installed package would be (dseval.engine ->
# engine/ ...) without pip, so nothing is built on the device.
set -uo pipefail
what=${1:?w3, proof or layers}
out=${2:?output folder}
mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd)
pkg=$(mktemp -d)/site
mkdir -p "$pkg/dseval"
for f in "$root"/dseval/*; do ln -s "$f" "$pkg/dseval/"; done
for d in engine tasks kernels; do ln -s "$root/$d" "$pkg/dseval/$d"; done
export PYTHONPATH="$pkg" PYTHONUNBUFFERED=1 NCCL_RUNTIME_CONNECT=0
unset OUT  # engine_w3.py would copy its JSON there too
cd "$root"
read -r -a extra <<< "${BENCH_EXTRA:-}"
par() { timeout 240 torchrun --nproc-per-node "${NPROC:-2}" bench/engine_w3.py --no-hf --prefill-len 0 "$@" "${extra[@]}"; }

if [ "$what" = w3 ]; then
  CUDA_VISIBLE_DEVICES=0 timeout 420 python3 bench/engine_w3.py --hf-prompts 256 4096 32768 --hf-budget-s 200 \
    --deadline-s 300 "${extra[@]}" --out "$out/engine_w3.json" 2>&1 | tee "$out/engine_w3.log"
elif [ "$what" = harness ]; then
  data=${DATA:-$root/../shared/data}
  # harness.py gives its runs a bytecode cache and a Triton cache of their own (a fresh install's)
  timeout 420 python3 bench/harness.py --data-dir "$data" --tokenizer-dir "$data/tokenizers/deepseek-v3" \
    --cli-timeout 150 --hf-docs 300 "${extra[@]}" --out "$out/harness.json" 2>&1 | tee "$out/harness.log"
  # the checkpoint the harness wrote, now in the page cache: pageable against staged copies
  timeout 150 python3 bench/load.py --ckpt /tmp/dseval_w3 --out "$out/load.json" 2>&1 | tee "$out/load.log"
elif [ "$what" = proof ]; then
  common=(--batches 1 32 --prompts 256 --skip e2e --eval-requests 512)
  CUDA_VISIBLE_DEVICES=0 timeout 240 python3 bench/engine_w3.py --no-hf --prefill-len 0 "${common[@]}" "${extra[@]}" \
    --profile-batch 1 --save-logits "$out/single_logits.pt" --out "$out/x2_single.json" 2>&1 | tee "$out/x2_single.log"
  par "${common[@]}" --tp 2 --compare-logits "$out/single_logits.pt" --out "$out/x2_tp2.json" 2>&1 | tee "$out/x2_tp2.log"
  par "${common[@]}" --ep 2 --compare-logits "$out/single_logits.pt" --out "$out/x2_ep2.json" 2>&1 | tee "$out/x2_ep2.log"
  par "${common[@]}" --ep 2 --moe-comm all_reduce --compare-logits "$out/single_logits.pt" \
    --out "$out/x2_ep2_allreduce.json" 2>&1 | tee "$out/x2_ep2_allreduce.log"
  par "${common[@]}" --skip check decode e2e --out "$out/x2_dp2.json" 2>&1 | tee "$out/x2_dp2.log"
elif [ "$what" = fused ]; then  # one GPU at prompts 256 and 4K with a kernel profile at B=1, then TP2
  CUDA_VISIBLE_DEVICES=0 timeout 240 python3 bench/engine_w3.py --no-hf --prefill-len 0 --prompts 256 4096 \
    --skip e2e --profile-batch 1 --save-logits "$out/single_logits.pt" "${extra[@]}" \
    --out "$out/engine_w3_shared_fused.json" 2>&1 | tee "$out/engine_w3_shared_fused.log"
  par --batches 1 32 --prompts 256 --skip e2e --tp 2 --compare-logits "$out/single_logits.pt" \
    --out "$out/x2_tp2_shared_fused.json" 2>&1 | tee "$out/x2_tp2_shared_fused.log"
elif [ "$what" = dp ]; then  # eval throughput alone: one GPU, then two replicas
  common=(--batches 32 --prompts 256 --skip check decode e2e --eval-requests 1024)
  CUDA_VISIBLE_DEVICES=0 timeout 240 python3 bench/engine_w3.py --no-hf --prefill-len 0 "${common[@]}" "${extra[@]}" \
    --out "$out/x2_dp1_eval.json" 2>&1 | tee "$out/x2_dp1_eval.log"
  par "${common[@]}" --out "$out/x2_dp2_eval.json" 2>&1 | tee "$out/x2_dp2_eval.log"
elif [ "$what" = tpep ]; then
  common=(--batches 1 32 --prompts 256 --skip e2e --eval-requests 512)
  CUDA_VISIBLE_DEVICES=0 timeout 240 python3 bench/engine_w3.py --no-hf --prefill-len 0 "${common[@]}" "${extra[@]}" \
    --save-logits "$out/single_logits.pt" --out "$out/x2_single_tpep.json" 2>&1 | tee "$out/x2_single_tpep.log"
  par "${common[@]}" --tp 2 --ep 2 --compare-logits "$out/single_logits.pt" --out "$out/x2_tp2ep2.json" 2>&1 \
    | tee "$out/x2_tp2ep2.log"
  par "${common[@]}" --tp 2 --ep 2 --moe-comm all_reduce --compare-logits "$out/single_logits.pt" \
    --out "$out/x2_tp2ep2_allreduce.json" 2>&1 | tee "$out/x2_tp2ep2_allreduce.log"
  par "${common[@]}" --tp 2 --skip check e2e --out "$out/x2_tp2_tpep.json" 2>&1 | tee "$out/x2_tp2_tpep.log"
elif [ "$what" = fp8 ]; then
  CUDA_VISIBLE_DEVICES=0 timeout 200 python3 bench/kernel_bench.py --only prefill_attn \
    --out "$out/kernel_bench_prefill_attn.json" 2>&1 | tee "$out/kernel_bench_prefill_attn.log"
  CUDA_VISIBLE_DEVICES=0 timeout 100 python3 bench/kernel_sweep.py --only prefill_attn \
    --out "$out/kernel_sweep_prefill_attn.json" 2>&1 | tee "$out/kernel_sweep_prefill_attn.log"
  CUDA_VISIBLE_DEVICES=0 timeout 280 python3 bench/engine_w3.py --no-hf --batches 1 --prompts 256 \
    --skip check decode e2e "${extra[@]}" --out "$out/engine_w3_prefill_fp8.json" 2>&1 | tee "$out/engine_w3_prefill_fp8.log"
elif [ "$what" = prefill ]; then
  CUDA_VISIBLE_DEVICES=0 timeout 100 python3 bench/kernel_checks.py --out "$out/kernel_checks.json" 2>&1 \
    | tee "$out/kernel_checks.log"
  CUDA_VISIBLE_DEVICES=0 timeout 150 python3 bench/kernel_bench.py --only moe gemm_prefill \
    --out "$out/kernel_bench_prefill.json" 2>&1 | tee "$out/kernel_bench_prefill.log"
  CUDA_VISIBLE_DEVICES=0 timeout 150 python3 bench/kernel_sweep.py --only moe_prefill \
    --out "$out/kernel_sweep_moe_prefill.json" 2>&1 | tee "$out/kernel_sweep_moe_prefill.log"
  CUDA_VISIBLE_DEVICES=0 timeout 250 python3 bench/engine_w3.py --no-hf --batches 1 --prompts 256 \
    --skip decode e2e --profile-prefill fp8 "${extra[@]}" --out "$out/engine_w3_prefill.json" 2>&1 \
    | tee "$out/engine_w3_prefill.log"
elif [ "$what" = chunks ]; then
  CUDA_VISIBLE_DEVICES=0 timeout 150 python3 bench/kernel_checks.py \
    --out "$out/kernel_checks.json" > "$out/chunks.log" 2>&1
  for c in 16384 32768 65536; do
    prof=(); [ "$c" = 16384 ] && prof=(--profile-prefill fp8)
    CUDA_VISIBLE_DEVICES=0 timeout 150 python3 bench/engine_w3.py --no-hf --batches 1 --prompts 256 \
      --skip check decode e2e --chunk "$c" --prefill-backends fp8 best "${prof[@]}" "${extra[@]}" \
      --out "$out/engine_w3_prefill_chunk$c.json" >> "$out/chunks.log" 2>&1
  done
elif [ "$what" = shapes ]; then
  CUDA_VISIBLE_DEVICES=0 timeout 300 python3 bench/prefill_shapes.py --out "$out/prefill_shapes.json" 2>&1 \
    | tee "$out/prefill_shapes.log"
elif [ "$what" = profile ]; then
  common=(--batches 1 32 --prompts 256 --skip check e2e)
  par "${common[@]}" --tp 2 --profile-batch 1 --out "$out/x2_tp2_profile.json" 2>&1 | tee "$out/x2_tp2_profile.log"
  NCCL_PROTO=LL par "${common[@]}" --tp 2 --out "$out/x2_tp2_nccl_ll.json" 2>&1 | tee "$out/x2_tp2_nccl_ll.log"
  par "${common[@]}" --ep 2 --profile-batch 32 --out "$out/x2_ep2_profile.json" 2>&1 | tee "$out/x2_ep2_profile.log"
elif [ "$what" = oneshot ]; then  # small all-reduces: one-shot symmetric memory against NCCL, side by side
  common=(--batches 1 32 --prompts 256 --skip e2e)
  CUDA_VISIBLE_DEVICES=0 timeout 240 python3 bench/engine_w3.py --no-hf --prefill-len 0 "${common[@]}" "${extra[@]}" \
    --save-logits "$out/single_logits.pt" --out "$out/x2_single_oneshot.json" >> "$out/oneshot.log" 2>&1
  for layout in "--tp 2" "--ep 2"; do
    name=$(echo "$layout" | tr -d ' -')
    par "${common[@]}" $layout --compare-logits "$out/single_logits.pt" --out "$out/x2_${name}_oneshot.json" \
      >> "$out/oneshot.log" 2>&1
    par "${common[@]}" $layout --nccl-all-reduce --skip check --out "$out/x2_${name}_nccl.json" >> "$out/oneshot.log" 2>&1
  done
  rm -f "$out/single_logits.pt"
elif [ "$what" = x4 ]; then  # on 4 GPUs (kind nvidia-h200-x4): one GPU, TP4 (one-shot and NCCL), EP4, DP4 eval
  common=(--batches 1 32 --prompts 256 --skip e2e)
  CUDA_VISIBLE_DEVICES=0 timeout 240 python3 bench/engine_w3.py --no-hf --prefill-len 0 "${common[@]}" "${extra[@]}" \
    --eval-requests 512 --save-logits "$out/single_logits.pt" --out "$out/x4_single.json" >> "$out/x4.log" 2>&1
  export NPROC=4
  par "${common[@]}" --tp 4 --compare-logits "$out/single_logits.pt" --out "$out/x4_tp4.json" >> "$out/x4.log" 2>&1
  par "${common[@]}" --tp 4 --nccl-all-reduce --skip check --out "$out/x4_tp4_nccl.json" >> "$out/x4.log" 2>&1
  par "${common[@]}" --ep 4 --compare-logits "$out/single_logits.pt" --out "$out/x4_ep4.json" >> "$out/x4.log" 2>&1
  par --batches 32 --prompts 256 --skip check decode e2e --eval-requests 512 --out "$out/x4_dp4.json" \
    >> "$out/x4.log" 2>&1
  rm -f "$out/single_logits.pt"
elif [ "$what" = layers ]; then
  for n in 4 12 20; do
    par --layers "$n" --tp 2 --ep 2 --batches 1 8 32 128 --prompts 256 --skip e2e \
      --out "$out/x2_tp2ep2_layers$n.json" 2>&1 | tee "$out/x2_tp2ep2_layers$n.log"
  done
  timeout 180 torchrun --nproc-per-node 2 bench/expert_parallel.py --tokens 1,32,256,4096 2>&1 \
    | tee "$out/x2_expert_parallel.log"
fi
