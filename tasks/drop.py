"""DROP (Dua et al., 2019, "DROP: A Reading Comprehension Benchmark Requiring Discrete
Reasoning Over Paragraphs"), 3-shot, headline F1.

Data: the dev set as OpenAI's simple-evals packages it (``drop_v0_dev.jsonl.gz``, 9,536
questions): ``context`` is "Passage: ...\\nQuestion: ...\\nAnswer:", ``completion`` the gold
answer with a leading space, ``ref_text`` every accepted gold answer joined by ``|``. Ids are
``drop/dev/<line number from 0>``.

Shots: simple-evals draws 3 random *train* questions per test question. Only the dev file is
available offline, so each question gets 3 dev questions drawn with a fixed seed keyed by its
id, never from its own passage, and from 3 different passages; all 9,536 questions are
evaluated. The draw is independent of ``--seed``, so prompts are identical across runs.

Prompts:

* Base models: the shots as "{context} {answer}" blocks joined by a blank line, then the open
  context; the answer is the first line generated. Generation stops at a newline only, never
  at ".", which would cut decimal answers such as "74.3" (a defect of other harnesses).
* Chat models: simple-evals' prompt, byte for byte (its whitespace included): instructions,
  "# Examples", "---"-separated shots, "# Your Task", and the request to end with a line
  "Answer: $ANSWER"; the answer is the first such line (simple-evals' pattern), else the
  whole response.

Scoring: the official EM and F1 (:mod:`dseval.scoring.drop_f1`), maximum over the golds.
The file stores each gold as one string, so a multi-span gold is scored as one span, exactly
as simple-evals scores this file.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from typing import Any

from dseval.data import DatasetSpec, DataSource, read_jsonl, require_fields
from dseval.errors import UserError
from dseval.records import Doc, Sample
from dseval.requests import GenerateRequest
from dseval.scoring.drop_f1 import best_em_f1
from dseval.scoring.sampling import chat_prompt, generate_requests
from dseval.task import PromptContext, Task, register_task

BASE_SHOT_SEPARATOR = "\n\n"
BASE_STOP = ("\n",)
CHAT_INTRO = "You will be asked to read a passage and answer a question. Some examples of passages and Q&A are provided below.\n\n# Examples"
CHAT_SHOT = "\n---\n{context} {completion}\n"
CHAT_TASK = (
    "\n# Your Task\n\n---\n{context} \n\n"
    'Think step by step, then write a line of the form "Answer: $ANSWER" at the end of your response.\n'
    "                    "
)
ANSWER_LINE = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")
SHOT_SEED = "drop-dev-shots/v1"


def passage_of(context: str) -> str:
    return context.split("\nQuestion:", 1)[0]


def draw_shots(doc_index: int, doc_id: str, passages: list[str], k: int) -> list[int]:
    """k question indices for one doc: seeded by its id, distinct passages, none its own."""
    rng = random.Random(int.from_bytes(hashlib.sha256(f"{SHOT_SEED}/{doc_id}".encode()).digest()[:8], "little"))
    chosen: list[int] = []
    used = {passages[doc_index]}
    while len(chosen) < k:
        candidate = rng.randrange(len(passages))
        if passages[candidate] not in used:
            chosen.append(candidate)
            used.add(passages[candidate])
    return chosen


def extract_answer(output: str, chat: bool) -> str:
    """Base: the first non-empty line (the stop string ends it; backends that ignore stops
    still get only the answer). Chat: simple-evals' first "Answer:" line, else everything."""
    if not chat:
        return output.lstrip().split("\n", 1)[0].strip()
    match = ANSWER_LINE.search(output)
    return match.group(1) if match else output


@register_task
class Drop(Task):
    name = "drop"
    display_name = "DROP"
    metric_label = "F1"
    category = "English"
    version = "1"
    # simple-evals' packaging is not on the Hub (ucinlp/drop is the original format, other ids)
    dataset = DatasetSpec(hub_id="simple-evals drop_v0_dev (local only)", split="dev", local="drop/drop_v0_dev.jsonl.gz")
    request_type = "generate"
    default_shots = 3
    headline = "f1"
    max_tokens_base = 64
    max_tokens_chat = 2048
    max_shots = 10

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []

    def load(self, source: DataSource) -> list[Doc]:
        if source.hub:
            raise UserError("drop reads simple-evals' drop_v0_dev.jsonl.gz, which is not on the Hub: pass --data-dir DIR holding drop/")
        path = source.require_local(self.dataset)
        self._rows = read_jsonl(path)
        for number, row in enumerate(self._rows, 1):
            require_fields(row, ("context", "completion", "ref_text"), f"{path}:{number}")
        passages = [passage_of(row["context"]) for row in self._rows]
        docs = []
        for index, row in enumerate(self._rows):
            doc_id = f"drop/dev/{index}"
            shots = draw_shots(index, doc_id, passages, self.max_shots)
            docs.append(Doc(id=doc_id, data={**row, "shots": shots}, target=row["ref_text"].split("|")))
        return docs

    def build(self, doc: Doc, ctx: PromptContext) -> tuple[str, list[GenerateRequest]]:
        if ctx.shots > self.max_shots:
            raise UserError(f"drop draws at most {self.max_shots} shots per question; --shots {ctx.shots} is too many")
        shots = [self._rows[i] for i in doc.data["shots"][: ctx.shots]]
        if ctx.chat:
            text = CHAT_INTRO + "".join(CHAT_SHOT.format(**shot) for shot in shots) + CHAT_TASK.format(context=doc.data["context"])
            return chat_prompt(ctx.conversation(text), doc.id, ctx, self.max_tokens_chat)
        blocks = [shot["context"] + shot["completion"] for shot in shots]
        prompt = BASE_SHOT_SEPARATOR.join([*blocks, doc.data["context"]])
        return prompt, generate_requests(prompt, doc.id, ctx, BASE_STOP, self.max_tokens_base)

    def score(self, samples: Sequence[Sample]) -> list[dict[str, float]]:
        """EM and F1 of each output against the golds, averaged over a doc's outputs."""
        metrics = []
        for sample in samples:
            answers = [extract_answer(output, sample.chat) for output in sample.outputs or []]
            scores = [best_em_f1(answer, sample.target) for answer in answers]
            sample.details["extracted"] = answers
            n = max(len(scores), 1)
            metrics.append({"em": sum(em for em, _ in scores) / n, "f1": sum(f1 for _, f1 in scores) / n})
        return metrics
