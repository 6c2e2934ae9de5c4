"""CPU checks of the engine's fast-path plumbing: CUDA-graph batch buckets and padding, stacked
expert weights for the fused MoE, the prefill attention kernel's contract, the sync-free rotary
lookup, and the on-device random FP8 model used by bench/engine_w3.py. The GPU kernels
themselves are covered by tests/test_kernels_*.py; timings live in bench/."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from dseval.engine.runtime.cuda_graphs import bucket_for, graph_batch_sizes
from dseval.engine.model.fp8_blocks import FP8_DTYPE, quantize_blockwise
from dseval.engine.model.fused_weights import prepare_fused_moe, stack_experts
from dseval.engine.runtime.model_runner import ModelRunner
from dseval.engine.runtime.step import RowSpec, TokenFeed
from dseval.kernels.mla_prefill import PrefillAttention
from dseval.engine.model.moe import MoE
from dseval.engine.loading.random_init import random_fp8_model
from dseval.engine.model.rope import RotaryEmbedding
from dseval.engine.runtime.sequence import SamplingParams, Sequence
from engine_fixtures import v3_style_config


def test_graph_buckets_cover_every_batch_size() -> None:
    sizes = graph_batch_sizes(100)
    assert sizes[-1] == 100 and sizes == sorted(set(sizes))
    for n in range(1, 101):
        b = bucket_for(n, sizes)
        assert b is not None and n <= b
        assert not any(n <= s < b for s in sizes)  # the smallest fitting bucket
    assert bucket_for(101, sizes) is None
    assert graph_batch_sizes(5, [8, 2]) == [2, 5]


def _meta_runner(prefill: PrefillAttention = PrefillAttention()) -> ModelRunner:  # noqa: B008 (frozen)
    """A runner whose model has no weights (meta tensors): for input-layout checks only."""
    cfg = v3_style_config()
    with torch.device("meta"):
        from dseval.engine.model.model import DeepseekV3ForCausalLM

        model = DeepseekV3ForCausalLM(cfg)
    return ModelRunner(model, cfg, num_blocks=10, block_size=4, max_num_seqs=8, max_model_len=32,
                       device=torch.device("cpu"), dtype=torch.float32, prefill_attention=prefill)


def test_graph_padding_makes_inert_rows() -> None:
    runner = _meta_runner()
    b = runner.buffers
    for buf in (b.ids, b.pos, b.slots, b.ctx, b.cu):
        buf.fill_(7)  # stale values of an earlier, larger batch
    seqs = [Sequence([5, 6, 7 + i], SamplingParams()) for i in range(3)]
    for i, s in enumerate(seqs):
        s.block_table = [i]
    inp = runner.prepare([RowSpec(s, 2, [s.token_ids[2]]) for s in seqs], absorbed=True, static=True, pad_to=8)
    assert inp.input_ids.tolist() == [7, 8, 9] and inp.positions.tolist() == [2, 2, 2]
    assert b.slots[:3].tolist() == [2, 6, 10] and b.ctx[:3].tolist() == [3, 3, 3]
    assert b.ids[3:8].eq(0).all() and b.pos[3:8].eq(0).all()
    assert b.ctx[3:8].eq(0).all()
    assert b.slots[3:8].eq(10 * 4).all()  # the scratch block past num_blocks
    assert b.cu[:9].tolist() == list(range(9))


def test_fed_decode_step_takes_its_tokens_from_the_device() -> None:
    runner = _meta_runner()
    seqs = [Sequence([5, 6, 7], SamplingParams()) for _ in range(2)]
    for i, s in enumerate(seqs):
        s.block_table = [i]
        s.reserve_token()  # the previous step's token is still on the device
    previous = torch.tensor([40, 41, 42])  # that step sampled three rows; these two are rows 2 and 0
    inp = runner.prepare([RowSpec(s, 3, [s.token_ids[3]]) for s in seqs], absorbed=True, static=True,
                         feed=TokenFeed(previous, [2, 0]))
    assert inp.input_ids.tolist() == [42, 40] and inp.positions.tolist() == [3, 3]


def _fp8_moe(seed: int = 0) -> MoE:
    """A V3-style MoE layer whose experts hold FP8 weights in whole 128x128 blocks."""
    cfg = replace(v3_style_config(), hidden_size=128, moe_intermediate_size=128, n_routed_experts=8,
                  num_experts_per_tok=2, n_group=1, topk_group=1)
    moe = MoE(cfg)
    g = torch.Generator().manual_seed(seed)
    for lin in [m for m in moe.modules() if hasattr(m, "set_fp8")]:
        w = torch.randn(lin.out_features, lin.in_features, generator=g) * lin.in_features ** -0.5
        q, s = quantize_blockwise(w)
        lin.set_fp8(q, s)
    moe.gate.weight.data = torch.randn(moe.gate.weight.shape, generator=g) * 128 ** -0.5
    return moe


def test_stacked_experts_equal_per_expert_weights() -> None:
    moe = _fp8_moe()
    before = {k: (e.gate_proj.weight.clone(), e.up_proj.weight_scale_inv.clone(), e.down_proj.weight.clone())
              for k, e in moe.experts.items()}
    x = torch.randn(13, 128, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(1))
    w, ids = moe.gate(x)
    loop = moe.routed(x, w, ids)
    stack = stack_experts(moe)
    # 8 routed experts, then the shared expert (same shape) as stack row 8
    assert stack.w13.dtype == FP8_DTYPE and stack.w13.shape == (9, 256, 128) and stack.w2.shape == (9, 128, 128)
    assert stack.shared_index == 8 and stack.covers_all
    for k, e in moe.experts.items():  # experts now view the stack and still hold the same values
        g, su, d = before[k]
        assert torch.equal(e.gate_proj.weight.view(torch.uint8), g.view(torch.uint8))
        assert torch.equal(e.up_proj.weight_scale_inv, su)
        assert torch.equal(e.down_proj.weight.view(torch.uint8), d.view(torch.uint8))
        assert e.gate_proj.weight.untyped_storage().data_ptr() == stack.w13.untyped_storage().data_ptr()
    moe.fused_experts = stack
    fused = moe.routed(x, w, ids)
    rel = ((fused - loop).norm() / loop.norm()).item()
    # torch fallback: bf16 rounding only (~5e-3); the Triton kernel (TRITON_INTERPRET=1 in a
    # full test run) also quantizes activations to e4m3 per 1x128 group (~4.5e-2)
    assert rel < 6e-2, rel
    stack.w13 = stack.w13[[1, 0, *range(2, 9)]].contiguous()  # experts 0 and 1 swapped: must show
    swapped = moe.routed(x, w, ids)
    assert ((swapped - loop).norm() / loop.norm()).item() > 0.3


def test_shared_expert_rides_in_the_fused_kernel() -> None:
    """With the shared expert stacked as one more expert at weight 1, the MoE output equals the
    routed experts plus the separately run shared expert."""
    moe = _fp8_moe(seed=5)
    x = torch.randn(6, 128, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(2))
    reference = moe(x)  # per-expert loop + separate shared expert
    shared_w = {n: getattr(moe.shared_experts, n).weight.view(torch.uint8).clone()
                for n in ("gate_proj", "up_proj", "down_proj")}
    moe.fused_experts = stack_experts(moe)
    assert moe.fused_experts.shared_index == 8
    for n, w in shared_w.items():  # the shared expert now views the stack, same values
        assert torch.equal(getattr(moe.shared_experts, n).weight.view(torch.uint8), w)
    fused = moe(x)
    w, ids = moe.gate(x)
    parts = moe.fused_experts(x, w, ids) + moe.fused_experts(x, torch.ones(6, 1), torch.full((6, 1), 8))
    torch.testing.assert_close(fused.float(), parts.to(torch.bfloat16).float(), rtol=2e-2, atol=2e-2)
    rel = ((fused.float() - reference.float()).norm() / reference.float().norm()).item()
    assert rel < 6e-2, rel  # FP8 activation quantization in the fused kernel (see above)
    moe.fused_experts.w2[8].zero_()  # the stacked row is what the fused path reads for the shared expert
    assert ((moe(x).float() - fused.float()).norm() / fused.float().norm()).item() > 0.05


def test_stacked_experts_keep_the_shared_expert_apart_under_expert_parallelism() -> None:
    """Under EP the stack holds this rank's experts, then the shared one: an id of a remote expert
    that maps onto the shared row must contribute nothing."""
    from dseval.engine.parallel.context import ParallelContext

    cfg = replace(v3_style_config(), hidden_size=128, moe_intermediate_size=128, n_routed_experts=8,
                  num_experts_per_tok=2, n_group=1, topk_group=1)
    moe = MoE(cfg, ParallelContext(rank=0, world_size=2, ep=True))
    for lin in [m for m in moe.modules() if hasattr(m, "set_fp8")]:
        lin.set_fp8(*quantize_blockwise(torch.randn(lin.out_features, lin.in_features)))
    stack = stack_experts(moe)  # 4 of 8 experts, then the (replicated) shared expert
    assert not stack.covers_all and stack.n_routed == 4 and stack.shared_index == 4 and stack.w13.shape[0] == 5
    moe.fused_experts = stack
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    # the shared expert runs as its own call (after the ranks' sum) through the stacked kernel
    ref = moe.shared_experts(x).float()
    assert ((moe.shared_output(x) - ref).norm() / ref.norm()).item() < 6e-2  # FP8 activations in the kernel
    ids_hitting_the_shared_row = torch.full((3, 1), 4 + stack.first_expert)  # expert 4 lives on rank 1
    assert stack(x, torch.ones(3, 1), ids_hitting_the_shared_row).abs().max().item() == 0.0


def test_stacked_experts_drop_ids_owned_elsewhere() -> None:
    """Under expert parallelism a rank's stack covers its range; other ids contribute zero."""
    moe = _fp8_moe(seed=3)
    stack = stack_experts(moe)
    stack.first_expert, stack.covers_all = 4, False  # pretend this rank holds experts 4..11
    x = torch.randn(5, 128, dtype=torch.bfloat16)
    ids = torch.tensor([[0, 5]] * 5)
    w = torch.tensor([[0.7, 0.3]] * 5)
    only_local = stack(x, torch.tensor([[0.0, 0.3]] * 5), torch.tensor([[4, 5]] * 5))
    torch.testing.assert_close(stack(x, w, ids), only_local)


