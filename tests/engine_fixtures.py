"""Shared helpers for engine tests: small random configs/checkpoints and "whole prompt, no paging
tricks" attention metadata so the model runs standalone (each sequence owns consecutive blocks)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from dseval.engine.model.attention_metadata import AttentionMetadata
from dseval.engine.loading.checkpoint_writer import write_checkpoint
from dseval.engine.model.config import ModelConfig
from dseval.engine.model.yarn import RopeScaling
from dseval.engine.model.model import DeepseekV3ForCausalLM
from dseval.engine.loading.random_init import random_state_dict

SMALL_VOCAB = 1024


def v3_style_config(vocab_size: int = SMALL_VOCAB) -> ModelConfig:
    """V3: sigmoid + noaux_tc with n_group>1/topk_group, q LoRA, YaRN (mscale != mscale_all_dim), MTP."""
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=3, num_nextn_predict_layers=1, num_attention_heads=4,
        q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2,
        topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5,
        first_k_dense_replace=1, rope_theta=10000.0, rope_interleave=True,
        rope_scaling=RopeScaling(factor=40.0, original_max_position_embeddings=32, beta_fast=32, beta_slow=1,
                                 mscale=0.9, mscale_all_dim=0.8),
        max_position_embeddings=1280, model_type="deepseek_v3",
    )


def v2_lite_style_config(vocab_size: int = SMALL_VOCAB) -> ModelConfig:
    """V2-Lite: softmax scoring, plain q projection, one group, no top-k normalization, no MTP."""
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=3, num_nextn_predict_layers=0, num_attention_heads=4,
        q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        n_routed_experts=16, n_shared_experts=2, num_experts_per_tok=4, n_group=1, topk_group=1,
        topk_method="greedy", scoring_func="softmax", norm_topk_prob=False, routed_scaling_factor=1.0,
        first_k_dense_replace=1, rope_theta=10000.0,
        rope_scaling=RopeScaling(factor=4.0, original_max_position_embeddings=64, beta_fast=32, beta_slow=1,
                                 mscale=0.707, mscale_all_dim=0.707),
        max_position_embeddings=256, model_type="deepseek_v2",
    )


def dense_heavy_config(vocab_size: int = SMALL_VOCAB) -> ModelConfig:
    """first_k_dense_replace > 1 and n_shared_experts > 1, plain RoPE on half-split (not interleaved) pairs."""
    return replace(v3_style_config(vocab_size), num_hidden_layers=4, first_k_dense_replace=2, n_shared_experts=2,
                   num_nextn_predict_layers=0, rope_scaling=None, rope_interleave=False, n_group=2, topk_group=1,
                   num_experts_per_tok=3)


def write_random_checkpoint(directory: str | Path, config: ModelConfig, seed: int = 0, *, fp8: bool = False,
                            dtype: torch.dtype = torch.float32, num_shards: int = 3) -> Path:
    return write_checkpoint(directory, config, random_state_dict(config, seed), fp8=fp8, dtype=dtype,
                            num_shards=num_shards)


def new_kv_caches(config: ModelConfig, num_blocks: int, block_size: int = 16, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> list[torch.Tensor]:
    width = DeepseekV3ForCausalLM.kv_cache_row_width(config)
    return [torch.zeros(num_blocks, block_size, width, dtype=dtype, device=device)
            for _ in range(config.num_attention_layers)]


def contiguous_metadata(
    model_or_config: DeepseekV3ForCausalLM | ModelConfig | None,
    seq_lens: list[int],
    block_size: int = 16,
    *,
    cached_lens: list[int] | None = None,
    max_len: int = 256,
    kv_caches: list[torch.Tensor] | None = None,
    absorbed: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[AttentionMetadata, torch.Tensor]:
    """Metadata (and positions [T]) for ``seq_lens[b]`` new tokens of sequence b after
    ``cached_lens[b]`` cached ones; sequence b owns blocks [b·n, (b+1)·n), n = ceil(max_len/bs).
    Pass the previous step's ``kv_caches`` to continue (decode steps); the model/config is only
    needed to allocate fresh caches."""
    config = model_or_config.config if isinstance(model_or_config, DeepseekV3ForCausalLM) else model_or_config
    B = len(seq_lens)
    cached = cached_lens or [0] * B
    n = -(-max_len // block_size)
    if kv_caches is None:
        assert config is not None, "pass a model or config to allocate caches"
        kv_caches = new_kv_caches(config, B * n, block_size, dtype, device)
    positions, slots = [], []
    for b in range(B):
        pos = list(range(cached[b], cached[b] + seq_lens[b]))
        assert not pos or pos[-1] < max_len, "sequence longer than max_len"
        positions += pos
        slots += [b * n * block_size + p for p in pos]  # consecutive blocks: slot = first slot + position
    cu = torch.tensor([0] + list(torch.tensor(seq_lens).cumsum(0).tolist()), dtype=torch.int64, device=device)
    meta = AttentionMetadata(
        cu_seqlens_q=cu,
        context_lens=torch.tensor([c + s for c, s in zip(cached, seq_lens)], dtype=torch.int64, device=device),
        block_tables=torch.arange(B * n, dtype=torch.int64, device=device).view(B, n),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        kv_caches=kv_caches,
        absorbed=absorbed,
    )
    return meta, torch.tensor(positions, dtype=torch.int64, device=device)


def decode_metadata(prev: AttentionMetadata, absorbed: bool = True, block_size: int | None = None,
                    max_len: int = 256) -> tuple[AttentionMetadata, torch.Tensor]:
    """One decode step (one new token per sequence) after ``prev``, reusing its caches."""
    ctx = prev.context_lens.tolist()
    bs = block_size or prev.kv_caches[0].shape[1]
    return contiguous_metadata(None, [1] * len(ctx), bs, cached_lens=ctx, max_len=max_len,
                               kv_caches=prev.kv_caches, absorbed=absorbed,
                               dtype=prev.kv_caches[0].dtype, device=prev.kv_caches[0].device)


def prefill_logits(model: DeepseekV3ForCausalLM, prompts: list[list[int]], *, absorbed: bool = False,
                   max_len: int = 256) -> tuple[list[torch.Tensor], AttentionMetadata, torch.Tensor]:
    """Run all prompts in one step; per-prompt logits [len, vocab], the metadata, and the hidden."""
    emb = model.model.embed_tokens.weight  # the activation dtype, also used for the cache
    meta, pos = contiguous_metadata(model, [len(x) for x in prompts], max_len=max_len, absorbed=absorbed,
                                    dtype=emb.dtype, device=emb.device)
    ids = torch.tensor([t for x in prompts for t in x], dtype=torch.int64, device=emb.device)
    hidden = model(ids, pos, meta)
    logits = model.compute_logits(hidden)
    cu = meta.cu_seqlens_q.tolist()
    return [logits[cu[i] : cu[i + 1]] for i in range(len(prompts))], meta, hidden
