"""The engine's public API: what code outside ``engine/`` may import, and all it may rely on.

The engine is a standalone DeepSeek-V3 inference library: it imports torch, ``dseval.kernels``
and itself, never the harness. Everything else under ``engine/`` is internal and may move.

Typical use::

    from dseval.engine.api import LLM, EngineConfig, SamplingParams

    llm = LLM("/path/to/DeepSeek-V3", EngineConfig(max_num_seqs=32))   # or a preset: LLM("tiny")
    ids = llm.tokenizer.encode("The capital of France is", add_bos=True)
    out = llm.generate([ids], SamplingParams(max_tokens=16))[0]          # greedy by default
    scores = llm.score([ScoreRequest(tuple(ids + [7]), len(ids))])       # log P(continuation)

* :class:`LLM` loads a checkpoint folder (Hugging Face DeepSeek-V2/V3 layout, FP8 or not) or a
  preset and serves :meth:`LLM.generate` and :meth:`LLM.score` with continuous batching, a
  prefix cache, chunked prefill and, on CUDA, graph-captured decode.
* :class:`LiveSession` runs an LLM continuously for a server: requests join between steps,
  their text streams out as it decodes, and an abandoned one frees its cache at once.
* :class:`EngineConfig` holds the runtime knobs, :class:`SamplingParams` a request's sampling;
  both validate on construction.
* :func:`load_model` builds the model alone (meta-device construction, streamed weights);
  :class:`ParallelContext` names this rank's share under tensor/expert parallelism.
* Bad input raises an :class:`EngineError` (a config field, a checkpoint file, a layout, a
  request) whose message names the field or file; anything else is a bug.
"""

from dseval.engine.errors import CheckpointError, ConfigError, EngineError, LayoutError, RequestError
from dseval.engine.loading.loader import load_model
from dseval.engine.loading.presets import list_presets
from dseval.engine.loading.tokenizer import Tokenizer
from dseval.engine.model.config import ModelConfig
from dseval.engine.model.model import DeepseekV3ForCausalLM
from dseval.engine.parallel.context import ParallelContext
from dseval.engine.runtime.engine_config import EngineConfig, default_device
from dseval.engine.runtime.live import LiveSession
from dseval.engine.runtime.llm import LLM
from dseval.engine.runtime.outputs import EngineStats, GenerationOutput, ScoreOutput, ScoreRequest
from dseval.engine.runtime.sequence import SamplingParams
from dseval.kernels.mla_prefill import PREFILL_BACKENDS

__all__ = [
    "LLM",
    "PREFILL_BACKENDS",
    "CheckpointError",
    "ConfigError",
    "DeepseekV3ForCausalLM",
    "EngineConfig",
    "EngineError",
    "EngineStats",
    "GenerationOutput",
    "LayoutError",
    "LiveSession",
    "ModelConfig",
    "ParallelContext",
    "RequestError",
    "SamplingParams",
    "ScoreOutput",
    "ScoreRequest",
    "Tokenizer",
    "default_device",
    "list_presets",
    "load_model",
]
