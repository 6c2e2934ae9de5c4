"""Perplexity and bits per byte of a text file the user gives (``loglikelihood_rolling``).

``dseval run perplexity --task-arg path=corpus.txt --model SPEC`` scores every token of the
file with the model (the request kind :class:`~dseval.requests.LoglikelihoodRollingRequest`,
rolling windows over the model's context) and reports, as lm-evaluation-harness's ``wikitext``
task aggregates them, totals over all docs rather than means of per-doc ratios:

* ``bits_per_byte`` = -sum(log p) / (sum(UTF-8 bytes) * ln 2), the headline: it does not depend
  on the tokenizer, so models with different vocabularies compare;
* ``byte_perplexity`` = exp(-sum(log p) / sum(bytes));
* ``word_perplexity`` = exp(-sum(log p) / sum(words)), words being whitespace-separated runs.

``--task-arg split=file`` (default) scores the file as one document; ``paragraphs`` makes each
blank-line-separated block a document, ``lines`` each non-empty line (documents are scored
independently, each from BOS). Lower is better for all three. Per-doc values stay in
samples.jsonl; the summary's totals have no standard error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from dseval.data import DatasetSpec, DataSource
from dseval.errors import UserError
from dseval.metrics import Summary
from dseval.requests import LoglikelihoodRollingRequest
from dseval.records import Doc, Sample
from dseval.task import PromptContext, Task, register_task

SPLITS = ("file", "paragraphs", "lines")


def documents(text: str, split: str) -> list[str]:
    if split == "file":
        return [text] if text else []
    parts = re.split(r"\n\s*\n", text) if split == "paragraphs" else text.splitlines()
    return [p for p in parts if p.strip()]


def count_words(text: str) -> int:
    return len(text.split())


def rates(logprob: float, n_bytes: int, n_words: int) -> dict[str, float]:
    """The three measures from a total log-probability and the text's size."""
    nll = -logprob
    return {
        "bits_per_byte": nll / (n_bytes * math.log(2)),
        "byte_perplexity": math.exp(nll / n_bytes),
        "word_perplexity": math.exp(nll / n_words) if n_words else math.inf,
    }


@register_task
class Perplexity(Task):
    name = "perplexity"
    display_name = "Perplexity"
    metric_label = "bits per byte"
    category = "Language modeling"
    unit = "score"
    version = "1"
    dataset = DatasetSpec(hub_id="(a text file: --task-arg path=FILE)", split="-", local="-")
    request_type = "loglikelihood_rolling"
    headline = "bits_per_byte"
    options = ("path", "split")

    def __init__(self) -> None:
        self.path: Path | None = None
        self.split = "file"

    def configure(self, options: dict[str, str]) -> None:
        if "path" in options:
            self.path = Path(options["path"]).expanduser()
            if not self.path.is_file():
                raise UserError(f"--task-arg path={options['path']}: no such file")
        self.split = options.get("split", self.split)
        if self.split not in SPLITS:
            raise UserError(f"--task-arg split={self.split}: expected one of {', '.join(SPLITS)}")

    def load(self, source: DataSource) -> list[Doc]:
        if self.path is None:
            raise UserError("perplexity needs the text to score: --task-arg path=FILE")
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{self.path}: cannot read as UTF-8 text ({err})") from None
        docs = [Doc(id=f"perplexity/{i}", data={"text": part}, target={"bytes": len(part.encode("utf-8")), "words": count_words(part)})
                for i, part in enumerate(documents(text, self.split))]
        if not docs:
            raise UserError(f"{self.path}: no text to score")
        return docs

    def build(self, doc: Doc, ctx: PromptContext) -> tuple[str, list[LoglikelihoodRollingRequest]]:
        if ctx.chat:
            raise UserError("perplexity scores raw text; run it without --chat")
        return doc.data["text"], [LoglikelihoodRollingRequest(doc.data["text"])]

    def score(self, samples: Sequence[Sample]) -> list[dict[str, float]]:
        return [rates(sum(s.loglikelihoods or []), s.target["bytes"], s.target["words"]) for s in samples]

    def summarize(self, samples: Sequence[Sample]) -> Summary:
        """Totals over all docs (a long doc weighs by its length), without standard errors."""
        summary = super().summarize(samples)
        logprob = math.fsum(sum(s.loglikelihoods or []) for s in samples)
        totals = rates(logprob, sum(s.target["bytes"] for s in samples), sum(s.target["words"] for s in samples))
        for name, value in totals.items():
            summary.metrics[name] = value
            summary.stderr.pop(name, None)
        return summary
