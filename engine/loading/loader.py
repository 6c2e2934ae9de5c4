"""Build a :class:`DeepseekV3ForCausalLM` from a checkpoint directory or a preset name.

The model is constructed on the meta device (no memory), the checkpoint is validated from shard
headers, then tensors are streamed one by one straight into place. FP8 block-quantized linear
weights (DeepSeek-V3 §3.3.2) stay FP8 when the target is a CUDA GPU with FP8 tensor cores
(compute capability >= 8.9) and are dequantized to ``dtype`` otherwise.

Under tensor/expert parallelism the model is built for this rank's layout and every layer names
the part of each checkpoint tensor it holds (``shard``); the loader reads only those parts
(safetensors slices) and skips experts owned by other ranks without reading them. The checkpoint
is still validated against the full, unsharded model, so errors name the checkpoint's shapes.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from dseval.engine.errors import CheckpointError, ConfigError
from dseval.engine.loading.checkpoint import SCALE_SUFFIX, CheckpointReader
from dseval.engine.loading.host_to_device import HostToDevice
from dseval.engine.loading.presets import PRESETS, ensure_preset
from dseval.engine.loading.shard_reader import dequantize_shard, is_fp8, read_fp8_shard, read_shard, require_aligned
from dseval.engine.loading.tokenizer import Tokenizer
from dseval.engine.loading.validation import expected_tensors, validate_checkpoint
from dseval.engine.model.config import ModelConfig
from dseval.engine.model.linear import Linear
from dseval.engine.model.model import DeepseekV3ForCausalLM
from dseval.engine.model.moe import Router
from dseval.engine.parallel.context import ParallelContext

Fp8Mode = Literal["auto", "keep", "dequantize"]


def device_supports_fp8(device: torch.device) -> bool:
    """FP8 GEMMs need a CUDA device of compute capability 8.9 (Ada) or newer."""
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_kernel_available() -> bool:
    """Whether ``dseval.kernels.fp8_gemm`` exists (it is found, not imported: Triton stays unloaded)."""
    try:
        return importlib.util.find_spec("dseval.kernels.fp8_gemm") is not None
    except (ImportError, ValueError):
        return False


def keep_fp8_weights(mode: Fp8Mode, device: torch.device) -> bool:
    """``auto``: FP8 on an FP8-capable GPU when the GEMM kernel is installed, else dequantize
    (with a warning on such a GPU, since memory use doubles)."""
    if mode == "keep":
        return True
    if mode == "dequantize" or not device_supports_fp8(device):
        return False
    if not fp8_kernel_available():
        warnings.warn("dseval.kernels.fp8_gemm is not available; dequantizing FP8 weights on an FP8-capable GPU",
                      stacklevel=3)
        return False
    return True


def resolve_checkpoint_dir(path_or_preset: str) -> Path:
    """A preset name (see :func:`dseval.engine.loading.presets.list_presets`) or a directory."""
    if path_or_preset in PRESETS and not Path(path_or_preset).exists():
        return ensure_preset(path_or_preset)
    p = Path(path_or_preset).expanduser()
    if not p.is_dir():
        names = ", ".join(sorted(PRESETS))
        raise CheckpointError(f"{path_or_preset}: not a checkpoint directory nor a preset ({names})")
    return p


def _place(module: nn.Module, attr: str, tensor: torch.Tensor) -> None:
    setattr(module, attr, nn.Parameter(tensor, requires_grad=False))


class FiniteGuard:
    """Refuses a checkpoint holding NaN or Inf: such a model still answers, with NaN
    log-likelihoods whose argmax looks like a choice.

    Each tensor is checked where it lands (on the GPU that is a pass at memory speed; on the
    host it would cost longer than the copy itself), and the flags are read back in one
    transfer once everything is loaded, so the check adds no per-tensor synchronization. FP8
    e4m3fn has no Inf; its NaN is every exponent and mantissa bit set, found on the raw bytes
    without a float copy."""

    def __init__(self, reader: CheckpointReader) -> None:
        self.reader = reader
        self.flags: list[torch.Tensor] = []
        self.names: list[str] = []

    def add(self, tensor: torch.Tensor, name: str) -> None:
        if tensor.dtype == torch.float8_e4m3fn:
            ok = ((tensor.view(torch.uint8) & 0x7F) != 0x7F).all()
        else:
            ok = torch.isfinite(tensor).all()
        self.flags.append(ok)
        self.names.append(name)

    def check(self) -> None:
        """Raise naming the first tensor (in load order) that holds NaN or Inf."""
        if not self.flags:
            return
        bad = (~torch.stack(self.flags)).nonzero()  # one device, one read-back
        if bad.numel():
            name = self.names[int(bad[0])]
            raise CheckpointError(f"{self.reader.infos[name].file}: tensor '{name}' holds NaN or Inf values; the "
                                  f"checkpoint is corrupt (re-download or re-convert it)")


def load_weights(model: DeepseekV3ForCausalLM, reader: CheckpointReader, device: torch.device,
                 dtype: torch.dtype, keep_fp8: bool) -> None:
    """Stream this rank's part of every checkpoint tensor into ``model`` (built on meta). On a GPU
    tensors travel in their stored dtype through pinned staging buffers and are cast there."""
    modules = dict(model.named_modules())
    quant = model.config.quantization
    block = quant.weight_block_size if quant is not None else (128, 128)
    guard = FiniteGuard(reader)
    stager = HostToDevice(device) if device.type == "cuda" else None
    move = stager.copy if stager is not None else (lambda t: t.to(device))
    for _file, names in reader.names_by_file():
        for name in names:
            if name.endswith(SCALE_SUFFIX):
                continue  # read together with its weight
            mod_name, _, attr = name.rpartition(".")
            module = modules.get(mod_name)
            if module is None:
                continue  # an expert another rank owns (EP); validation already vouched for the name
            shard = getattr(module, "shard", None) if attr == "weight" else None
            if isinstance(module, Linear) and attr == "weight" and is_fp8(reader, name):
                part = read_fp8_shard(reader, name, shard, block)
                if keep_fp8:
                    require_aligned(part, name, shard, block)
                part = part.moved(move)
                guard.add(part.weight, name)
                guard.add(part.scale_inv, name + SCALE_SUFFIX)
                if keep_fp8:
                    module.set_fp8(part.weight, part.scale_inv)
                else:
                    _place(module, attr, dequantize_shard(part, block, dtype))
            else:  # routing in fp32
                target = torch.float32 if isinstance(module, Router) else dtype
                tensor = (reader.get(name) if isinstance(module, Router) else read_shard(reader, name, shard))
                tensor = move(tensor).to(target)
                guard.add(tensor, name)  # after the cast: a value too large for dtype is Inf now
                _place(module, attr, tensor)
    if stager is not None:
        stager.finish()
    guard.check()
    if model.config.tie_word_embeddings and "lm_head.weight" not in reader.infos:
        model.lm_head.weight = model.model.embed_tokens.weight
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise CheckpointError(f"{reader.path}: tensor '{left[0]}' was never loaded")


def load_model(
    path_or_preset: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    parallel: ParallelContext = ParallelContext(),  # noqa: B008 (frozen, immutable)
    *,
    fp8_weights: Fp8Mode = "auto",
) -> tuple[DeepseekV3ForCausalLM, ModelConfig, Tokenizer]:
    """Load model, config and tokenizer. ``fp8_weights``: ``auto`` keeps FP8 weights FP8 only on
    an FP8-capable GPU with the FP8 GEMM kernel, ``keep`` always (forward then needs
    ``dseval.kernels.fp8_gemm``), ``dequantize`` never. ``dtype`` is the compute/storage dtype of
    every other weight (routers and correction biases stay float32)."""
    path = resolve_checkpoint_dir(str(path_or_preset))
    device = torch.device(device)
    reader = CheckpointReader(path)
    config = reader.config
    with torch.device("meta"):
        full = DeepseekV3ForCausalLM(config)  # the checkpoint's shapes, whatever this rank holds
        model = full if parallel.is_single else DeepseekV3ForCausalLM(config, parallel)
    validate_checkpoint(reader, expected_tensors(full))
    if fp8_weights not in ("auto", "keep", "dequantize"):
        raise ConfigError(f"fp8_weights must be auto, keep or dequantize, not {fp8_weights!r}")
    keep = keep_fp8_weights(fp8_weights, device)
    try:
        load_weights(model, reader, device, dtype, keep)
    finally:
        reader.close()
    model.eval()
    return model, config, Tokenizer.from_dir(path)
