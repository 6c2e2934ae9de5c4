"""The engine's runtime knobs, validated once, with errors that name the field.

The model's architecture is not here: it comes with the checkpoint (:class:`ModelConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dseval.engine.errors import ConfigError
from dseval.engine.parallel.collectives import min_over_ranks
from dseval.engine.parallel.context import ParallelContext
from dseval.kernels.mla_prefill import PREFILL_BACKENDS

#: Prefill tokens per step on GPUs: larger chunks re-expand the cached context fewer times
#: (bench/README.md, "128K prefill") but need more activation memory.
GPU_PREFILL_TOKENS = 16384
#: On CPUs a small chunk keeps a step's activations small.
CPU_PREFILL_TOKENS = 2048


def default_device() -> torch.device:
    """The first GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_prefill_tokens(device: torch.device) -> int:
    """The token budget per step when ``max_num_batched_tokens`` is unset."""
    return GPU_PREFILL_TOKENS if device.type == "cuda" else CPU_PREFILL_TOKENS


#: Most sequences in flight when unset: vLLM's default, enough to keep a GPU's decode busy.
GPU_MAX_NUM_SEQS = 256
#: On CPUs many sequences only make each step longer.
CPU_MAX_NUM_SEQS = 64
#: KV-cache tokens set aside per sequence when choosing ``max_num_seqs`` from the cache.
TOKENS_PER_SEQ = 2048


def auto_max_num_seqs(device: torch.device, kv_tokens: int) -> int:
    """Sequences in flight for a GPU cache of ``kv_tokens``: as many as hold ``TOKENS_PER_SEQ``
    tokens each (longer ones preempt the newest), at most ``GPU_MAX_NUM_SEQS``; on CPUs
    ``CPU_MAX_NUM_SEQS``, whatever the cache."""
    if device.type != "cuda":
        return CPU_MAX_NUM_SEQS
    return max(1, min(GPU_MAX_NUM_SEQS, kv_tokens // TOKENS_PER_SEQ))


def auto_num_blocks(ec: EngineConfig, bytes_per_block: int, max_model_len: int, device: torch.device,
                    parallel: ParallelContext) -> int:
    """KV-cache blocks when ``num_kv_blocks`` is unset: ``kv_cache_memory_fraction`` of the GPU
    memory free once the weights are in (``cpu_kv_cache_gib`` on CPUs), never more than every
    slot of every sequence at full context needs."""
    ceiling = (ec.max_num_seqs or GPU_MAX_NUM_SEQS) * -(-(max_model_len + 2) // ec.block_size)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # TP/EP ranks must schedule identically (every step is a collective): agree on the least free memory
        budget = min_over_ranks(int(free * ec.kv_cache_memory_fraction), parallel)
    else:
        budget = int(ec.cpu_kv_cache_gib * 2**30)
    return max(1, min(ceiling, budget // bytes_per_block))


def parse_speculative(spec: str | None) -> str | None:
    """Validate the ``speculative`` field; only ``mtp`` exists."""
    if spec in (None, "", "none"):
        return None
    if spec != "mtp":
        raise ConfigError(f"option 'speculative' must be 'mtp' or unset, got {spec!r}")
    return spec


@dataclass(frozen=True)
class EngineConfig:
    """Runtime knobs; model architecture lives in the model's own config."""

    block_size: int = 16
    #: KV-cache blocks; None sizes the cache from free device memory (GPU) or ``cpu_kv_cache_gib``.
    num_kv_blocks: int | None = None
    kv_cache_memory_fraction: float = 0.85
    cpu_kv_cache_gib: float = 0.25
    #: Most sequences in flight; None chooses from the KV cache (:func:`auto_max_num_seqs`), as
    #: vLLM's ``max_num_seqs`` bounds a batch that its KV budget then shapes.
    max_num_seqs: int | None = None
    #: Token budget of one step, i.e. the chunk of chunked prefill (vLLM's
    #: ``--max-num-batched-tokens``); None: :func:`default_prefill_tokens` of the device.
    max_num_batched_tokens: int | None = None
    chunked_prefill: bool = True
    enable_prefix_cache: bool = True
    #: ``"mtp"`` for speculative decoding with the model's MTP module, else None.
    speculative: str | None = None
    #: Context limit; None uses the model's ``max_position_embeddings``.
    max_model_len: int | None = None
    #: Replay plain decode steps from CUDA graphs (CUDA devices only; ignored elsewhere).
    cuda_graphs: bool = True
    #: Batch buckets decode steps are padded to for graph replay (None: the runner's default).
    graph_batch_sizes: tuple[int, ...] | None = None
    #: Stack routed experts once for ``dseval.kernels.fused_moe`` (bf16 compute only: the
    #: kernel's contract); off keeps the per-expert reference loop.
    fused_moe: bool = True
    #: CUDA prefill attention (``dseval.kernels.mla_prefill.PREFILL_BACKENDS``); ``auto`` is
    #: resolved once when the engine starts (cuDNN where it runs, else FlashAttention-2).
    prefill_attention: str = "auto"
    #: Overlap scheduling: plan and launch decode step N+1 (fed step N's tokens on the device)
    #: before the host reads step N's tokens, so the GPU does not idle while the host
    #: schedules and postprocesses. Same outputs either way; off only for comparisons.
    overlap_schedule: bool = True

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ConfigError(f"engine field 'block_size' must be >= 1, got {self.block_size}")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise ConfigError(f"engine field 'max_num_seqs' must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise ConfigError(f"engine field 'max_num_batched_tokens' must be >= 1, got {self.max_num_batched_tokens}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ConfigError(f"engine field 'num_kv_blocks' must be >= 1, got {self.num_kv_blocks}")
        if not 0 < self.kv_cache_memory_fraction <= 1:
            raise ConfigError(f"engine field 'kv_cache_memory_fraction' must be in (0, 1], got {self.kv_cache_memory_fraction}")
        parse_speculative(self.speculative)
        if self.prefill_attention not in PREFILL_BACKENDS:
            raise ConfigError(f"engine field 'prefill_attention' must be one of {', '.join(PREFILL_BACKENDS)}, "
                              f"got {self.prefill_attention!r}")