def test_prepare_fused_moe_marks_every_moe_layer_once() -> None:
    cfg = replace(v3_style_config(), hidden_size=128, moe_intermediate_size=128, q_lora_rank=128,
                  num_nextn_predict_layers=0)
    model = random_fp8_model(cfg, "cpu")
    n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
    assert prepare_fused_moe(model) == n_moe
    assert prepare_fused_moe(model) == 0  # already stacked


def test_prefill_attention_is_causal_from_the_last_positions() -> None:
    from dseval.kernels.mla_prefill import (
        mla_prefill_attention,
        mla_prefill_attention_torch,
    )

    g = torch.Generator().manual_seed(0)
    t, s, h = 5, 12, 3
    qn, qp = torch.randn(t, h, 16, generator=g), torch.randn(t, h, 8, generator=g)
    kn, kp, v = torch.randn(s, h, 16, generator=g), torch.randn(s, 8, generator=g), torch.randn(s, h, 16, generator=g)
    out = mla_prefill_attention(qn, qp, kn, kp, v, 0.3)
    # explicit float64 reference: query i sits at position s - t + i
    ref = torch.empty(t, h, 16, dtype=torch.float64)
    for i in range(t):
        n = s - t + i + 1
        sc = (torch.einsum("hd,shd->hs", qn[i].double(), kn[:n].double())
              + torch.einsum("hr,sr->hs", qp[i].double(), kp[:n].double())) * 0.3
        ref[i] = torch.einsum("hs,shv->hv", sc.softmax(-1), v[:n].double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    kn2 = kn.clone()
    kn2[-1] += 5  # the last key is visible only to the last query
    out2 = mla_prefill_attention_torch(qn, qp, kn2, kp, v, 0.3)
    torch.testing.assert_close(out2[:-1], out[:-1])
    assert not torch.allclose(out2[-1], out[-1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="SDPA path runs on CUDA only")
def test_prefill_attention_sdpa_matches_reference() -> None:
    from dseval.kernels.mla_prefill import (
        mla_prefill_attention,
        mla_prefill_attention_torch,
    )

    g = torch.Generator(device="cuda").manual_seed(0)
    t, s, h = 64, 300, 8
    args = [torch.randn(*shape, generator=g, device="cuda", dtype=torch.bfloat16)
            for shape in ((t, h, 128), (t, h, 64), (s, h, 128), (s, 64), (s, h, 128))]
    out = mla_prefill_attention(*args, 0.1)
    ref = mla_prefill_attention_torch(*args, 0.1)
    assert ((out.float() - ref.float()).norm() / ref.float().norm()).item() < 1e-2


def test_reserved_rotary_tables_skip_the_length_check() -> None:
    cfg = v3_style_config()
    a, b = RotaryEmbedding(cfg), RotaryEmbedding(cfg)
    b.reserve(64, torch.device("cpu"))
    pos = torch.tensor([0, 5, 63])
    for x, y in zip(a.cos_sin(pos), b.cos_sin(pos)):
        torch.testing.assert_close(x, y)
    b._tables[torch.device("cpu")][0].fill_(3.0)  # a reserved lookup reads the table as is
    assert b.cos_sin(pos)[0].eq(3.0).all()


def test_random_fp8_model_layout() -> None:
    cfg = replace(v3_style_config(), hidden_size=128, moe_intermediate_size=128, q_lora_rank=128,
                  num_nextn_predict_layers=0)
    model = random_fp8_model(cfg, "cpu", seed=1)
    params = dict(model.named_parameters())
    assert params["lm_head.weight"].dtype == torch.bfloat16
    assert params["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert params["model.layers.1.mlp.gate.weight"].dtype == torch.float32
    w = params["model.layers.0.self_attn.o_proj.weight"]
    s = params["model.layers.0.self_attn.o_proj.weight_scale_inv"]
    assert w.dtype == FP8_DTYPE and s.shape == (1, 1) and s.dtype == torch.float32
    scales = params["model.layers.1.mlp.experts.0.gate_proj.weight_scale_inv"]
    assert scales.numel() == 1 or scales.std() > 0  # per-block scales vary
    from dseval.kernels.fp8_quant import dequant_block_fp8_weight

    std = dequant_block_fp8_weight(w, s).std().item()  # ~ fan_in^-0.5
    assert 0.5 < std * cfg.num_attention_heads ** 0.5 * cfg.v_head_dim ** 0.5 < 2.0


@pytest.mark.parametrize("layout", ["tp", "ep"])
def test_random_fp8_model_shards_are_slices_of_one_model(layout: str) -> None:
    """Every rank of a TP2 / EP2 layout holds exactly its part of the single-process model, FP8
    codes and block scales included (bench/engine_w3.py compares sharded runs on that basis)."""
    from dseval.engine.parallel.context import ParallelContext

    cfg = replace(v3_style_config(), hidden_size=256, intermediate_size=256, moe_intermediate_size=256,
                  q_lora_rank=128, kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=64, v_head_dim=64,
                  num_nextn_predict_layers=0)
    whole = dict(random_fp8_model(cfg, "cpu", seed=3).named_parameters())
    pieces: dict[str, list[torch.Tensor]] = {}
    for rank in range(2):
        ctx = ParallelContext(rank=rank, world_size=2, tp=layout == "tp", ep=layout == "ep")
        for name, p in random_fp8_model(cfg, "cpu", seed=3, parallel=ctx).named_parameters():
            pieces.setdefault(name, []).append(p)
    assert set(pieces) == set(whole)
    split = 0
    for name, parts in pieces.items():
        full = whole[name].view(torch.uint8) if whole[name].dtype == FP8_DTYPE else whole[name]
        parts = [q.view(torch.uint8) if q.dtype == FP8_DTYPE else q for q in parts]
        if len(parts) == 1:  # an expert only one EP rank owns
            assert torch.equal(parts[0], full), name
            continue
        dims = [d for d in range(full.dim()) if parts[0].shape[d] != full.shape[d]]
        if dims:
            split += 1
            assert torch.equal(torch.cat(parts, dim=dims[0]), full), name
        else:  # replicated
            assert all(torch.equal(q, full) for q in parts), name
    assert split > 0 if layout == "tp" else split == 0
    experts = [n for n in pieces if ".experts." in n]
    assert all(len(pieces[n]) == (2 if layout == "tp" else 1) for n in experts)


def test_random_fp8_model_refuses_a_split_through_scale_blocks() -> None:
    from dseval.engine.errors import LayoutError
    from dseval.engine.parallel.context import ParallelContext

    cfg = replace(v3_style_config(), num_nextn_predict_layers=0)  # 4 heads of 16: halves cut 128-blocks
    with pytest.raises(LayoutError, match="scale blocks"):
        random_fp8_model(cfg, "cpu", parallel=ParallelContext(rank=0, world_size=2, tp=True))


def test_prefill_backend_is_validated_and_resolved_once() -> None:
    """The engine config names the backend; off CUDA nothing is probed and ``auto`` resolves to
    the always-available FlashAttention-2 path (steps of several sequences packed into one
    varlen call, whose CPU form is the reference per sequence), which every step's metadata
    then carries; ``fp8`` is never packed."""
    from dseval.engine.errors import ConfigError
    from dseval.engine.runtime.engine_config import EngineConfig
    from dseval.kernels.mla_prefill import PrefillAttention, resolve_prefill_attention

    with pytest.raises(ConfigError, match="'prefill_attention' must be one of"):
        EngineConfig(prefill_attention="nope")
    with pytest.raises(ValueError, match="prefill attention backend"):
        PrefillAttention("auto")  # a resolved choice is never auto
    cpu = torch.device("cpu")
    assert resolve_prefill_attention("auto", cpu, torch.bfloat16, 128, 64, 128) == PrefillAttention("causal_bias",
                                                                                                     varlen=True)
    assert resolve_prefill_attention("fp8", cpu, torch.bfloat16, 128, 64, 128) == PrefillAttention("fp8")
    runner = _meta_runner(PrefillAttention("split_flash"))
    seqs = [Sequence([5, 6, 7], SamplingParams())]
    seqs[0].block_table = [0]
    for static in (False, True):
        inp = runner.prepare([RowSpec(seqs[0], 0, [5, 6, 7])], absorbed=False, static=static)
        assert inp.meta.prefill == PrefillAttention("split_flash")
