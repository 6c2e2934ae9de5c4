"""MMLU (Hendrycks et al., 2021, "Measuring Massive Multitask Language Understanding").

57 subjects, 5-shot from each subject's dev split, answered by the loglikelihood of " A" .. " D"
after the prompt of lm-evaluation-harness's ``mmlu`` task, which is also the format of the
DeepSeek-V2/V3 reports::

    The following are multiple choice questions (with answers) about {subject}.\\n\\n
    {question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer: {letter}\\n\\n   (x shots)
    {question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer:

Separators are exact: the question is stripped, choices are not, shots are joined by a blank
line, and the answer letter is the continuation " X" (the space belongs to the continuation,
as the reference tokenizes it). Headline: accuracy over all questions (weighted by subject
size); also per subject, per category and the macro average over subjects.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dseval.data import DataSource, DatasetSpec, read_csv
from dseval.errors import UserError
from dseval.metrics import Summary, group_by, mean_stderr
from dseval.requests import LoglikelihoodRequest
from dseval.tasks.base import Doc, PromptContext, Sample, Task, register_task

LETTERS = ("A", "B", "C", "D")
DESCRIPTION = "The following are multiple choice questions (with answers) about {subject}.\n\n"
QUESTION = "{question}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:"
SHOT_SEPARATOR = "\n\n"

# The four categories of the MMLU paper's breakdown, by subject.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "STEM": (
        "abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
        "college_computer_science", "college_mathematics", "college_physics", "computer_security",
        "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
        "high_school_chemistry", "high_school_computer_science", "high_school_mathematics",
        "high_school_physics", "high_school_statistics", "machine_learning",
    ),
    "humanities": (
        "formal_logic", "high_school_european_history", "high_school_us_history", "high_school_world_history",
        "international_law", "jurisprudence", "logical_fallacies", "moral_disputes", "moral_scenarios",
        "philosophy", "prehistory", "professional_law", "world_religions",
    ),
    "social sciences": (
        "econometrics", "high_school_geography", "high_school_government_and_politics",
        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
        "human_sexuality", "professional_psychology", "public_relations", "security_studies", "sociology",
        "us_foreign_policy",
    ),
    "other": (
        "business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging",
        "management", "marketing", "medical_genetics", "miscellaneous", "nutrition",
        "professional_accounting", "professional_medicine", "virology",
    ),
}
SUBJECT_CATEGORY = {subject: category for category, subjects in CATEGORIES.items() for subject in subjects}
SUBJECTS = tuple(sorted(SUBJECT_CATEGORY))


def question_text(row: dict[str, Any]) -> str:
    a, b, c, d = row["choices"]
    return QUESTION.format(question=row["question"].strip(), a=a, b=b, c=c, d=d)


def few_shot_prompt(subject: str, shots: Sequence[dict[str, Any]], query: dict[str, Any]) -> str:
    """The reference prompt: description, k solved dev questions, then the open question."""
    blocks = [f"{question_text(shot)} {LETTERS[shot['answer']]}" for shot in shots]
    description = DESCRIPTION.format(subject=subject.replace("_", " "))
    return description + SHOT_SEPARATOR.join([*blocks, question_text(query)])


@register_task
class MMLU(Task):
    name = "mmlu"
    display_name = "MMLU"
    metric_label = "Acc."
    category = "English"
    version = "1"
    dataset = DatasetSpec(hub_id="cais/mmlu", hub_config="all", split="test", local="mmlu")
    request_type = "loglikelihood"
    default_shots = 5
    headline = "acc"
    breakdowns = ("subject", "category")

    def __init__(self) -> None:
        self._dev: dict[str, list[dict[str, Any]]] = {}

    def _rows(self, source: DataSource, split: str) -> dict[str, list[dict[str, Any]]]:
        """Rows per subject as {question, choices, answer index}, in file order."""
        if source.hub:
            rows = source.hub_rows(self.dataset.hub_id, "all", split)
            by_subject: dict[str, list[dict[str, Any]]] = {s: [] for s in SUBJECTS}
            for row in rows:
                by_subject[row["subject"]].append(row)
            return by_subject
        folder = source.require_local(self.dataset) / split
        out = {}
        for subject in SUBJECTS:
            path = folder / f"{subject}_{split}.csv"
            if not path.exists():
                source.require_local(self.dataset, f"{self.dataset.local}/{split}/{path.name}")
            out[subject] = [self._parse(path, line, row) for line, row in read_csv(path, 6)]
        return out

    @staticmethod
    def _parse(path: Path, line: int, row: list[str]) -> dict[str, Any]:
        question, a, b, c, d, answer = row
        if answer not in LETTERS:
            raise UserError(f"{path}:{line}: answer column is {answer!r}, expected one of A, B, C, D")
        return {"question": question, "choices": [a, b, c, d], "answer": LETTERS.index(answer)}

    def load(self, source: DataSource) -> list[Doc]:
        self._dev = self._rows(source, "dev")
        docs = []
        for subject, rows in self._rows(source, "test").items():
            for row in rows:
                fields = {"subject": subject, "category": SUBJECT_CATEGORY[subject]}
                docs.append(Doc(id=f"mmlu/test/{len(docs)}", data=row, target=row["answer"], group=subject, fields=fields))
        return docs

    def build(self, doc: Doc, ctx: PromptContext) -> tuple[str, list[LoglikelihoodRequest]]:
        subject = doc.fields["subject"]
        shots = self._dev[subject][: ctx.shots]
        prompt = ctx.as_prompt(few_shot_prompt(subject, shots, doc.data))
        # After a chat template the answer starts a fresh assistant turn, so no leading space.
        delimiter = "" if ctx.chat else " "
        return prompt, [LoglikelihoodRequest(prompt, delimiter + letter) for letter in LETTERS]

    def score(self, samples: Sequence[Sample]) -> list[dict[str, float]]:
        out = []
        for sample in samples:
            scores = sample.loglikelihoods or []
            best = max(range(len(scores)), key=scores.__getitem__)
            out.append({"acc": float(best == sample.target)})
        return out

    def summarize(self, samples: Sequence[Sample]) -> Summary:
        """Adds ``acc_macro``, the unweighted mean of the per-subject accuracies."""
        summary = super().summarize(samples)
        per_subject = [mean_stderr([s.metrics["acc"] for s in members])[0] for members in group_by(samples, "subject").values()]
        summary.metrics["acc_macro"], summary.stderr["acc_macro"] = mean_stderr(per_subject)
        return summary
