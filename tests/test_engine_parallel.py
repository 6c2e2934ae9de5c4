"""Tensor and expert parallelism of the engine on CPU with gloo.

Two ranks started by ``torchrun`` (tests/parallel_worker.py) load the small V3-style checkpoint
sharded for TP2, EP2 (both MoE communication schemes) and TP2+EP2, and their prefill (expanded
MLA), decode (absorbed MLA) and MTP logits are compared with a single process's. Loading facts
(what each rank reads, FP8 block slicing) need no collectives and are checked in this process
with a rank's ``ParallelContext`` and no process group.

Measured on the 2-core CI VM: float32 max |Δlogit| ≈ 2.6e-6 (logits up to ≈ 4.2), asserted
<= 1e-5. FP8 kept, bf16 activations, fused-MoE stacks (the kernels' CPU paths): per-token
max |Δ| 0.016-0.039 for EP2 (experts see other row groupings) and 0.027-0.047 for TP2 (bf16
partial sums all-reduced in another order), except one token per phase under TP2 whose routing
flips to another expert (≈ 0.6): asserted all rows but one <= 0.1, all <= 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from dseval.engine.loading import loader
from dseval.engine.errors import CheckpointError
from dseval.engine.loading.checkpoint import CheckpointReader
from dseval.engine.loading.checkpoint_writer import write_checkpoint
from dseval.engine.model.config import ModelConfig
from dseval.engine.model.linear import Linear
from dseval.engine.model.model import DeepseekV3ForCausalLM
from dseval.engine.parallel.context import ParallelContext
from dseval.engine.loading.random_init import random_state_dict
from dseval.engine.parallel.sharding import TensorShard
from engine_fixtures import v3_style_config
from parallel_worker import load, run_model

TESTS = Path(__file__).parent
FP32_TOL = 1e-5
BF16_TOL = 0.1

# checkpoint:tp:ep:moe_comm:fp8_mode:dtype (see parallel_worker.py)
FP32_LAYOUTS = ["v3:2:1:all_to_all:auto:float32", "v3:1:2:all_to_all:auto:float32",
                "v3:1:2:all_reduce:auto:float32", "v3:2:2:all_to_all:auto:float32",
                "v3:2:2:all_reduce:auto:float32", "fp8:2:1:all_to_all:dequantize:float32"]
BF16_LAYOUTS = ["fp8:2:1:all_to_all:keep:bfloat16", "fp8:1:2:all_to_all:keep:bfloat16"]


def fp8_aligned_config() -> ModelConfig:
    """V3-style, wide enough that every TP2 slice is whole 128x128 FP8 blocks. The dense
    down_proj keeps K = 256 per rank: K/128 = 2, not a multiple of 4, like V3's TP8 K = 2304."""
    return replace(v3_style_config(), hidden_size=256, intermediate_size=512, moe_intermediate_size=256,
                   q_lora_rank=128, kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=64, v_head_dim=64)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckpts")
    v3, wide, small = v3_style_config(), fp8_aligned_config(), v3_style_config()
    write_checkpoint(root / "v3", v3, random_state_dict(v3, 0), dtype=torch.float32)
    write_checkpoint(root / "fp8", wide, random_state_dict(wide, 1), fp8=True, dtype=torch.float32)
    # 128x128 blocks on 64-wide layers: every TP2 slice cuts a block
    write_checkpoint(root / "fp8_unaligned", small, random_state_dict(small, 2), fp8=True, dtype=torch.float32)
    return root


