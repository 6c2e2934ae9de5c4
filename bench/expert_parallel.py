"""One DeepSeek-V3 MoE layer under expert parallelism: token dispatch (all-to-all) versus the
reference code's all-reduce scheme, same weights, same tokens.

Usage (one rank per GPU, or gloo processes on CPU):
    torchrun --nproc-per-node 8 bench/expert_parallel.py --tokens 1,64,1024,8192
    python -m torch.distributed.run --nproc-per-node 2 bench/expert_parallel.py --small

Each expert's weights come from a generator seeded by the expert's index, so every layout holds
the same model; rank 0 prints, per token count, the median ms of each scheme and the max |Δ|
between their outputs (the two must agree to rounding). Real V3 sizes (hidden 7168, 256 experts
of 2048, top-8 in 4 of 8 groups) in bf16 on GPU; ``--small`` is a toy size for CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.distributed as dist
from dseval.engine.model.config import ModelConfig
from dseval.engine.model.moe import MoE
from dseval.engine.parallel.context import ParallelContext


def v3_moe_config(small: bool) -> ModelConfig:
    cfg = ModelConfig(
        vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=2, num_nextn_predict_layers=0, num_attention_heads=128, q_lora_rank=1536,
        kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=256,
        n_shared_experts=1, num_experts_per_tok=8, n_group=8, topk_group=4, topk_method="noaux_tc",
        scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5, first_k_dense_replace=1,
        rope_theta=10000.0, max_position_embeddings=4096, model_type="deepseek_v3",
    )
    return replace(cfg, hidden_size=256, moe_intermediate_size=128, n_routed_experts=64) if small else cfg


def fill(moe: MoE, device: torch.device, dtype: torch.dtype) -> MoE:
    """Deterministic weights keyed by parameter name: identical on every rank and layout."""
    moe.to_empty(device=device)
    for name, p in moe.named_parameters():
        gen = torch.Generator().manual_seed(sum(map(ord, name)) * 7919 + len(name))
        std = 1.0 / p.shape[-1] ** 0.5
        p.data.copy_(torch.randn(p.shape, generator=gen) * std)
    moe.to(dtype)
    moe.gate.float()  # routing in float32, as the loader keeps it
    return moe


def timed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, reps: int) -> tuple[float, torch.Tensor]:
    out = fn(x)
    times = []
    for _ in range(reps):
        if x.is_cuda:
            torch.cuda.synchronize()
        dist.barrier()
        t0 = time.perf_counter()
        out = fn(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", default="1,64,1024")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda") if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = v3_moe_config(args.small)
    world = dist.get_world_size()
    layers = {}
    for comm in ("all_to_all", "all_reduce"):
        ctx = ParallelContext.from_options(1, world, comm)  # type: ignore[arg-type]
        with torch.device("meta"):
            moe = MoE(cfg, ctx)
        layers[comm] = fill(moe, device, dtype)
    for t in [int(v) for v in args.tokens.split(",")]:
        gen = torch.Generator().manual_seed(t)
        x = torch.randn(t, cfg.hidden_size, generator=gen).to(device=device, dtype=dtype)
        a2a_ms, a2a = timed(layers["all_to_all"], x, args.reps)
        ar_ms, ar = timed(layers["all_reduce"], x, args.reps)
        diff = (a2a.float() - ar.float()).abs().max().item()
        if dist.get_rank() == 0:
            print(f"EP{world} tokens={t:6d}  all_to_all {a2a_ms:8.2f} ms  all_reduce {ar_ms:8.2f} ms  max|Δ| {diff:.2e}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
