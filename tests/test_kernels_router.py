"""kernels.router (Triton interpreter) against the engine's step-by-step routing
(``engine.model.moe.Router`` on CPU, which follows DeepSeek-V2/V3 and is itself checked against
transformers in test_engine_model.py): same experts in the same order, same weights."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede any triton import

from dataclasses import replace

import pytest
import torch
from torch import nn

triton = pytest.importorskip("triton")

from dseval.engine.model.moe import Router
from dseval.kernels.router import group_topk, group_topk_supported
from engine_fixtures import v3_style_config

ROUTINGS = {
    "v3_noaux_tc": {},
    "group_limited_greedy_softmax": {"topk_method": "group_limited_greedy", "scoring_func": "softmax",
                                     "norm_topk_prob": False, "routed_scaling_factor": 1.0},
    "greedy_softmax": {"topk_method": "greedy", "scoring_func": "softmax", "n_group": 1, "topk_group": 1},
    "v3_256_experts": {"n_routed_experts": 256, "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8},
}


@pytest.mark.parametrize("name", list(ROUTINGS))
def test_group_topk_matches_the_router(name: str) -> None:
    cfg = replace(v3_style_config(), **ROUTINGS[name])
    E = cfg.n_routed_experts
    router = Router(cfg)
    router.weight = nn.Parameter(torch.eye(E), requires_grad=False)  # logits = x
    g = torch.Generator().manual_seed(len(name))
    if router.e_score_correction_bias is not None:
        router.e_score_correction_bias = nn.Parameter(0.1 * torch.randn(E, generator=g), requires_grad=False)
    logits = torch.randn(7, E, generator=g) * 2
    ref_w, ref_ids = router(logits)  # CPU tensors: the torch path
    groups = cfg.n_group if cfg.topk_method != "greedy" else 1
    assert group_topk_supported(E, groups, cfg.num_experts_per_tok)
    w, ids = group_topk(logits, router.e_score_correction_bias, top_k=cfg.num_experts_per_tok, n_group=groups,
                        topk_group=cfg.topk_group, sigmoid=cfg.scoring_func == "sigmoid",
                        group_top2=cfg.topk_method == "noaux_tc", normalize=cfg.norm_topk_prob,
                        scaling=cfg.routed_scaling_factor)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)


def test_group_limits_are_respected() -> None:
    """A token whose best experts all sit in one group still draws from topk_group groups only."""
    # v3_style_config's shape: 16 experts, 4 groups of 4, 2 groups kept, top-4
    logits = torch.full((1, 16), -4.0)
    logits[0, :4] = torch.tensor([3.0, 2.9, 2.8, 2.7])  # group 0: all four best
    logits[0, 9] = 2.0  # group 2 has the next best pair: 9 and 10
    logits[0, 10] = 1.9
    logits[0, 12] = 2.5  # group 3's single strong expert loses to group 2's pair under top-2 scoring
    w, ids = group_topk(logits, None, top_k=4, n_group=4, topk_group=2, sigmoid=True, group_top2=True,
                        normalize=True, scaling=1.0)
    assert ids.tolist() == [[0, 1, 2, 3]]
    assert abs(w.sum().item() - 1.0) < 1e-6
    logits[0, 1:4] = -4.0  # group 0 keeps one strong expert; groups 0 and 2 score best
    _, ids = group_topk(logits, None, top_k=4, n_group=4, topk_group=2, sigmoid=True, group_top2=True,
                        normalize=True, scaling=1.0)
    chosen = ids[0].tolist()
    assert chosen[:3] == [0, 9, 10]  # expert 12 (2.5) beats 9 and 10 but its group is out
    assert all(i // 4 in (0, 2) for i in chosen)


def test_unsupported_shapes_are_refused() -> None:
    assert not group_topk_supported(160, 8, 6)  # DeepSeek-V2: the engine keeps the torch path
    with pytest.raises(ValueError, match="powers of two"):
        group_topk(torch.zeros(1, 160), None, top_k=6, n_group=8, topk_group=3, sigmoid=False,
                   group_top2=False, normalize=False, scaling=1.0)
