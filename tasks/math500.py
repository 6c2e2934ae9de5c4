"""MATH (Hendrycks et al., 2021, "Measuring Mathematical Problem Solving With the MATH Dataset").

Two tasks share everything here:

* ``math500``: the 500-problem test subset of Lightman et al. (2023, "Let's Verify Step by
  Step", openai/prm800k), the MATH-500 of the DeepSeek-V3 report; ids are the dataset's own
  ``unique_id`` (``test/precalculus/807.json``), golds its ``answer`` field.
* ``math``: the full 5,000-problem MATH test split, in the file's ``idx`` order; ids
  ``math/test/<idx>``, golds the last ``\\boxed{}`` of each reference solution.

Prompts:

* Base models: the Minerva 4-shot prompt (Lewkowycz et al., 2022) exactly as
  lm-evaluation-harness's ``minerva_math`` builds it: four worked "Problem:/Solution:"
  exemplars ending in "Final Answer: The final answer is $X$. I hope it is correct.", a blank
  line between blocks, and the open problem ending at "Solution:"; generation stops at
  "Problem:".
* Chat models: the problem followed by DeepSeek's instruction to reason step by step and put
  the final answer in ``\\boxed{}``.

Scoring (:mod:`dseval.scoring.math_answers`): the last ``\\boxed{}`` or "final answer is"
sentence, judged equal to the gold by math-verify or by Minerva-normalized string equality.
Accuracy overall, per level (1-5) and per subject.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from dseval.data import DatasetSpec, DataSource
from dseval.errors import UserError
from dseval.prompting import take_shots
from dseval.records import Doc, Sample
from dseval.requests import GenerateRequest
from dseval.scoring.math_answers import answers_match, extract_answer, last_boxed
from dseval.scoring.sampling import chat_prompt, generate_requests
from dseval.task import PromptContext, Task, register_task

# The four Minerva exemplars (problem, solution), verbatim from the reference prompt.
MINERVA_SHOTS: tuple[tuple[str, str], ...] = (
    (
        "Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.}",
        "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so $x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\\boxed{[2,5)}$.\nFinal Answer: The final answer is $[2,5)$. I hope it is correct.",
    ),
    (
        "If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$",
        "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = (2)(12) = \\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct.",
    ),
    (
        "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, how many times must Terrell lift them in order to lift the same total weight?",
        "If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot 12\\cdot20=480$ pounds of weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a total of $2\\cdot15\\cdot n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve for $n$:\n\\begin{align*}\n30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}\nFinal Answer: The final answer is $16$. I hope it is correct.",
    ),
    (
        "If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}has a solution $(x, y)$ where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ assuming $b$ is nonzero.",
        "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$Since we also know that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\nFinal Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.",
    ),
)
SHOT = "Problem:\n{problem}\n\nSolution:\n{solution}"
QUESTION = "Problem:\n{problem}\n\nSolution:"
SHOT_SEPARATOR = "\n\n"
BASE_STOP = ("Problem:",)
CHAT_PROMPT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


def minerva_prompt(problem: str, shots: int) -> str:
    blocks = [SHOT.format(problem=p, solution=s) for p, s in take_shots(MINERVA_SHOTS, shots, "the Minerva prompt")]
    return SHOT_SEPARATOR.join([*blocks, QUESTION.format(problem=problem)])


@register_task
class Math500(Task):
    name = "math500"
    display_name = "MATH-500"
    metric_label = "EM"
    category = "Math"
    version = "1"
    dataset = DatasetSpec(hub_id="HuggingFaceH4/MATH-500", split="test", local="math500/test.jsonl")
    request_type = "generate"
    default_shots = 4
    headline = "acc"
    breakdowns = ("level", "subject")
    max_tokens_base = 1024
    max_tokens_chat = 4096
    fields_read: tuple[str, ...] = ("problem", "answer", "subject", "level", "unique_id")

    def rows(self, source: DataSource) -> list[dict[str, Any]]:
        return source.jsonl_rows(self.dataset, self.fields_read)

    def to_doc(self, row: dict[str, Any]) -> Doc:
        return Doc(id=row["unique_id"], data=row, target=row["answer"], fields={"level": row["level"], "subject": row["subject"]})

    def load(self, source: DataSource) -> list[Doc]:
        return [self.to_doc(row) for row in self.rows(source)]

    def build(self, doc: Doc, ctx: PromptContext) -> tuple[str, list[GenerateRequest]]:
        problem = doc.data["problem"]
        if ctx.chat:
            return chat_prompt(ctx.conversation(CHAT_PROMPT.format(problem=problem)), doc.id, ctx, self.max_tokens_chat)
        prompt = minerva_prompt(problem, ctx.shots)
        return prompt, generate_requests(prompt, doc.id, ctx, BASE_STOP, self.max_tokens_base)

    def score(self, samples: Sequence[Sample]) -> list[dict[str, float]]:
        """acc = share of a doc's outputs whose final answer equals the gold (1/0 when greedy)."""
        extracted = [[extract_answer(output) for output in sample.outputs or []] for sample in samples]
        pairs = [(sample.target, answer) for sample, answers in zip(samples, extracted) for answer in answers]
        verdicts = iter(answers_match(pairs))
        metrics = []
        for sample, answers in zip(samples, extracted):
            correct = [next(verdicts) for _ in answers]
            sample.details["extracted"] = answers
            metrics.append({"acc": sum(correct) / len(correct) if correct else 0.0})
        return metrics


@register_task
class Math(Math500):
    name = "math"
    display_name = "MATH"
    dataset = DatasetSpec(hub_id="EleutherAI/hendrycks_math", split="test", local="math/test.jsonl")
    fields_read = ("problem", "solution", "level", "type", "idx")

    def rows(self, source: DataSource) -> list[dict[str, Any]]:
        if source.hub:  # the Hub copy is split by subject and has no idx: number in order
            configs = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory", "prealgebra", "precalculus")
            rows = [row for config in configs for row in source.hub_rows(self.dataset.hub_id, config, "test")]
            return [{**row, "idx": i} for i, row in enumerate(rows)]
        return super().rows(source)

    def to_doc(self, row: dict[str, Any]) -> Doc:
        boxed = last_boxed(row["solution"])
        if boxed is None:
            raise UserError(f"MATH problem idx {row['idx']}: reference solution has no \\boxed answer")
        level = re.fullmatch(r"Level (\d)", row["level"])
        fields = {"level": int(level.group(1)) if level else row["level"], "subject": row["type"]}
        return Doc(id=f"math/test/{row['idx']}", data=row, target=boxed[1], fields=fields)
