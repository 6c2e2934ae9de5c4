"""Encoding a context once for all its continuations (``Tokenizer.encode_extended``) must give
exactly the ids of encoding each joined text whole, as lm-evaluation-harness does: scores are
compared against it token for token."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import load_task
from dseval.engine.loading.checkpoint_writer import default_tokenizer_dir
from dseval.engine.loading.tokenizer import Tokenizer
from dseval.requests import LoglikelihoodRequest
from dseval.task import PromptContext

HEADS = [
    "Question: 1+1?\nAnswer:",
    "Answers follow.\nAnswer",             # the tail "s" merges with the head's last token
    "count\n123 apples",                   # a digit run starts the last line
    "mixed\n中文字符",                      # a CJK run starts it
    "quote\n'tis the season",              # punctuation + letters (one pre-token in the regex)
    "special\n<｜User｜>hi",               # an added token starts it
    "windows\r\nline",
    "indent\n   spaced line",              # whitespace starts it: no cut
    "trailing\n ",                         # ... which a tail's newline would join ("\n \n")
    "tab\n\tcode",
    "no newline at all",
    "ends with newline\n",
    "\nX",
    "accents\nété",
    "money\n$100 and 5%",
    "dots\n...and more",
    "",
]
TAILS = [" A", "s", "\n", "  B", "123", "'s", "\r\nX", "<｜end▁of▁sentence｜>", "中文", " ", "!!", "é", "\n\n  x"]


@pytest.fixture(scope="module")
def v3() -> Tokenizer:
    return Tokenizer.from_dir(default_tokenizer_dir())


def check_joined(tok: Tokenizer, heads: list[str], tails: list[tuple[int, str]]) -> None:
    head_ids, joined = tok.encode_extended(heads, tails)
    assert head_ids == tok.encode_batch(heads)
    assert joined == tok.encode_batch([heads[i] + tail for i, tail in tails])


def test_v3_tokenizer_takes_the_line_cut(v3: Tokenizer) -> None:
    assert v3.line_safe  # else the fast path is never exercised below


@pytest.mark.parametrize("line_safe", [True, False])
def test_joined_ids_equal_the_whole_texts(v3: Tokenizer, line_safe: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(v3, "line_safe", line_safe)
    check_joined(v3, HEADS, [(i, tail) for i in range(len(HEADS)) for tail in TAILS])


def test_real_prompts_join_exactly(v3: Tokenizer, data_dir: Path) -> None:
    """MMLU's choices after their 5-shot prompts, and other tasks' prompts followed by text."""
    heads: dict[str, int] = {}
    tails: list[tuple[int, str]] = []
    for name in ("mmlu", "bbh", "gsm8k", "drop", "math500", "mbpp"):
        task, docs = load_task(name, data_dir)
        ctx = PromptContext(shots=task.default_shots, chat=False, seed=1234, samples=1, render_chat=str)
        for doc in docs[:: max(1, len(docs) // 150)]:
            for request in task.build(doc, ctx)[1]:
                if isinstance(request, LoglikelihoodRequest):
                    head, tail = request.context, request.continuation
                else:
                    head, tail = request.prompt, " The answer is 42.\n"
                tails.append((heads.setdefault(head, len(heads)), tail))
    assert len(tails) > 1000
    check_joined(v3, list(heads), tails)


@pytest.mark.parametrize("edit", [
    lambda cfg: cfg["pre_tokenizer"]["pretokenizers"].pop(0),                        # another splitting
    lambda cfg: cfg.__setitem__("normalizer", {"type": "NFKC"}),                      # text changes first
    lambda cfg: cfg["added_tokens"][0].__setitem__("lstrip", True),                   # absorbs a newline
    lambda cfg: cfg["added_tokens"].append({**cfg["added_tokens"][0], "id": 999999, "content": "a\nb"}),
])
def test_other_tokenizers_encode_whole(tmp_path: Path, edit) -> None:
    source = default_tokenizer_dir()
    cfg = json.loads((source / "tokenizer.json").read_text())
    edit(cfg)
    (tmp_path / "tokenizer.json").write_text(json.dumps(cfg))
    shutil.copyfile(source / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    tok = Tokenizer.from_dir(tmp_path)
    assert not tok.line_safe
    check_joined(tok, HEADS[:4], [(i, tail) for i in range(4) for tail in TAILS[:4]])


def test_fixed_pieces_join_to_the_decoded_text(v3: Tokenizer) -> None:
    """Where every token has a fixed piece, the pieces joined are the decoded text, whatever
    precedes them; tokens that carry part of a character have none."""
    import random

    rng = random.Random(5)
    texts = HEADS + [h + t for h in HEADS[:4] for t in TAILS] + ["价格是 100 元。∑ x² ≤ 🙂𠀋 naïve"]
    streams = [v3.encode(t) for t in texts] + [[rng.randrange(v3.vocab_size) for _ in range(40)] for _ in range(50)]
    joined = 0
    for ids in streams:
        for start in range(0, len(ids), 7):  # a piece must not depend on the tokens before it
            pieces = [v3.piece(i) for i in ids[start:]]
            if None not in pieces:
                assert "".join(pieces) == v3.decode(ids[start:])
                joined += 1
    split = v3.encode("🙂")
    assert len(split) > 1 and all(v3.piece(i) is None for i in split), "a character over several tokens"
    assert joined > 50


def test_no_fixed_piece_under_a_decoder_that_edits_the_text(tmp_path: Path) -> None:
    """A leading-space marker (Metaspace) reads differently at the start: no token's text is
    fixed there, so stop strings are checked on every token."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    hf = HFTokenizer(models.WordLevel({"▁a": 0, "▁b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Metaspace()
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.decode([0]) == "a" and tok.decode([1, 0]) == "b a"
    assert not tok.byte_level and tok.piece(0) is None and tok.piece(1) is None
