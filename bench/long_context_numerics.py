"""Long-context numerics: the engine's last-position logits against a float64 reference.

A small random model in the DeepSeek-V3 layout (MLA with its decoupled rotary key, YaRN as
DeepSeek-V3 configures it: factor 40, beta_fast 32, beta_slow 1, mscale = mscale_all_dim = 1,
over ``original_max_position_embeddings`` = 4096, so YaRN's interpolated frequencies matter
beyond 4K) is run through the engine in chunked prefill (its paged latent cache, the chunks a
long prompt takes in `dseval`) and through :func:`reference_last_logits`, a straightforward
float64 re-implementation of the forward written from the papers (DeepSeek-V2 §2.1 MLA, YaRN
§3.2-§3.4), which attends chunk by chunk so its memory stays bounded at 128K tokens.

Every layer is dense: expert routing is a discrete top-k whose ties flip between float32 and
float64 and would swamp the attention error this measures. As a control the reference is also
run with YaRN replaced by plain RoPE: the engine must sit far closer to the YaRN reference than
that does, or the comparison could not tell the two apart.

    python3 bench/long_context_numerics.py --device cuda --lengths 32768,65536,131072 \\
        --out results/bench/long_context_numerics.json

prints one row per length and writes the rows as JSON. tests/test_long_context_numerics.py
runs the same functions on the CPU at 8K.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a checkout runs without an install (the device machine has none)
from dseval.engine.loading.checkpoint_writer import write_checkpoint  # noqa: E402
from dseval.engine.loading.loader import load_model  # noqa: E402
from dseval.engine.loading.random_init import random_state_dict  # noqa: E402
from dseval.engine.model.attention_metadata import AttentionMetadata  # noqa: E402
from dseval.engine.model.config import ModelConfig  # noqa: E402
from dseval.engine.model.model import DeepseekV3ForCausalLM  # noqa: E402
from dseval.engine.model.yarn import V3_YARN  # noqa: E402
from dseval.kernels.mla_prefill import PREFILL_BACKENDS, resolve_prefill_attention  # noqa: E402

ORIGINAL_POSITIONS = V3_YARN.original_max_position_embeddings


def numerics_config(max_positions: int, vocab_size: int = 512) -> ModelConfig:
    """Two dense layers of MLA with q LoRA and interleaved rotary pairs, V3's YaRN."""
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16,
        rope_theta=10000.0, rope_interleave=True, rope_scaling=V3_YARN, max_position_embeddings=max_positions,
        model_type="deepseek_v3", torch_dtype="float32",
    )


