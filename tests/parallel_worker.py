"""One rank of a gloo TP/EP group, started by ``torchrun`` from tests/test_engine_parallel.py.

For each layout named on the command line it loads a test checkpoint sharded for that layout,
runs a prefill (expanded MLA) and two decode steps (absorbed MLA) and the MTP head, and saves the
logits and what its checkpoint reader read, so the test process can compare them with a single
process's.

Usage: parallel_worker.py ROOT OUT_DIR LAYOUT... where LAYOUT = ckpt:tp:ep:moe_comm:fp8_mode:dtype
names the checkpoint folder ROOT/ckpt and the layout; results go to OUT_DIR/rank<R>.pt.
"""

from __future__ import annotations

import os
import sys

# A rank models a production process: the Triton interpreter that the kernel tests switch on
# for the whole pytest session must not leak into its CPU engine (bf16 under the interpreter is
# not bf16 arithmetic). Only as a script: the test module imports this file too, and popping
# the variable there would switch the kernel tests collected after it to low-precision dots.
if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from dseval.engine.loading import loader
from dseval.engine.loading.checkpoint import CheckpointReader
from dseval.engine.parallel.collectives import min_over_ranks
from dseval.engine.model.fused_weights import prepare_fused_moe
from dseval.engine.parallel.context import ParallelContext
from engine_fixtures import contiguous_metadata, decode_metadata, prefill_logits

PROMPTS = [[1, 5, 9, 200, 17], [3, 3, 700, 12, 45, 901, 2, 64, 8], [1023, 0, 77]]
DECODE_TOKENS = [[7, 11, 13], [100, 5, 1000]]


class CountingReader(CheckpointReader):
    """Remembers the last reader so the worker can report what this rank read."""

    last: CountingReader | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        CountingReader.last = self


def load(path: Path, fp8: str, dtype: str, parallel: ParallelContext = ParallelContext()) -> torch.nn.Module:  # noqa: B008
    """The model as the engine runs it: bf16 models get the stacked experts of the fused MoE
    kernel (its torch fallback on CPU), as ``LLM`` prepares them."""
    model, _, _ = loader.load_model(str(path), dtype=getattr(torch, dtype), parallel=parallel, fp8_weights=fp8)  # type: ignore[arg-type]
    if model.model.embed_tokens.weight.dtype == torch.bfloat16:
        prepare_fused_moe(model)
    return model


def run_model(model: torch.nn.Module) -> dict[str, list[torch.Tensor]]:
    """Prefill logits per prompt, then logits of two decode steps over all prompts, then MTP."""
    logits, meta, hidden = prefill_logits(model, PROMPTS)
    out = {"prefill": [x.clone() for x in logits], "decode": []}
    for tokens in DECODE_TOKENS:
        meta, pos = decode_metadata(meta, absorbed=True)
        h = model(torch.tensor(tokens), pos, meta)
        out["decode"].append(model.compute_logits(h))
    if model.config.num_nextn_predict_layers:  # MTP over prompt 0's prefill hidden states
        n = len(PROMPTS[0])
        mmeta, mpos = contiguous_metadata(model, [n - 1])
        mh = model.mtp_forward(torch.tensor(PROMPTS[0][1:]), mpos, hidden[: n - 1], mmeta)
        out["mtp"] = [model.mtp_logits(mh)]
    return out


def main() -> None:
    root, out_dir, *layouts = sys.argv[1:]
    dist.init_process_group("gloo")
    loader.CheckpointReader = CountingReader  # type: ignore[misc]
    results = {}
    for layout in layouts:
        ckpt, tp, ep, comm, fp8, dtype = layout.split(":")
        ctx = ParallelContext.from_options(int(tp), int(ep), comm)  # type: ignore[arg-type]
        model = load(Path(root) / ckpt, fp8, dtype, ctx)
        reader = CountingReader.last
        assert reader is not None
        res = run_model(model)
        res["bytes_read"] = reader.bytes_read
        res["names_read"] = sorted(reader.names_read)
        res["held"] = {n: (tuple(p.shape), str(p.dtype)) for n, p in model.named_parameters()}
        results[layout] = res
        results["min_over_ranks"] = min_over_ranks(10 - dist.get_rank(), ctx)
    torch.save(results, Path(out_dir) / f"rank{dist.get_rank()}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
