"""What a model needs of a checkpoint, checked against the shard headers before any data is read.

:func:`validate_checkpoint` compares names, shapes and dtypes (FP8 weights with their block
scales) with :func:`expected_tensors` of a meta-device model, so a checkpoint that does not fit
the architecture in its ``config.json`` fails with the tensor and file named, not as a shape
error halfway through loading.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dseval.engine.errors import CheckpointError
from dseval.engine.loading.checkpoint import INDEX_NAME, SCALE_SUFFIX, SINGLE_NAME, CheckpointReader
from dseval.engine.model.fp8_blocks import FP8_DTYPE, scale_shape
from dseval.engine.model.linear import Linear

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class ExpectedTensor:
    """What the model needs under one name. ``linear``: may be FP8 with a block-scale partner."""

    name: str
    shape: tuple[int, ...]
    linear: bool = False
    optional: bool = False


def expected_tensors(model: torch.nn.Module) -> dict[str, ExpectedTensor]:
    """Every tensor the model needs, by checkpoint name (works on a meta-device model)."""
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