# ---------------------------------------------------------------------------------- reference
def yarn_tables(config: ModelConfig, positions: torch.Tensor, yarn: bool) -> tuple[torch.Tensor, torch.Tensor, float]:
    """cos, sin [T, rope/2] and the softmax scale in float64; plain RoPE when not ``yarn``.

    YaRN (its §3.2 "NTK-by-parts"): rotary pair i keeps its frequency when it turns more than
    beta_fast times over the original window, is divided by ``factor`` when it turns fewer than
    beta_slow times, and is blended linearly between; cos/sin carry mscale(mscale)/mscale(all_dim)
    and the softmax scale mscale(mscale_all_dim)^2 (DeepSeek-V2's attention-entropy fix).
    """
    dim, base = config.qk_rope_head_dim, config.rope_theta
    exponents = torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim
    inv_freq = base ** -exponents
    scale, factor = config.qk_head_dim ** -0.5, 1.0
    rs = config.rope_scaling
    if yarn and rs is not None:
        def pair_turning(turns: float) -> float:  # the pair index whose wavelength fits `turns` times
            return dim * math.log(rs.original_max_position_embeddings / (turns * 2 * math.pi)) / (2 * math.log(base))

        def m(value: float) -> float:
            return 0.1 * value * math.log(rs.factor) + 1.0

        low = max(math.floor(pair_turning(rs.beta_fast)), 0)
        high = min(math.ceil(pair_turning(rs.beta_slow)), dim - 1)
        ramp = ((torch.arange(dim // 2, dtype=torch.float64, device=positions.device) - low) / max(high - low, 1e-3)).clamp(0, 1)
        inv_freq = inv_freq / rs.factor * ramp + inv_freq * (1 - ramp)
        factor = m(rs.mscale) / m(rs.mscale_all_dim)
        scale *= m(rs.mscale_all_dim) ** 2
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # [T, rope/2]
    return angles.cos() * factor, angles.sin() * factor, scale


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x0, x1), (x2, x3)... of x [T, (H,) rope] by the angles of each row."""
    pairs = x.unflatten(-1, (-1, 2))  # [..., rope/2, 2]
    if x.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    even, odd = pairs[..., 0], pairs[..., 1]
    return torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).flatten(-2)


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@torch.no_grad()
def reference_last_logits(weights: dict[str, torch.Tensor], config: ModelConfig, ids: torch.Tensor, *,
                          yarn: bool = True, chunk: int = 2048) -> torch.Tensor:
    """Last-position logits [vocab] in float64 of dense MLA layers; attention runs ``chunk``
    query rows at a time against every earlier key, and the last layer computes only the last row."""
    w = {k: v.to(ids.device, torch.float64) for k, v in weights.items()}
    eps, H, C = config.rms_norm_eps, config.num_attention_heads, config.kv_lora_rank
    nope, rope_dim, v_dim = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
    T = ids.shape[0]
    cos, sin, scale = yarn_tables(config, torch.arange(T, device=ids.device), yarn)
    x = w["model.embed_tokens.weight"][ids]  # [T, hidden]
    for layer in range(config.num_hidden_layers):
        p = f"model.layers.{layer}."
        rows = slice(T - 1, T) if layer == config.num_hidden_layers - 1 else slice(0, T)
        h = rms(x, w[p + "input_layernorm.weight"], eps)
        kv = h @ w[p + "self_attn.kv_a_proj_with_mqa.weight"].T  # [T, C + rope]
        latent = rms(kv[:, :C], w[p + "self_attn.kv_a_layernorm.weight"], eps)
        k_pe = rotate(kv[:, C:], cos, sin)  # [T, rope], one key shared by all heads
        kv_b = (latent @ w[p + "self_attn.kv_b_proj.weight"].T).view(T, H, nope + v_dim)
        k_nope, v = kv_b[..., :nope], kv_b[..., nope:]  # [T, H, nope], [T, H, v]
        q_low = rms(h[rows] @ w[p + "self_attn.q_a_proj.weight"].T, w[p + "self_attn.q_a_layernorm.weight"], eps)
        q = (q_low @ w[p + "self_attn.q_b_proj.weight"].T).view(-1, H, nope + rope_dim)  # [Tq, H, qk]
        q_nope, q_pe = q[..., :nope], rotate(q[..., nope:], cos[rows], sin[rows])
        out = torch.empty(q.shape[0], H, v_dim, dtype=torch.float64, device=ids.device)
        first = rows.start
        for start in range(0, q.shape[0], chunk):
            end = min(start + chunk, q.shape[0])
            seen = first + end  # keys 0 .. the chunk's last query position
            scores = (torch.einsum("thd,shd->hts", q_nope[start:end], k_nope[:seen])
                      + torch.einsum("thr,sr->hts", q_pe[start:end], k_pe[:seen])) * scale  # [H, t, s]
            query_pos = torch.arange(first + start, first + end, device=ids.device)
            future = torch.arange(seen, device=ids.device)[None, :] > query_pos[:, None]  # [t, s]
            scores.masked_fill_(future, float("-inf"))
            out[start:end] = torch.einsum("hts,shd->thd", scores.softmax(-1), v[:seen])
        x = x[rows] + out.reshape(-1, H * v_dim) @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"], eps)
        gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    return (rms(x[-1], w["model.norm.weight"], eps) @ w["lm_head.weight"].T)


# ---------------------------------------------------------------------------------- engine
@torch.no_grad()
def engine_last_logits(model: DeepseekV3ForCausalLM, ids: torch.Tensor, chunk: int, prefill: str = "auto",
                       block_size: int = 64) -> torch.Tensor:
    """Last-position logits [vocab] from chunked prefill through the engine's paged latent cache,
    with the prefill attention kernel ``prefill`` resolved as the engine resolves it."""
    config, device = model.config, ids.device
    dtype = model.model.embed_tokens.weight.dtype
    kernel = resolve_prefill_attention(prefill, device, dtype, config.qk_nope_head_dim, config.qk_rope_head_dim,
                                       config.v_head_dim)
    T = ids.shape[0]
    n_blocks = -(-T // block_size)
    width = DeepseekV3ForCausalLM.kv_cache_row_width(config)
    caches = [torch.zeros(n_blocks, block_size, width, dtype=dtype, device=device) for _ in range(config.num_attention_layers)]
    table = torch.arange(n_blocks, device=device)[None, :]  # [1, blocks]: slot = position
    for start in range(0, T, chunk):
        end = min(start + chunk, T)
        positions = torch.arange(start, end, device=device)
        meta = AttentionMetadata(cu_seqlens_q=torch.tensor([0, end - start], device=device),
                                 context_lens=torch.tensor([end], device=device), block_tables=table,
                                 slot_mapping=positions, kv_caches=caches, absorbed=False, prefill=kernel)
        hidden = model(ids[start:end], positions, meta)
    return model.compute_logits(hidden[-1:])[0].double()


def compare(engine: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    return {"max_abs": (engine - ref).abs().max().item(), "rel": ((engine - ref).norm() / ref.norm()).item(),
            "top1_agree": float(engine.argmax().item() == ref.argmax().item())}


def build(max_length: int, device: str, dtype: torch.dtype,
          seed: int = 0) -> tuple[DeepseekV3ForCausalLM, dict[str, torch.Tensor]]:
    """The random checkpoint, written and loaded as any checkpoint is (the engine's loader is in the path),
    and its weights for the reference."""
    config = numerics_config(max_length + 1)
    # rounded to the engine's dtype first, so both sides hold the same weights and the
    # difference is the computation's alone
    weights = {name: t.to(dtype).float() for name, t in random_state_dict(config, seed).items()}
    with tempfile.TemporaryDirectory() as folder:
        path = write_checkpoint(folder, config, weights, dtype=torch.float32, num_shards=1)
        model, _, _ = load_model(str(path), device=device, dtype=dtype)
    return model.eval(), weights


def measure(lengths: list[int], device: str, dtype: torch.dtype, chunk: int, prefill: str = "auto",
            seed: int = 0) -> list[dict[str, Any]]:
    model, weights = build(max(lengths), device, dtype, seed)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for length in lengths:
        ids = torch.randint(0, model.config.vocab_size, (length,), generator=g).to(device)
        started = time.perf_counter()
        ours = engine_last_logits(model, ids, chunk, prefill)
        engine_s = time.perf_counter() - started
        started = time.perf_counter()
        ref = reference_last_logits(weights, model.config, ids)
        reference_s = time.perf_counter() - started
        plain = reference_last_logits(weights, model.config, ids, yarn=False)
        rows.append({"length": length, "device": device, "dtype": str(dtype).removeprefix("torch."), "chunk": chunk,
                     "prefill_attention": prefill,
                     **{f"engine_{k}": v for k, v in compare(ours, ref).items()},
                     **{f"no_yarn_{k}": v for k, v in compare(plain, ref).items()},
                     "logit_scale": ref.abs().max().item(), "engine_s": round(engine_s, 3),
                     "reference_s": round(reference_s, 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="engine dtype (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--lengths", default="32768,65536,131072")
    parser.add_argument("--chunk", type=int, default=None, help="prefill chunk (default: 16384 on cuda, 2048 on cpu)")
    parser.add_argument("--prefill-attention", default="auto", choices=PREFILL_BACKENDS,
                        help="the engine's CUDA prefill attention (fp8: the e4m3 kernel)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "long_context_numerics.json")
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_gpu else "float32"))
    rows = measure([int(x) for x in args.lengths.split(",")], args.device, dtype, args.chunk or (16384 if on_gpu else 2048),
                   args.prefill_attention)
    header = (f"{'length':>7} {'dtype':>8} {'max|diff|':>10} {'rel':>9} {'top1':>4} {'no-YaRN rel':>11} {'scale':>6} "
              f"{'engine s':>8} {'ref s':>7}")
    print(header)
    for r in rows:
        print(f"{r['length']:>7} {r['dtype']:>8} {r['engine_max_abs']:>10.3e} {r['engine_rel']:>9.2e} "
              f"{r['engine_top1_agree']:>4.0f} {r['no_yarn_rel']:>11.2e} {r['logit_scale']:>6.2f} {r['engine_s']:>8.2f} "
              f"{r['reference_s']:>7.2f}")
    meta = {"config": numerics_config(max(r["length"] for r in rows) + 1).to_hf_dict(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if on_gpu else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