@pytest.fixture(scope="module")
def gloo_results(checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    """Both ranks' results for every layout, from one torchrun of two gloo processes."""
    out = tmp_path_factory.mktemp("ranks")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(TESTS / "parallel_worker.py"), str(checkpoints), str(out), *FP32_LAYOUTS, *BF16_LAYOUTS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {r: torch.load(out / f"rank{r}.pt") for r in (0, 1)}


_REFERENCE: dict[tuple[str, str, str], dict] = {}


def reference(checkpoints: Path, layout: str) -> dict:
    """The single-process model's results for the layout's checkpoint, FP8 mode and dtype."""
    ckpt, _tp, _ep, _comm, fp8, dtype = layout.split(":")
    key = (ckpt, fp8, dtype)
    if key not in _REFERENCE:
        # Compute it as the ranks do: torchrun starts each with OMP_NUM_THREADS=1 (the summation
        # order decides bf16 rounding and the odd flipped expert), and parallel_worker.py runs
        # without the Triton interpreter that the kernel tests switch on for this session.
        threads, interpret = torch.get_num_threads(), os.environ.pop("TRITON_INTERPRET", None)
        torch.set_num_threads(1)
        try:
            _REFERENCE[key] = run_model(load(checkpoints / ckpt, fp8, dtype))
        finally:
            torch.set_num_threads(threads)
            if interpret is not None:
                os.environ["TRITON_INTERPRET"] = interpret
    return _REFERENCE[key]


def max_diff(got: dict, want: dict, parts: tuple[str, ...] = ("prefill", "decode", "mtp")) -> float:
    return max((a.float() - b.float()).abs().max().item() for k in parts for a, b in zip(got[k], want[k], strict=True))


@pytest.mark.parametrize("layout", FP32_LAYOUTS)
def test_sharded_logits_equal_single_process(gloo_results: dict, checkpoints: Path, layout: str) -> None:
    want = reference(checkpoints, layout)
    for rank in (0, 1):
        got = gloo_results[rank][layout]
        assert len(got["decode"]) == 2 and got["prefill"][1].shape == want["prefill"][1].shape
        assert max_diff(got, want) <= FP32_TOL, f"rank {rank} {layout}"


@pytest.mark.parametrize("layout", BF16_LAYOUTS)
def test_fp8_weights_kept_sharded_match_within_bf16(gloo_results: dict, checkpoints: Path, layout: str) -> None:
    want = reference(checkpoints, layout)
    got = gloo_results[0][layout]
    # The sharded linears really hold FP8 parts (the kernel's CPU path runs them).
    assert got["held"]["model.layers.0.mlp.down_proj.weight"][1] == "torch.float8_e4m3fn"
    for part in ("prefill", "decode", "mtp"):
        rows = torch.cat([(a.float() - b.float()).abs().amax(-1) for a, b in zip(got[part], want[part], strict=True)])
        assert rows.sort().values[-2] <= BF16_TOL and rows.max() <= 1.0, (part, rows)


def test_ranks_hold_identical_full_vocabulary_logits(gloo_results: dict) -> None:
    """The head all-gathers: both ranks see the whole vocabulary, bit for bit, so they sample alike."""
    for layout in FP32_LAYOUTS:
        a, b = gloo_results[0][layout], gloo_results[1][layout]
        assert a["prefill"][0].shape[-1] == v3_style_config().vocab_size or layout.startswith("fp8")
        for x, y in zip(a["decode"], b["decode"], strict=True):
            assert torch.equal(x, y), layout


def test_ranks_agree_on_the_smallest_value(gloo_results: dict) -> None:
    """What the runtime uses to agree on a KV-cache size derived from each rank's free memory."""
    assert gloo_results[0]["min_over_ranks"] == gloo_results[1]["min_over_ranks"] == 9


def test_gloo_ranks_held_only_their_parts(gloo_results: dict) -> None:
    tp = gloo_results[1]["v3:2:1:all_to_all:auto:float32"]["held"]
    assert tp["model.layers.0.self_attn.q_b_proj.weight"][0] == (2 * 24, 48)  # 2 of 4 heads x qk 24
    assert tp["model.layers.0.self_attn.o_proj.weight"][0] == (64, 2 * 16)
    assert tp["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"][0] == (40, 64)  # replicated
    assert tp["lm_head.weight"][0] == (512, 64)
    ep = gloo_results[1]["v3:1:2:all_to_all:auto:float32"]["held"]
    experts = {int(n.split(".")[5]) for n in ep if ".mlp.experts." in n}
    assert experts == set(range(8, 16))


# ---------------------------------------------------------------- loading, in this process
def rank_ctx(rank: int, tp: bool = False, ep: bool = False) -> ParallelContext:
    """Rank ``rank`` of a two-rank layout without a process group: enough to build and load."""
    return ParallelContext(rank=rank, world_size=2, tp=tp, ep=ep)


def load_counting(path: Path, monkeypatch: pytest.MonkeyPatch, **kwargs) -> tuple[DeepseekV3ForCausalLM, CheckpointReader]:
    readers: list[CheckpointReader] = []

    class Counting(CheckpointReader):
        def __init__(self, p: Path) -> None:
            super().__init__(p)
            readers.append(self)

    monkeypatch.setattr(loader, "CheckpointReader", Counting)
    model, _, _ = loader.load_model(str(path), **kwargs)
    return model, readers[0]


@pytest.mark.parametrize("tp,ep", [(True, False), (False, True)])
def test_each_rank_reads_only_its_part(checkpoints: Path, monkeypatch: pytest.MonkeyPatch, tp: bool, ep: bool) -> None:
    _, whole = load_counting(checkpoints / "v3", monkeypatch, dtype=torch.float32)
    total = whole.bytes_read
    for rank in (0, 1):
        model, reader = load_counting(checkpoints / "v3", monkeypatch, dtype=torch.float32,
                                      parallel=rank_ctx(rank, tp, ep))
        # Exactly the bytes of the parameters this rank holds, at the checkpoint's dtypes.
        held = sum(p.numel() * reader.infos[n].dtype.itemsize for n, p in model.named_parameters())
        assert reader.bytes_read == held < total
        if ep:
            owned = {int(n.split(".")[5]) for n in reader.names_read if ".mlp.experts." in n}
            assert owned == set(range(8 * rank, 8 * rank + 8))


def test_fp8_parts_are_the_full_weights_blocks(checkpoints: Path) -> None:
    full, _, _ = loader.load_model(str(checkpoints / "fp8"), dtype=torch.bfloat16, fp8_weights="keep")
    full_mods = dict(full.named_modules())
    checked = 0
    for rank in (0, 1):
        part, _, _ = loader.load_model(str(checkpoints / "fp8"), dtype=torch.bfloat16, fp8_weights="keep",
                                       parallel=rank_ctx(rank, tp=True))
        for name, mod in part.named_modules():
            if not (isinstance(mod, Linear) and mod.is_fp8 and mod.shard is not None):
                continue
            ref = full_mods[name]
            start, stop = mod.shard.bounds(ref.weight.shape[mod.shard.dim])
            w = ref.weight.view(torch.uint8).narrow(mod.shard.dim, start, stop - start)
            s = ref.weight_scale_inv.narrow(mod.shard.dim, start // 128, (stop - start) // 128)
            assert torch.equal(mod.weight.view(torch.uint8), w), name
            assert torch.equal(mod.weight_scale_inv, s), name
            checked += 1
    assert checked >= 2 * 9  # q_b, kv_b, o_proj per layer, dense and expert MLPs


def test_fp8_split_through_blocks_refused_when_kept(checkpoints: Path) -> None:
    with pytest.raises(CheckpointError, match=r"proj\.weight: the 2-way split gives rank 1 .* cuts the 128-wide FP8 scale blocks"):
        loader.load_model(str(checkpoints / "fp8_unaligned"), dtype=torch.bfloat16, fp8_weights="keep",
                          parallel=rank_ctx(1, tp=True))


def test_fp8_split_through_blocks_dequantizes_exactly(checkpoints: Path) -> None:
    full, _, _ = loader.load_model(str(checkpoints / "fp8_unaligned"), dtype=torch.float32, fp8_weights="dequantize")
    params = dict(full.named_parameters())
    part, _, _ = loader.load_model(str(checkpoints / "fp8_unaligned"), dtype=torch.float32, fp8_weights="dequantize",
                                   parallel=rank_ctx(1, tp=True))
    for name, mod in part.named_modules():
        shard: TensorShard | None = getattr(mod, "shard", None)
        if shard is None:
            continue
        ref = params[f"{name}.weight"]
        start, stop = shard.bounds(ref.shape[shard.dim])
        assert torch.equal(mod.weight, ref.narrow(shard.dim, start, stop - start)), name


def test_v3_tp8_down_proj_slice_is_block_aligned_but_not_cublas_safe() -> None:
    """The FP8 trap: 18432 / 8 = 2304 = 18 blocks, a clean slice whose K/128 is not a multiple
    of 4, so the GEMM dispatcher must not send it to cuBLAS's block-scaled path."""
    from dseval.kernels.fp8_gemm import scaled_mm_is_safe

    start, stop = TensorShard(dim=1, index=3, count=8).bounds(18432)
    assert (stop - start, start % 128, stop % 128) == (2304, 0, 0)
    assert not scaled_mm_is_safe(4096, 7168, stop - start)
    assert scaled_mm_is_safe(4096, 7168, 18432)


def test_layouts_that_do_not_divide_are_refused() -> None:
    with pytest.raises(ValueError, match="neither tp nor ep"):
        ParallelContext(rank=0, world_size=2)
    with pytest.raises(ValueError, match="num_attention_heads = 4 is not divisible by the 3"), torch.device("meta"):
        DeepseekV3ForCausalLM(v3_style_config(1026), ParallelContext(rank=0, world_size=3, tp=True))
    with pytest.raises(ValueError, match="n_routed_experts = 16 is not divisible by the 3"), torch.device("meta"):
        DeepseekV3ForCausalLM(v3_style_config(), ParallelContext(rank=0, world_size=3, ep=True))
    with pytest.raises(ValueError, match="vocab_size = 1024 is not divisible by the 3"), torch.device("meta"):
        DeepseekV3ForCausalLM(v3_style_config(), ParallelContext(rank=0, world_size=3, tp=True))
    assert ParallelContext.from_options(1, 1).is_single
    assert ParallelContext(rank=1, world_size=8, tp=True, ep=True, moe_comm="all_reduce").describe() == "tp8 ep8 all_reduce"


# ---------------------------------------------------------------- a whole `dseval run`
def run_cli(out: Path, data_dir: Path, nproc: int, *flags: str) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                "-m", "dseval"] if nproc > 1 else [sys.executable, "-m", "dseval"]
    args = ["run", "mmlu", "--model", "tiny", "--limit", "1", "--device", "cpu", "--out", str(out),
            "--data-dir", str(data_dir), *flags]
    proc = subprocess.run(launcher + args, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("single")
    run_cli(out, data_dir, 1)
    return out


def read_samples(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "mmlu" / "samples.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("flag,comm", [("--tp", "all_to_all"), ("--ep", "all_to_all"), ("--ep", "all_reduce")])
def test_dseval_run_sharded_writes_the_single_process_samples(single_run: Path, tmp_path: Path, data_dir: Path,
                                                              flag: str, comm: str) -> None:
    """``torchrun --nproc-per-node 2 -m dseval run ... --tp 2`` (or ``--ep 2``) on the ``tiny``
    preset (FP8, 128-blocks on 16-wide layers: dequantized split-through-block shards).
    Everything in samples.jsonl is equal except loglikelihoods, whose float32 sums run in
    another order: measured max |Δ| 9.5e-7 over 57 docs x 4 choices, asserted <= 1e-5."""
    run_cli(tmp_path, data_dir, 2, flag, "2", "--moe-comm", comm)
    backend = json.loads((tmp_path / "run.json").read_text())["backend"]
    assert f"{flag[2:]}2" in backend, backend  # the model really was split, not loaded whole twice
    assert flag == "--tp" or comm in backend, backend  # and experts exchanged the way --moe-comm asked
    want, got = read_samples(single_run), read_samples(tmp_path)
    assert len(got) == len(want) == 57
    for a, b in zip(got, want, strict=True):
        la, lb = a.pop("loglikelihoods"), b.pop("loglikelihoods")
        assert a == b
        assert max(abs(x - y) for x, y in zip(la, lb, strict=True)) <= 1e-5, a["id"]
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads((single_run / "summary.json").read_text())
