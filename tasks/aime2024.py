"""AIME 2024 (the 30 problems of the 2024 American Invitational Mathematics Examination I and II),
as the DeepSeek-V3 report evaluates its chat model ("AIME 2024 (Pass@1)").

* Data: ``aime2024/test.jsonl`` (the Qwen2.5-Math evaluation copy); ids ``aime2024/<id>``.
* Prompt: a chat conversation of one user turn, the problem followed by DeepSeek's instruction to
  reason step by step and box the final answer (the MATH-500 chat prompt).
* Protocol (the report's): temperature 0.7, 16 samples per problem; the headline ``pass@1`` is the
  mean over problems of each problem's share of correct samples, with its standard error over
  problems. ``--samples N`` (N > 1) replaces the 16 draws with the run's own sampling.
* Scoring: every AIME answer is an integer 0-999, so the last ``\\boxed{}`` (or "final answer is")
  of an output is normalized as in MATH and compared with the gold as an integer ("025" = "25");
  an output that states no integer answer is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dseval.data import DatasetSpec, DataSource, local_rows
from dseval.requests import GenerateRequest
from dseval.scoring.math_answers import extract_answer, normalize_answer
from dseval.scoring.sampling import SamplingProtocol, chat_prompt
from dseval.records import Doc, Sample
from dseval.task import PromptContext, Task, register_task
from dseval.tasks.math500 import CHAT_PROMPT

PROTOCOL = SamplingProtocol(samples=16, temperature=0.7)
_INTEGER = re.compile(r"[+-]?\d+")


def integer_answer(output: str) -> int | None:
    """The output's final answer as an integer, or None when it is not one."""
    answer = extract_answer(output)
    if answer is None:
        return None
    normalized = normalize_answer(answer).strip().rstrip(".")
    return int(normalized) if _INTEGER.fullmatch(normalized) else None


@register_task
class Aime2024(Task):
    name = "aime2024"
    display_name = "AIME 2024"
    metric_label = "Pass@1"
    category = "Math"
    version = "1"
    dataset = DatasetSpec(hub_id="(local only)", split="test", local="aime2024/test.jsonl")
    request_type = "generate"
    headline = "pass@1"
    max_tokens = 8192

    def load(self, source: DataSource) -> list[Doc]:
        rows = local_rows(source, self.dataset, ("id", "problem", "answer"))
        return [Doc(id=f"aime2024/{row['id']}", data=row, target=str(row["answer"])) for row in rows]

    def build(self, doc: Doc, ctx: PromptContext) -> tuple[str, list[GenerateRequest]]:
        return chat_prompt(ctx.conversation(CHAT_PROMPT.format(problem=doc.data["problem"])), doc.id, ctx, self.max_tokens,
                           protocol=PROTOCOL)

    def score(self, samples: Sequence[Sample]) -> list[dict[str, float]]:
        metrics = []
        for sample in samples:
            answers = [integer_answer(output) for output in sample.outputs or []]
            sample.details["extracted"] = answers
            correct = [answer == int(sample.target) for answer in answers]
            metrics.append({"pass@1": sum(correct) / len(correct) if correct else 0.0})
        return metrics
