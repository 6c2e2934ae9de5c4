"""MBPP (Austin et al., 2021, "Program Synthesis with Large Language Models").

Crowd-sourced Python problems, each with three ``assert`` tests. The prompt is the paper's
3-shot format, as lm-evaluation-harness's ``mbpp`` task and DeepSeek's reports use it, with
problems 2, 3 and 4 as the shots::

    You are an expert Python programmer, and here is your task: {text} Your code should pass
    these tests:\\n\\n{test 1}\\n{test 2}\\n{test 3}\\n[BEGIN]\\n{code}\\n[DONE]   (shots joined by a blank line)

and the open problem ending at ``[BEGIN]\\n``. Shot code is kept byte for byte as in the data
(its ``\\r\\n`` line ends included, as the reference prompt has them). Generation stops at
``[DONE]``; a fenced code block in the answer, if any, is taken as the code (the reference's
filter), which is also how chat answers are read. Chat models get each shot as a user turn (its
question, up to ``[BEGIN]``) answered by an assistant turn (``{code}\n[DONE]``), then the problem. pass@1 runs ``code + setup + tests``: the
setup comes *after* the solution because tasks 367 and 927 build trees from the solution's
``Node`` class.

* ``mbpp``: the full file's test split, task_ids 11-510 (500 problems), ids ``mbpp/test/<task_id>``.
* ``mbpp_sanitized``: the hand-verified subset (Austin et al., appendix), its 257 test-split
  problems, with the sanitized descriptions, tests and ``test_imports``; the shots are the
  sanitized versions of problems 2, 3, 4. Ids ``mbpp_sanitized/test/<task_id>``.
"""

from __future__ import annotations

from typing import Any

from dseval.data import DatasetSpec, DataSource, read_json, read_jsonl, require_fields
from dseval.errors import UserError
from dseval.prompting import take_shots
from dseval.records import Doc, Sample
from dseval.requests import GenerateRequest
from dseval.sandbox import Job
from dseval.scoring.code_exec import CodeExecution, extract_code
from dseval.scoring.sampling import chat_prompt, generate_requests
from dseval.task import PromptContext, Task, register_task

QUESTION = "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
SHOT_ANSWER = "{code}\n[DONE]"
SHOT_SEPARATOR = "\n\n"
STOP = ("[DONE]",)
SHOT_IDS = (2, 3, 4)
TEST_IDS = range(11, 511)


def question(row: dict[str, Any]) -> str:
    return QUESTION.format(text=row["text"], tests="\n".join(row["test_list"]))


def few_shot_prompt(shots: list[dict[str, Any]], row: dict[str, Any]) -> str:
    blocks = [question(shot) + SHOT_ANSWER.format(code=shot["code"]) for shot in shots]
    return SHOT_SEPARATOR.join([*blocks, question(row)])


def build_program(code: str, setup: str, tests: list[str]) -> Job:
    """Solution, then the problem's setup code, then its asserts (the reference's order); the
    asserts run apart from the program, where it cannot see or replace them."""
    return Job(program=code, setup=setup, tests="\n".join(tests) + "\n")


@register_task
class MBPP(CodeExecution, Task):
    name = "mbpp"
    display_name = "MBPP"
    metric_label = "Pass@1"
    category = "Code"
    version = "2"  # 2: chat prompts as multi-turn messages
    dataset = DatasetSpec(hub_id="google-research-datasets/mbpp", hub_config="full", split="test", local="mbpp/mbpp.jsonl")
    default_shots = 3
    max_tokens_base = 512
    max_tokens_chat = 2048
    fields_read = ("task_id", "text", "code", "test_list", "test_setup_code")

    def __init__(self) -> None:
        self._shots: list[dict[str, Any]] = []

    def rows(self, source: DataSource) -> list[dict[str, Any]]:
        """All problems as {task_id, text, code, test_list, setup}."""
        if source.hub:  # each Hub config has the splits prompt (1-10), test, validation, train
            rows = [r for split in ("prompt", "test") for r in source.hub_rows(self.dataset.hub_id, self.dataset.hub_config, split)]
        else:
            path = source.require_local(self.dataset)
            jsonl = path.suffix == ".jsonl"  # the full file is JSON Lines, the sanitized one a JSON list
            rows = read_jsonl(path) if jsonl else read_json(path)
            for number, row in enumerate(rows, 1):
                require_fields(row, self.fields_read, f"{path}:{number}" if jsonl else f"{path}: problem #{number}")
        return [self.normalize(row) for row in rows]

    @staticmethod
    def normalize(row: dict[str, Any]) -> dict[str, Any]:
        """A row of this variant's file with the ``text`` and ``setup`` the prompt and tests use."""
        return {**row, "setup": row["test_setup_code"]}

    def load(self, source: DataSource) -> list[Doc]:
        by_id = {row["task_id"]: row for row in self.rows(source)}
        self._shots = [by_id[i] for i in SHOT_IDS]
        return [
            Doc(
                id=f"{self.name}/test/{task_id}",
                data=by_id[task_id],
                target={"setup": by_id[task_id]["setup"], "tests": by_id[task_id]["test_list"]},
            )
            for task_id in TEST_IDS
            if task_id in by_id
        ]

    def build(self, doc: Doc, ctx: PromptContext) -> tuple[str, list[GenerateRequest]]:
        shots = take_shots(self._shots, ctx.shots, f"{self.name}'s prompt (task_ids 2-4)")
        if ctx.chat:
            turns = [(question(shot), SHOT_ANSWER.format(code=shot["code"])) for shot in shots]
            return chat_prompt(ctx.conversation(question(doc.data), shots=turns), doc.id, ctx, self.max_tokens_chat, STOP)
        prompt = few_shot_prompt(shots, doc.data)
        return prompt, generate_requests(prompt, doc.id, ctx, STOP, self.max_tokens_base)

    def program(self, sample: Sample, output: str) -> Job:
        return build_program(extract_code(output), sample.target["setup"], sample.target["tests"])


@register_task
class MBPPSanitized(MBPP):
    name = "mbpp_sanitized"
    display_name = "MBPP-sanitized"
    dataset = DatasetSpec(hub_id="google-research-datasets/mbpp", hub_config="sanitized", split="test", local="mbpp/sanitized-mbpp.json")
    fields_read = ("task_id", "prompt", "code", "test_list", "test_imports")

    @staticmethod
    def normalize(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "text": row["prompt"], "setup": "\n".join(row["test_imports"])}
