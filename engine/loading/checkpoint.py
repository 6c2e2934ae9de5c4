"""Streamed reading and validation of HF-layout DeepSeek checkpoints.

Layout: ``config.json``, ``model.safetensors.index.json`` (``weight_map``: tensor -> shard) and
the shards, or a single ``model.safetensors``. Tensors are read one at a time through
``safetensors.safe_open`` (memory-mapped), so the checkpoint is never materialized in host memory.
Official FP8 releases (DeepSeek-V3 §3.3.2) store linear weights as e4m3 with a float32
``<name>_scale_inv`` per 128x128 block.

Every failure names the tensor and the file. What the model expects of the checkpoint is checked
in :mod:`dseval.engine.loading.validation`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from dseval.engine.errors import CheckpointError, ConfigError
from dseval.engine.model.config import ModelConfig
from dseval.engine.model.fp8_blocks import FP8_DTYPE, dequantize_blockwise

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
SCALE_SUFFIX = "_scale_inv"

_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    """Header facts of one stored tensor."""

    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype | str  # a str when safetensors reports a dtype torch lacks


class CheckpointReader:
    """Index + shard headers of a checkpoint directory; tensors are fetched on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: checkpoint directory not found")
        self.config: ModelConfig = ModelConfig.from_json_file(self.path / "config.json")
        self.weight_map = self._read_weight_map()
        check_counts(self.config, self.weight_map, self.path / (INDEX_NAME if (self.path / INDEX_NAME).exists() else SINGLE_NAME))
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


_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_EXPERT = re.compile(r"\.mlp\.experts\.(\d+)\.")


def check_counts(config: ModelConfig, names: Iterable[str], where: Path) -> None:
    """Layer and routed-expert counts of config.json against the weight map, before any model
    is built: a config claiming 100K layers would otherwise allocate them first."""
    layers: set[int] = set()
    experts: set[int] = set()
    for name in names:
        if m := _LAYER.match(name):
            layers.add(int(m.group(1)))
        if m := _EXPERT.search(name):
            experts.add(int(m.group(1)))
    stored = max(layers) + 1 if layers else 0
    if stored != config.num_attention_layers:
        raise ConfigError(f"{where}: the weights hold {stored} decoder layers, config.json field 'num_hidden_layers' + "
                          f"'num_nextn_predict_layers' = {config.num_attention_layers}; fix config.json")
    routed = max(experts) + 1 if experts else None
    if routed is not None and routed != config.n_routed_experts:
        raise ConfigError(f"{where}: the weights hold {routed} routed experts, config.json field 'n_routed_experts' = "
                          f"{config.n_routed_experts}; fix config.json")
