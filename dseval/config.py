"""The run configuration: one validated object built by the CLI and passed down whole."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from dseval.backends.base import BackendOptions
from dseval.errors import UserError

#: Fields that decide which samples a run computes and how; a resumed run must agree on them.
IDENTITY_FIELDS = ("model", "limit", "ids", "shots", "seed", "chat", "samples", "max_tokens", "prefill_attention", "judge")


@dataclass(frozen=True)
class RunConfig:
    tasks: tuple[str, ...]
    model: str
    out: Path
    limit: int | None = None
    ids: tuple[str, ...] | None = None
    shots: int | None = None
    batch_size: int = 32
    seed: int = 1234
    data_dir: str | None = None
    chat: bool = False
    samples: int = 1
    max_tokens: int | None = None
    device: str | None = None
    speculative: str | None = None
    dp: int = 1
    tp: int = 1
    ep: int = 1
    moe_comm: str = "all_to_all"
    #: The built-in engine's CUDA prefill attention (``dseval.kernels.mla_prefill``): "auto" is
    #: bf16; "fp8" is faster at long prompts but rounds Q, K, V to e4m3, so it is part of the
    #: run's identity (a resumed run must not mix the two).
    prefill_attention: str = "auto"
    #: The engine's prefill chunk (tokens per step). Like batch_size it is not part of the
    #: identity: it changes speed and peak memory, and results only as batch composition does
    #: (GEMM kernels chosen by row count round differently).
    max_num_batched_tokens: int | None = None
    #: Model spec of the LLM judge for judge-scored tasks (Arena-Hard, AlpacaEval). Part of the
    #: identity: a resumed run must not mix two judges' verdicts.
    judge: str | None = None

    def __post_init__(self) -> None:
        if not self.tasks:
            raise UserError("no task given; `dseval tasks` lists them")
        if self.limit is not None and self.limit <= 0:
            raise UserError(f"--limit must be a positive number of docs, got {self.limit}")
        if self.shots is not None and self.shots < 0:
            raise UserError(f"--shots must be >= 0, got {self.shots}")
        if self.batch_size <= 0:
            raise UserError(f"--batch-size must be positive, got {self.batch_size}")
        if self.samples <= 0:
            raise UserError(f"--samples must be positive, got {self.samples}")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise UserError(f"--max-tokens must be positive, got {self.max_tokens}")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens <= 0:
            raise UserError(f"--max-num-batched-tokens must be positive, got {self.max_num_batched_tokens}")
        if self.moe_comm not in ("all_to_all", "all_reduce"):
            raise UserError(f"--moe-comm must be all_to_all or all_reduce, got {self.moe_comm!r}")

    def identity(self) -> dict[str, Any]:
        values = asdict(self)
        return {name: list(values[name]) if isinstance(values[name], tuple) else values[name] for name in IDENTITY_FIELDS}

    @classmethod
    def identity_defaults(cls) -> dict[str, Any]:
        """Default of each identity field: what a run.json written before the field existed meant."""
        return {f.name: None if f.default is MISSING else f.default for f in fields(cls) if f.name in IDENTITY_FIELDS}

    def backend_options(self) -> BackendOptions:
        return BackendOptions(
            batch_size=self.batch_size, seed=self.seed, device=self.device, speculative=self.speculative, tp=self.tp, ep=self.ep,
            moe_comm=self.moe_comm, prefill_attention=self.prefill_attention,
            max_num_batched_tokens=self.max_num_batched_tokens,
        )
