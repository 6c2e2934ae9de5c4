"""MTP draft acceptance and the speculative speed-up of the ``retriever`` preset on NIAH prompts.

    python bench/retriever_mtp.py [--lengths 2048 8192] [--new-tokens 32] [--device cpu|cuda]

Random weights cannot show either number (their MTP drafts are random); the retriever's MTP
module drafts the token after next with its own induction head (docs/retriever.md), so greedy
decoding of the copied needle and the prose after it can commit two tokens per step. Each prompt
is decoded greedily with and without ``speculative="mtp"``; the outputs must be identical, and
the table gives decode steps, draft acceptance and decode tokens/s. JSON: results/niah/retriever/mtp.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a checkout runs without an install (the device machine has none)
from dseval.engine.api import LLM, EngineConfig, SamplingParams  # noqa: E402
from dseval.tasks.niah import ANSWER_PREFIX, NEEDLE, QUESTION  # noqa: E402

HAYSTACK = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
            "There and back again.", "In 1987 the team is 21 points ahead.", "The score of the game is 4 to 3.")


def prompt_text(length: int, depth: int, code: str) -> str:
    """A NIAH prompt of about ``length`` tokens in the task's completion form (~7 tokens a sentence)."""
    rng = random.Random(f"{length}/{depth}")
    hay = [rng.choice(HAYSTACK) for _ in range(length // 7)]
    cut = len(hay) * depth // 100
    text = " ".join([*hay[:cut], NEEDLE.format(place="Oslo", code=code), *hay[cut:]])
    return text + f"\n\nQuestion: {QUESTION.format(place='Oslo')}\nAnswer: {ANSWER_PREFIX.format(place='Oslo')}"


def measure(model: str, device: str, lengths: list[int], new_tokens: int) -> list[dict]:
    rows, outputs = [], {}
    for spec in (None, "mtp"):
        llm = LLM(model, EngineConfig(speculative=spec), device=device)
        for length in lengths:
            ids = llm.tokenizer.encode(prompt_text(length, 50, "8675309"))
            llm.generate([ids], SamplingParams(max_tokens=2))  # warm-up: prefill kernels, graphs
            before = (llm.stats.decode_steps, llm.stats.draft_proposed, llm.stats.draft_accepted)
            t0 = time.perf_counter()
            out = llm.generate([ids], SamplingParams(max_tokens=new_tokens))[0]
            seconds = time.perf_counter() - t0
            steps, proposed, accepted = (a - b for a, b in zip(
                (llm.stats.decode_steps, llm.stats.draft_proposed, llm.stats.draft_accepted), before, strict=True))
            text = llm.tokenizer.decode(out.token_ids)
            if outputs.setdefault(length, text) != text:
                raise SystemExit(f"length {length}: MTP changed the greedy output: {outputs[length]!r} vs {text!r}")
            rows.append({"speculative": spec or "off", "prompt_tokens": len(ids), "new_tokens": len(out.token_ids),
                         "decode_steps": steps, "drafts": proposed, "accepted": accepted,
                         "acceptance": accepted / proposed if proposed else None, "seconds": seconds,
                         "retrieved": "8675309" in text})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="retriever")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "niah" / "retriever" / "mtp.json")
    args = parser.parse_args()
    rows = measure(args.model, args.device, args.lengths, args.new_tokens)
    print(f"{'spec':>5} {'prompt':>7} {'new':>4} {'steps':>5} {'accept':>7} {'s':>7}")
    for r in rows:
        acc = "-" if r["acceptance"] is None else f"{r['acceptance']:.0%}"
        print(f"{r['speculative']:>5} {r['prompt_tokens']:>7} {r['new_tokens']:>4} {r['decode_steps']:>5} {acc:>7} "
              f"{r['seconds']:>7.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "device": args.device, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
