"""The constructed ``retriever`` model: its rotary profiles hold their margins at every distance
to 128K, it copies a NIAH needle through the real engine (checkpoint folder, loader, paged MLA),
the control (the same tensors without ``rope_scaling``) fails where the profile predicts, and
the MTP module's drafts are accepted.

CPU lengths only; the 32K-128K sweep is bench/retriever_niah.sh on a GPU (docs/retriever.md)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from dseval.engine.api import LLM, EngineConfig, SamplingParams
from dseval.engine.loading import retriever as R
from dseval.engine.loading.presets import retriever_config, retriever_plain_config
from dseval.engine.model.rope import rope_inv_freq

ROOT = Path(__file__).resolve().parents[1]
# The NIAH prompt builder of the MTP benchmark: the task's needle and answer prefix in a haystack
# of repeated phrases (" is", " the") and numbers that tempt a weak match.
_spec = importlib.util.spec_from_file_location("retriever_mtp", ROOT / "bench" / "retriever_mtp.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_profiles_sit_on_the_dims_yarn_keeps_and_interpolates() -> None:
    config = retriever_config()
    yarn, plain = rope_inv_freq(config), rope_inv_freq(retriever_plain_config())
    shift, window = list(R.SHIFT_DIMS), list(R.WINDOW_DIMS)
    assert torch.equal(yarn[shift], plain[shift])
    assert torch.allclose(yarn[window], plain[window] / config.rope_scaling.factor)
    assert R.NEAR == R.HORIZON // int(config.rope_scaling.factor)


def test_profiles_hold_their_margins_to_128k() -> None:
    yarn, plain = R.profile_margins(retriever_config()), R.profile_margins(retriever_plain_config())
    # Previous-token heads: the target offset beats every other distance up to 131072 by many
    # nats in both settings (YaRN leaves these frequencies alone; only the softmax scale differs).
    assert yarn["shift_margin"] > 30 and plain["shift_margin"] > 15
    # Induction head: under YaRN a far needle loses at most a few nats to a near token ...
    assert yarn["window_spread"] < 4
    # ... without it, a needle beyond BEYOND tokens is far below every token of the window.
    assert plain["beyond_drop"] > 10


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The retriever, and the control as the same shards beside a config.json without rope_scaling."""
    root = tmp_path_factory.mktemp("retriever")
    yarn = R.write_retriever(root / "yarn", retriever_config())
    plain = root / "plain"
    plain.mkdir()
    for f in yarn.iterdir():
        if f.name != "config.json":
            os.symlink(f, plain / f.name)
    config = json.loads((yarn / "config.json").read_text())
    assert config["rope_scaling"]["factor"] == 40
    config["rope_scaling"] = None
    (plain / "config.json").write_text(json.dumps(config))
    return {"yarn": yarn, "plain": plain}


@pytest.mark.parametrize("setting", ["yarn", "plain"])
def test_needle_is_copied_and_the_control_fails_beyond_its_window(checkpoints: dict[str, Path], setting: str) -> None:
    llm = LLM(str(checkpoints[setting]), EngineConfig(speculative="mtp" if setting == "yarn" else None), device="cpu")
    cells = [(2048, 50, "5550123"), (6656, 0, "3141592")]  # needle ~1K and ~6.6K tokens before the question
    prompts = [llm.tokenizer.encode(bench.prompt_text(n, d, code)) for n, d, code in cells]
    assert len(prompts[0]) < R.NEAR and R.BEYOND < len(prompts[1]) < 7200  # the distances the cells claim
    outs = llm.generate(prompts, SamplingParams(max_tokens=6))
    answers = [llm.tokenizer.decode(o.token_ids) for o in outs]
    assert answers[0].startswith(" 5550123.")  # inside the original window: found either way
    if setting == "yarn":
        assert answers[1].startswith(" 3141592.")
        # The MTP module drafts the token after next with its own induction head: while the model
        # copies (the needle's tail, then the prose after it) most drafts are right.
        assert llm.stats.draft_proposed >= 4 and llm.stats.draft_accepted / llm.stats.draft_proposed > 0.5
    else:  # beyond BEYOND without YaRN: the near tokens win and the code is lost
        assert "3141592" not in answers[1]
