"""Streamed reading and validation of HF-layout DeepSeek checkpoints.

Layout: ``config.json``, ``model.safetensors.index.json`` (``weight_map``: tensor -> shard) and
the shards, or a single ``model.safetensors``. Tensors are read one at a time through
``safetensors.safe_open`` (memory-mapped), so the checkpoint is never materialized in host memory.
Official FP8 releases (DeepSeek-V3 §3.3.2) store linear weights as e4m3 with a float32
``<name>_scale_inv`` per 128x128 block.

:func:`validate_checkpoint` checks names, shapes and dtypes from the shard headers alone before
any data is read, and every failure names the tensor and the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .config import CheckpointError, ConfigError, ModelConfig
from .fp8_blocks import FP8_DTYPE, dequantize_blockwise, scale_shape

__all__ = [
    "SCALE_SUFFIX",
    "CheckpointError",
    "CheckpointReader",
    "ConfigError",
    "ExpectedTensor",
    "TensorInfo",
    "expected_tensors",
    "validate_checkpoint",
]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
SCALE_SUFFIX = "_scale_inv"

_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class TensorInfo:
    """Header facts of one stored tensor."""

    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype | str  # a str when safetensors reports a dtype torch lacks


@dataclass(frozen=True)
class ExpectedTensor:
    """What the model needs under one name. ``linear``: may be FP8 with a block-scale partner."""

    name: str
    shape: tuple[int, ...]
    linear: bool = False
    optional: bool = False


class CheckpointReader:
    """Index + shard headers of a checkpoint directory; tensors are fetched on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: checkpoint directory not found")
        self.config: ModelConfig = ModelConfig.from_json_file(self.path / "config.json")
        self.weight_map = self._read_weight_map()
        self.infos: dict[str, TensorInfo] = self._read_headers()
        self._handles: dict[Path, Any] = {}
        #: Bytes and tensor names actually read so far: sharded loading is checked against these.
        self.bytes_read = 0
        self.names_read: set[str] = set()

    # ---- index and headers ------------------------------------------------------------------
    def _read_weight_map(self) -> dict[str, Path]:
        index = self.path / INDEX_NAME
        if index.exists():
            try:
                raw = json.loads(index.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{index}: not valid JSON: {e}") from None
            wm = raw.get("weight_map") if isinstance(raw, dict) else None
            if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
                raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard file names")
            out: dict[str, Path] = {}
            for name, shard in wm.items():
                f = self.path / shard
                if not f.is_file():
                    raise CheckpointError(f"{index}: tensor '{name}' maps to shard '{shard}', which does not exist")
                out[name] = f
            return out
        single = self.path / SINGLE_NAME
        if not single.is_file():
            raise CheckpointError(f"{self.path}: neither {INDEX_NAME} nor {SINGLE_NAME} found")
        return {name: single for name in self._shard_names(single)}

    @staticmethod
    def _open(file: Path) -> Any:
        try:
            return safe_open(str(file), framework="pt", device="cpu")
        except (SafetensorError, OSError) as e:  # corrupt/truncated header, unreadable file
            raise CheckpointError(f"{file}: unreadable safetensors shard (truncated or corrupt?): {e}") from None

    def _shard_names(self, file: Path) -> list[str]:
        return list(self._open(file).keys())

    def _read_headers(self) -> dict[str, TensorInfo]:
        infos: dict[str, TensorInfo] = {}
        index = self.path / INDEX_NAME
        for file in sorted(set(self.weight_map.values())):
            f = self._open(file)
            for name in f.keys():  # noqa: SIM118 - safe_open is not iterable
                mapped = self.weight_map.get(name)
                if mapped is None:
                    raise CheckpointError(f"{file}: tensor '{name}' is stored in this shard but missing from {index}")
                if mapped != file:
                    continue  # a stale duplicate; the index decides
                sl = f.get_slice(name)
                dt = sl.get_dtype()
                infos[name] = TensorInfo(name, file, tuple(sl.get_shape()), _ST_DTYPES.get(dt, dt))
        for name, file in self.weight_map.items():
            if name not in infos:
                raise CheckpointError(
                    f"{index}: tensor '{name}' is listed for shard {file.name} but that shard lacks it")
        return infos

    # ---- data ---------------------------------------------------------------------------------
    def _handle(self, name: str) -> tuple[TensorInfo, Any]:
        info = self.infos.get(name)
        if info is None:
            raise CheckpointError(f"{self.path}: tensor '{name}' is not in the checkpoint")
        handle = self._handles.get(info.file)
        if handle is None:
            handle = self._handles[info.file] = self._open(info.file)
        return info, handle

    def _count(self, name: str, t: torch.Tensor) -> torch.Tensor:
        self.bytes_read += t.numel() * t.element_size()
        self.names_read.add(name)
        return t

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (only it) from its shard."""
        info, handle = self._handle(name)
        try:
            return self._count(name, handle.get_tensor(name))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"{info.file}: cannot read tensor '{name}' (truncated shard?): {e}") from None

    def get_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """Rows/columns ``start:stop`` of ``dim`` of one tensor; only those bytes are read
        (tensor-parallel ranks load their part of a weight this way)."""
        info, handle = self._handle(name)
        if not 0 <= dim < len(info.shape) or not 0 <= start <= stop <= info.shape[dim]:
            raise CheckpointError(f"{info.file}: slice {start}:{stop} of dim {dim} is outside tensor '{name}' "
                                  f"of shape {list(info.shape)}")
        index = tuple([slice(None)] * dim + [slice(start, stop)])
        try:
            return self._count(name, handle.get_slice(name)[index].contiguous())  # column slices come back strided
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"{info.file}: cannot read tensor '{name}' (truncated shard?): {e}") from None

    def get_dense(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """Read a weight as ``dtype``, dequantizing FP8 blocks with its ``_scale_inv`` partner."""
        t = self.get(name)
        if t.dtype == FP8_DTYPE:
            block = self.config.quantization.weight_block_size if self.config.quantization else (128, 128)
            return dequantize_blockwise(t, self.get(name + SCALE_SUFFIX), block, dtype)
        return t.to(dtype)

    def names_by_file(self) -> Iterator[tuple[Path, list[str]]]:
        """Tensor names grouped by shard, so a streaming loader touches each shard once."""
        groups: dict[Path, list[str]] = {}
        for name, info in self.infos.items():
            groups.setdefault(info.file, []).append(name)
        yield from sorted(groups.items())

    def close(self) -> None:
        self._handles.clear()


def expected_tensors(model: torch.nn.Module) -> dict[str, ExpectedTensor]:
    """Every tensor the model needs, by checkpoint name (works on a meta-device model)."""
    from .linear import (
        Linear,  # local: keeps this module importable without the model stack
    )

    out: dict[str, ExpectedTensor] = {}
    linear_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, Linear)}
    for name, p in model.named_parameters():
        out[name] = ExpectedTensor(name, tuple(p.shape), linear=name in linear_weights)
    cfg = getattr(model, "config", None)
    if cfg is not None and cfg.tie_word_embeddings and "lm_head.weight" in out:
        shape = out["lm_head.weight"].shape
        out["lm_head.weight"] = ExpectedTensor("lm_head.weight", shape, linear=True, optional=True)
    return out


_CONFIG_HINT = "; config.json contradicts the weights (check hidden_size, head dims, ranks, vocab_size, expert sizes)"


def validate_checkpoint(reader: CheckpointReader, expected: dict[str, ExpectedTensor]) -> None:
    """Check names, shapes and dtypes against what the model needs, from headers only."""
    cfg = reader.config
    index = reader.path / INDEX_NAME
    where = index if index.exists() else reader.path / SINGLE_NAME
    for name, exp in expected.items():
        if name not in reader.infos and not exp.optional:
            raise CheckpointError(f"{where}: required tensor '{name}' is missing (shape {list(exp.shape)} expected; "
                                  f"or config.json describes another architecture)")
    for name, info in reader.infos.items():
        if name.endswith(SCALE_SUFFIX):
            base = name[: -len(SCALE_SUFFIX)]
            if base not in expected or not expected[base].linear:
                raise CheckpointError(f"{info.file}: unexpected tensor '{name}' (no FP8 linear weight '{base}')")
            continue
        exp = expected.get(name)
        if exp is None:
            raise CheckpointError(f"{info.file}: unexpected tensor '{name}' (not part of this architecture"
                                  f"{_CONFIG_HINT})")
        if info.shape != exp.shape:
            raise CheckpointError(f"{info.file}: tensor '{name}' has shape {list(info.shape)}, expected "
                                  f"{list(exp.shape)}{_CONFIG_HINT}")
        if info.dtype == FP8_DTYPE:
            if not exp.linear:
                raise CheckpointError(
                    f"{info.file}: tensor '{name}' is float8_e4m3fn but only linear weights may be FP8")
            if cfg.quantization is None:
                raise CheckpointError(
                    f"{info.file}: tensor '{name}' is FP8 but config.json has no fp8 quantization_config")
            scale = reader.infos.get(name + SCALE_SUFFIX)
            if scale is None:
                raise CheckpointError(f"{info.file}: FP8 tensor '{name}' has no '{name}{SCALE_SUFFIX}' block scales")
            want = scale_shape((exp.shape[0], exp.shape[1]), cfg.quantization.weight_block_size)
            if scale.shape != want:
                raise CheckpointError(f"{scale.file}: tensor '{scale.name}' has shape {list(scale.shape)}, expected "
                                      f"{list(want)} for weight_block_size {list(cfg.quantization.weight_block_size)}")
            if scale.dtype != torch.float32:
                raise CheckpointError(f"{scale.file}: tensor '{scale.name}' has dtype {scale.dtype}, expected float32")
        elif info.dtype not in _FLOAT_DTYPES:
            raise CheckpointError(f"{info.file}: tensor '{name}' has dtype {info.dtype}, expected one of "
                                  f"bfloat16/float16/float32" + (" or float8_e4m3fn" if exp.linear else ""))
        elif name + SCALE_SUFFIX in reader.infos:
            raise CheckpointError(f"{info.file}: tensor '{name}' has block scales but is {info.dtype}, not FP8")
