"""The constructed ``retriever`` model: its rotary profiles hold their margins at every distance
to 128K, it copies a NIAH needle through the real engine (checkpoint folder, loader, paged MLA),
and the control (the same tensors without ``rope_scaling``) fails where the profile predicts.

CPU lengths only; the 32K-128K sweep is bench/retriever_niah.sh on a GPU (docs/retriever.md)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from dseval.engine.api import LLM, EngineConfig, SamplingParams
from dseval.engine.loading import retriever as R
from dseval.engine.loading.presets import retriever_config, retriever_plain_config
from dseval.tasks.niah import ANSWER_PREFIX, NEEDLE, QUESTION

# A haystack with the repeated phrases (" is", " the") and numbers that tempt a weak match.
SENTENCES = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
             "There and back again.", "In 1987 the team is 21 points ahead.", "The code of the game is 4 to 3.")


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


def _prompt(llm: LLM, length: int, depth: int, code: str) -> list[int]:
    """A NIAH prompt in the task's completion form, about ``length`` tokens, needle at ``depth`` %."""
    rng = random.Random(length + depth)
    hay = [rng.choice(SENTENCES) for _ in range(length // 7)]  # ~7 tokens a sentence
    cut = len(hay) * depth // 100
    text = " ".join([*hay[:cut], NEEDLE.format(place="Oslo", code=code), *hay[cut:]])
    text += f"\n\nQuestion: {QUESTION.format(place='Oslo')}\nAnswer: {ANSWER_PREFIX.format(place='Oslo')}"
    return llm.tokenizer.encode(text)


@pytest.mark.parametrize("setting", ["yarn", "plain"])
def test_needle_is_copied_and_the_control_fails_beyond_its_window(checkpoints: dict[str, Path], setting: str) -> None:
    llm = LLM(str(checkpoints[setting]), EngineConfig(), device="cpu")
    cells = [(2048, 50, "5550123"), (6656, 0, "3141592")]  # needle ~1K and ~6.6K tokens before the question
    prompts = [_prompt(llm, n, d, code) for n, d, code in cells]
    assert len(prompts[0]) < R.NEAR and R.BEYOND < len(prompts[1]) < 7200  # the distances the cells claim
    outs = llm.generate(prompts, SamplingParams(max_tokens=6))
    answers = [llm.tokenizer.decode(o.token_ids) for o in outs]
    assert answers[0].startswith(" 5550123.")  # inside the original window: found either way
    if setting == "yarn":
        assert answers[1].startswith(" 3141592.")
    else:  # beyond BEYOND without YaRN: the near tokens win and the code is lost
        assert "3141592" not in answers[1]
