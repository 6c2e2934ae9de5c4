"""The ``loglikelihood_rolling`` request kind on the tiny preset (real V3 tokenizer, random
weights): a whole text's log-probability equals a direct full-sequence forward pass, rolling
windows over a shortened context score every token once, and the ``perplexity`` task turns the
sums into bits per byte and perplexities by their definitions."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from dseval.backends.engine import EngineBackend
from test_engine_backend import direct_logprob

from dseval.backends.base import BackendOptions
from dseval.backends.registry import load_backend
from dseval.config import RunConfig
from dseval.requests import LoglikelihoodRollingRequest
from dseval.runner import evaluate

TEXT = "The quick brown fox jumps over the lazy dog. Then it sleeps, and the dog keeps watch until dawn."


@pytest.fixture(scope="module")
def backend() -> EngineBackend:
    torch.set_num_threads(1)
    b = load_backend("engine:tiny", BackendOptions(device="cpu", batch_size=16))
    assert isinstance(b, EngineBackend)
    return b


def _tokens(backend: EngineBackend, text: str) -> list[int]:
    return [backend.bos_id] + backend.tokenizer.encode(text, add_bos=False)


def test_whole_text_equals_a_direct_forward_pass(backend: EngineBackend) -> None:
    tokens = _tokens(backend, TEXT)
    (result,) = backend.loglikelihood_rolling([LoglikelihoodRollingRequest(TEXT)])
    expected, _ = direct_logprob(backend, tokens, 1)
    assert result.num_tokens == len(tokens) - 1
    assert result.logprob == pytest.approx(expected, rel=1e-4, abs=1e-3)


def test_rolling_windows_over_a_short_context(backend: EngineBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Context of 8 tokens: tokens 1-7 from [BOS, 1..6], then 8-14 from [7..13], ...; the last
    window is topped up with earlier tokens. Expected sums come from direct forward passes over
    those windows, built here from that definition."""
    limit = 8
    tokens = _tokens(backend, TEXT)
    expected, scored, start = 0.0, 0, 1
    while start < len(tokens):
        end = min(start + limit - 1, len(tokens))
        window = tokens[max(0, end - limit) : end]
        expected += direct_logprob(backend, window, start - max(0, end - limit))[0]
        scored += end - start
        start = end
    monkeypatch.setattr(backend.llm, "max_model_len", limit)
    (result,) = backend.loglikelihood_rolling([LoglikelihoodRollingRequest(TEXT)])
    assert result.num_tokens == scored == len(tokens) - 1
    assert result.logprob == pytest.approx(expected, rel=1e-4, abs=1e-3)
    empty, short = backend.loglikelihood_rolling([LoglikelihoodRollingRequest(""), LoglikelihoodRollingRequest("Hi")])
    assert (empty.logprob, empty.num_tokens) == (0.0, 0)
    assert short.logprob == pytest.approx(direct_logprob(backend, _tokens(backend, "Hi"), 1)[0], rel=1e-4, abs=1e-3)


def test_perplexity_task_aggregates_by_definition(backend: EngineBackend, tmp_path: Path) -> None:
    paragraphs = ["Première ligne: naïve café.", "Second paragraph, two sentences. Short one."]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(f"{paragraphs[0]}\n\n{paragraphs[1]}\n", encoding="utf-8")
    config = RunConfig(tasks=("perplexity",), model="tiny", out=tmp_path / "run",
                       task_args=(("", "path", str(corpus)), ("", "split", "paragraphs")))
    summary = evaluate(config, backend=backend)["tasks"]["perplexity"]
    logprob = sum(direct_logprob(backend, _tokens(backend, p if i == 0 else p + "\n"), 1)[0] for i, p in enumerate(paragraphs))
    n_bytes = sum(len((p if i == 0 else p + "\n").encode()) for i, p in enumerate(paragraphs))
    assert summary["n"] == 2 and n_bytes > sum(map(len, paragraphs))  # UTF-8 bytes, not characters
    assert summary["metrics"]["bits_per_byte"] == pytest.approx(-logprob / (n_bytes * math.log(2)), rel=1e-4)
    assert summary["metrics"]["word_perplexity"] == pytest.approx(math.exp(-logprob / 10), rel=1e-4)  # 4 + 6 words
    assert "bits_per_byte" not in summary["stderr"]


def test_replay_and_missing_path_are_one_line_errors(tmp_path: Path) -> None:
    replay = tmp_path / "r.jsonl"
    replay.write_text('{"id": "x", "output": "y"}\n')
    text = tmp_path / "t.txt"
    text.write_text("some text")
    for extra, message in (([f"--model=replay:{replay}", "--task-arg", f"path={text}"], "perplexity tasks need a model"),
                           (["--model=tiny"], "--task-arg path=FILE"),
                           (["--model=tiny", "--task-arg", "pth=x"], "--task-arg pth: none of the tasks perplexity has that option")):
        done = subprocess.run([sys.executable, "-m", "dseval", "run", "perplexity", *extra, "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
