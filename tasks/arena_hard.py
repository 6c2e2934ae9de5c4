"""Arena-Hard-Auto (Li et al., 2024, "From Crowdsourced Data to High-Quality Benchmarks: Arena-Hard
and BenchBuilder Pipeline"; lmarena/arena-hard-auto), the DeepSeek-V3 report's "Arena-Hard".

* Data: v0.1 (default): 500 questions (``arena-hard/v0.1/question.jsonl``) and the gpt-4-0314
  baseline answers the judge compares against (``model_answer/gpt-4-0314.jsonl``). Task option
  ``version=v2.0`` takes the 750 v2.0 questions; their baseline answers are not in shared/data,
  so option ``baseline=PATH`` names a JSONL of baseline answers in the repository's current
  layout (``uid`` and ``messages``, the last one the assistant's ``{"answer": ...}``). The v2.0
  release judges its two categories against two baselines with another judge prompt; here one
  baseline file and the v0.1 procedure apply to all questions.
* Generation: the question as one user turn, greedy, up to 4096 new tokens (the repository's
  answer-generation settings).
* Judging (``--judge SPEC``): each answer is judged twice against the baseline's, once as
  Assistant B (baseline as A) and once as Assistant A, with the judge at temperature 0 and up to
  4096 tokens (the v0.1 judge settings). The judge prompt is dseval's own wording of the
  published procedure: answer the prompt yourself first, correct mistakes, weigh helpfulness,
  relevance, concision, creativity and missing information, and end with one label of the
  five-point scale ``[[A>>B]] [[A>B]] [[A=B]] [[B>A]] [[B>>A]]``.
* Scoring: a reply's verdict is its ``[[...]]`` label, taken only when the reply names exactly
  one distinct label, as the v0.1 code parses it; a reply without one is unparseable and gives
  no battle (the repository may ask the judge to continue the conversation; dseval does not). ``win_rate`` is the Bradley-Terry probability of beating the baseline with its bootstrap
  95% interval (:mod:`dseval.scoring.bradley_terry`); ``judged`` is the share of parsed verdicts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dseval.data import DatasetSpec, DataSource, local_rows, read_jsonl, require_fields
from dseval.errors import UserError
from dseval.judging import JudgedTask, verdicts
from dseval.metrics import Summary
from dseval.requests import ChatRequest, GenerateRequest
from dseval.scoring.bradley_terry import battle_outcomes, win_rate_vs_baseline
from dseval.scoring.sampling import chat_prompt
from dseval.records import Doc, Sample
from dseval.task import PromptContext, Task, register_task

JUDGE_SYSTEM = (
    "You are judging two AI assistants' replies to the same user prompt, to decide which reply serves the user better.\n\n"
    "Work in this order. First write your own reply to the prompt, before you assess either assistant. Then compare "
    "both replies with yours: point out every mistake or inaccuracy and say what is correct. Next, decide whether "
    "each reply is helpful (it does what the prompt asks; when the prompt is ambiguous or open to more than one "
    "reading, asking the user to clarify is more helpful than answering on a guess), relevant (every part bears on "
    "the prompt) and concise (clear, without padding). Where the prompt calls for it, weigh creativity and novelty "
    "too. Finally, name any important information a reply leaves out that would help the user.\n\n"
    "After your explanation, end with exactly one of these verdict labels:\n"
    "[[A>>B]] if Assistant A is significantly better,\n"
    "[[A>B]] if Assistant A is slightly better,\n"
    "[[A=B]] if the two are about equal,\n"
    "[[B>A]] if Assistant B is slightly better,\n"
    "[[B>>A]] if Assistant B is significantly better.\n"
    'For example: "My final verdict: [[A=B]]".'
)
JUDGE_PROMPT = (
    "[User prompt]\n{question}\n[End of user prompt]\n\n"
    "[Assistant A's reply]\n{answer_a}\n[End of Assistant A's reply]\n\n"
    "[Assistant B's reply]\n{answer_b}\n[End of Assistant B's reply]"
)
PATTERN = re.compile(r"\[\[([AB<>=]+)\]\]")
#: Label -> (Assistant A's result: 1 win, 0.5 tie, 0 loss; strong verdict). "A<B" is "B>A".
LABELS: dict[str, tuple[float, bool]] = {
    "A>>B": (1.0, True), "A>B": (1.0, False), "A=B": (0.5, False), "B>A": (0.0, False), "B>>A": (0.0, True),
    "A<<B": (0.0, True), "A<B": (0.0, False), "B=A": (0.5, False), "B<A": (1.0, False), "B<<A": (1.0, True),
}  # fmt: skip
VERSIONS = {"v0.1": "arena-hard/v0.1/model_answer/gpt-4-0314.jsonl", "v2.0": None}
GENERATION_TOKENS = 4096
JUDGE_TOKENS = 4096


def parse_verdict(reply: str) -> str | None:
    """The verdict label of a judge reply, or None when it has none or several distinct ones."""
    found = {m.strip("\n") for m in PATTERN.findall(reply) if m}
    return found.pop() if len(found) == 1 else None


def game_results(replies: Sequence[str]) -> tuple[list[float | None], list[bool], list[str | None]]:
    """The model's result in each game (even games: the model is Assistant B; odd: A), whether
    the verdict was strong, and the parsed labels."""
    results: list[float | None] = []
    strong: list[bool] = []
    labels = [parse_verdict(reply) for reply in replies]
    for game, label in enumerate(labels):
        result, is_strong = LABELS.get(label or "", (None, False))
        if result is not None and game % 2 == 0:
            result = 1.0 - result
        results.append(result)
        strong.append(is_strong)
    return results, strong, labels


@register_task
class ArenaHard(JudgedTask, Task):
    name = "arena_hard"
    display_name = "Arena-Hard"
    category = "English"
    version = "1"
    dataset = DatasetSpec(hub_id="(local only)", split="test", local="arena-hard/v0.1/question.jsonl")
    request_type = "generate"
    headline = "win_rate"
    options = ("version", "baseline")

    def __init__(self) -> None:
        self.release = "v0.1"
        self.baseline_file: str | None = None

    def configure(self, options: Mapping[str, str]) -> None:
        self.release = options.get("version", self.release)
        if self.release not in VERSIONS:
            raise UserError(f"arena_hard option version={self.release!r}: choose one of {', '.join(VERSIONS)}")
        self.baseline_file = options.get("baseline", self.baseline_file)
        if self.baseline_file is None and VERSIONS[self.release] is None:
            raise UserError(f"arena_hard version={self.release} ships no baseline answers: add option baseline=PATH "
                            "(a JSONL of uid + messages, e.g. the repository's model_answer/o3-mini-2025-01-31.jsonl)")

    def baselines(self, source: DataSource) -> dict[str, str]:
        if self.baseline_file:
            path = Path(self.baseline_file)
            if not path.is_file():
                raise UserError(f"arena_hard option baseline={path}: file not found")
            rows = read_jsonl(path)
            for number, row in enumerate(rows, 1):
                require_fields(row, ("uid", "messages"), f"{path}:{number}")
        else:
            rows = local_rows(source, self.dataset, ("uid", "messages"), VERSIONS[self.release])
        return {row["uid"]: _answer_text(row["messages"][-1]["content"]) for row in rows}

    def load(self, source: DataSource) -> list[Doc]:
        questions = local_rows(source, self.dataset, ("uid", "category", "prompt"), f"arena-hard/{self.release}/question.jsonl")
        baselines = self.baselines(source)
        missing = [row["uid"] for row in questions if row["uid"] not in baselines]
        if missing:
            raise UserError(f"arena_hard: the baseline answers lack {len(missing)} question(s), e.g. uid {missing[0]}")
        return [
            Doc(id=row["uid"], data=row, target={"question": row["prompt"], "baseline": baselines[row["uid"]]},
                fields={"category": row["category"]})
            for row in questions
        ]

    def build(self, doc: Doc, ctx: PromptContext) -> tuple[str, list[GenerateRequest]]:
        return chat_prompt(ctx.conversation(doc.data["prompt"]), doc.id, ctx, GENERATION_TOKENS)

    def judge_requests(self, sample: Sample) -> list[ChatRequest]:
        question, baseline = sample.target["question"], sample.target["baseline"]
        games = []
        for output in sample.outputs or []:
            games += [(baseline, output), (output, baseline)]
        return [
            ChatRequest(
                messages=({"role": "system", "content": JUDGE_SYSTEM},
                          {"role": "user", "content": JUDGE_PROMPT.format(question=question, answer_a=a, answer_b=b)}),
                max_tokens=JUDGE_TOKENS, doc_id=sample.id, sample_index=i,
            )
            for i, (a, b) in enumerate(games)
        ]  # fmt: skip

    def score(self, samples: Sequence[Sample]) -> list[dict[str, float]]:
        metrics = []
        for sample in samples:
            replies = verdicts(sample)
            if not replies:  # not judged yet
                metrics.append({})
                continue
            results, _, labels = game_results(replies)
            sample.details["labels"] = labels
            parsed = [r for r in results if r is not None]
            metrics.append({"judged": len(parsed) / len(results), **({"win_share": float(np.mean(parsed))} if parsed else {})})
        return metrics

    def summarize(self, samples: Sequence[Sample]) -> Summary:
        outcomes = [battle_outcomes(*game_results(verdicts(s) or [])[:2]) for s in samples]
        rate = win_rate_vs_baseline(np.concatenate(outcomes) if outcomes else np.array([]))
        summary = Summary(n=len(samples))
        summary.metrics = {"win_rate": rate.score, "win_rate_lower": rate.lower, "win_rate_upper": rate.upper}
        summary.stderr = {"win_rate": rate.stderr, "win_rate_lower": 0.0, "win_rate_upper": 0.0}
        summary.add("judged", [s.metrics["judged"] for s in samples if "judged" in s.metrics])
        return summary


def _answer_text(content: Any) -> str:
    """An answer message's text: the current layout's ``{"answer": ...}`` or a plain string."""
    return content["answer"] if isinstance(content, dict) else str(content)
