"""LiveCodeBench (Jain et al., 2024, "LiveCodeBench: Holistic and Contamination Free Evaluation
of Large Language Models for Code"), code generation.

Contest problems (AtCoder, LeetCode, Codeforces) dated by contest, so a model is scored only on
problems published after its training data: ``--since/--until`` (YYYY-MM-DD, whole days, both
inclusive) pick the window; the DeepSeek-V3 report used 2024-08-01..2024-11-30. The official
loader compares with midnight of ``until`` and so drops contests held later that day (two
LeetCode problems of 2024-11-30 18:30); whole days match the report's "August to November". Problems come from a JSON Lines file (``--task-arg path=FILE``, default
``<data-dir>/livecodebench/livecodebench_v5.jsonl``) in either of two layouts:

* the official release (``livecodebench/code_generation_lite`` ``test*.jsonl``): fields
  ``question_id``, ``contest_date``, ``question_content``, ``starter_code``,
  ``public_test_cases`` (JSON), ``private_test_cases`` (JSON, or base64 of zlib of a pickled
  JSON string) and ``metadata`` (JSON with ``func_name``);
* the Qwen team's prompt file (shared/data): the rendered prompt, from which the statement and
  starter code are read back, and tests from ``livecodebench/tests/<fname>`` beside it
  (``{"input_output": {"inputs", "outputs", "fn_name"}}``) when present.

A problem without tests cannot be scored, so loading stops with an error naming how many lack
them. Prompts are the official harness's (``lcb_runner/prompts/code_generation.py``):

* base models: ``get_base_model_question_template_answer``, one worked example of the same kind
  (``### Question\\n...\\n\\n[### Starter Code\\n...\\n\\n]### Answer\\n\\n{code}\\n\\n``) and the
  open problem ending at ``### Answer\\n\\n``; generation stops at "###" (the official default).
  The report says 3-shot, but the official base prompt has one example and DeepSeek's three are
  not published, so ``--shots`` is 0 or 1 here.
* chat models: the generic system message and ``### Question:/### Format:/### Answer:`` turn.

Scoring: the code (a fenced block if the answer has one) runs in the sandbox against every test
with LiveCodeBench's comparison rules, which run in the sandbox's checker process, never beside
the program (:func:`dseval.scoring.checks.check_io_tests`): a functional solution is the program
(after the official import prelude) and the checker calls it through the sandbox's link; a stdin
solution is wrapped so that the checker hands it one test's input at a time and gets back its
printout. pass@1.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import zlib
from datetime import date, datetime
from pathlib import Path
from typing import Any, ClassVar

from dseval.data import DatasetSpec, DataSource, read_jsonl, require_fields
from dseval.errors import UserError
from dseval.prompting import take_shots
from dseval.requests import GenerateRequest
from dseval.sandbox import Job
from dseval.scoring import checks
from dseval.scoring.code_exec import CHECKS_SOURCE, CodeExecution, checked_job, extract_code
from dseval.scoring.sampling import chat_prompt, generate_requests
from dseval.records import Doc, Sample
from dseval.task import PromptContext, Task, register_task
from dseval.tasks.livecodebench_examples import FUNCTIONAL_EXAMPLE, STDIN_EXAMPLE

SYSTEM_MESSAGE = ("You are an expert Python programmer. You will be given a question (problem specification) and will generate "
                  "a correct Python program that matches the specification and passes all tests. You will NOT return anything "
                  "except for the program.")
WITH_STARTER = "You will use the following starter code to write the solution to the problem and enclose your code within delimiters."
WITHOUT_STARTER = "Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test on the sample inputs). Enclose your code within delimiters as follows."
BASE_STOP = ("###",)
#: Imports LeetCode-style solutions take for granted (``List``, ``defaultdict``, ``inf``...),
#: the official ``import_string`` put before every functional solution.
PRELUDE = "".join(f"from {m} import *\n" for m in (
    "string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random", "statistics",
    "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing")) + "".join(
    f"import {m}\n" for m in ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math",
                              "random", "statistics", "itertools", "functools", "operator", "io", "sys", "json")
) + "sys.setrecursionlimit(50000)\n"  # fmt: skip
# How the Qwen prompt file wraps a statement: its fixed opening, and where the statement ends.
QWEN_OPENING = "You will be given a question (problem specification) and will generate a correct Python program that matches the specification and passes all tests.\n\nQuestion: "
QWEN_STARTER = f"\n\n{WITH_STARTER}\n```python\n"


def base_prompt(content: str, starter: str, shots: int) -> str:
    """The official base-model prompt: ``shots`` (0 or 1) worked example, then the problem."""
    def block(question: str, sample_code: str, answer: str) -> str:
        text = f"### Question\n{question}\n\n"
        if starter:
            text += f"### Starter Code\n{sample_code}\n\n"
        return text + "### Answer\n\n" + (f"{answer}\n\n" if answer else "")

    examples = take_shots([FUNCTIONAL_EXAMPLE if starter else STDIN_EXAMPLE], shots, "livecodebench's official base prompt")
    return "".join(block(e["question"], e.get("sample_code", ""), e["answer"]) for e in examples) + block(content, starter, "")


def chat_turn(content: str, starter: str) -> str:
    """The official generic user turn (its system message is :data:`SYSTEM_MESSAGE`)."""
    if starter:
        fmt = f"### Format: {WITH_STARTER}\n```python\n{starter}\n```\n\n"
    else:
        fmt = f"### Format: {WITHOUT_STARTER}\n```python\n# YOUR CODE HERE\n```\n\n"
    return f"### Question:\n{content}\n\n{fmt}### Answer: (use the provided format with backticks)\n\n"


class _StringsOnly(pickle.Unpickler):
    """The release pickles a JSON string; refusing every class keeps a crafted file from
    running code while it is decoded."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"private tests may only hold a string, found {module}.{name}")


def decode_tests(field: str | list[dict[str, str]]) -> list[dict[str, str]]:
    """A test-case field of the release: a list, its JSON text, or base64(zlib(pickle(JSON)))."""
    if isinstance(field, list):
        return field
    try:
        return json.loads(field)
    except json.JSONDecodeError:
        packed = _StringsOnly(io.BytesIO(zlib.decompress(base64.b64decode(field)))).load()
        return json.loads(packed)


def from_qwen_prompt(prompt: str, where: str) -> tuple[str, str]:
    """(statement, starter code) read back from a Qwen-format prompt."""
    if not prompt.startswith(QWEN_OPENING):
        raise UserError(f"{where}: 'prompt' does not start with the LiveCodeBench question template")
    body = prompt[len(QWEN_OPENING):]
    if QWEN_STARTER in body:
        content, starter = body.split(QWEN_STARTER, 1)
        return content, starter.rsplit("\n```", 1)[0]
    content, sep, _ = body.partition(f"\n\n{WITHOUT_STARTER}")
    if not sep:
        raise UserError(f"{where}: 'prompt' has neither starter code nor the stdin instruction")
    return content, ""


def parse_date(value: str, option: str) -> date:
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise UserError(f"--{option} {value!r}: expected a date as YYYY-MM-DD") from None


@register_task
class LiveCodeBench(CodeExecution, Task):
    name = "livecodebench"
    display_name = "LiveCodeBench"
    metric_label = "Pass@1"
    category = "Code"
    version = "1"
    dataset = DatasetSpec(hub_id="livecodebench/code_generation_lite", split="test", local="livecodebench/livecodebench_v5.jsonl")
    default_shots = 1
    options = ("since", "until", "path")
    #: Seconds for one solution's whole test run; each test also has the checks' 6 s limit.
    timeout_s: ClassVar[float] = 60.0
    max_tokens_base = 2000
    max_tokens_chat = 4096

    def __init__(self) -> None:
        self.since: date | None = None
        self.until: date | None = None
        self.path: Path | None = None

    def configure(self, options: dict[str, str]) -> None:
        self.since = parse_date(options["since"], "since") if "since" in options else None
        self.until = parse_date(options["until"], "until") if "until" in options else None
        self.path = Path(options["path"]).expanduser() if "path" in options else None
        if self.path is not None and not self.path.is_file():
            raise UserError(f"--task-arg path={options['path']}: no such file")

    def problems(self, source: DataSource) -> list[dict[str, Any]]:
        """Every problem of the file in the date window, tests or not."""
        if source.hub and self.path is None:
            raise UserError("livecodebench reads the release's JSON Lines files: pass --data-dir DIR or --task-arg path=FILE")
        path = self.path or source.require_local(self.dataset)
        out = []
        for number, row in enumerate(read_jsonl(path), 1):
            where = f"{path}:{number}"
            require_fields(row, ("question_id", "contest_date"), where)
            day = datetime.fromisoformat(row["contest_date"]).date()
            if (self.since and day < self.since) or (self.until and day > self.until):
                continue
            if "question_content" in row:
                require_fields(row, ("starter_code", "public_test_cases", "private_test_cases", "metadata"), where)
                fn_name = json.loads(row["metadata"] or "{}").get("func_name")
                problem = {"content": row["question_content"], "starter": row["starter_code"],
                           "public": row["public_test_cases"], "private": row["private_test_cases"], "fn_name": fn_name}
            else:
                require_fields(row, ("prompt", "tests"), where)
                content, starter = from_qwen_prompt(row["prompt"], where)
                problem = {"content": content, "starter": starter, **self._qwen_tests(path.parent / "tests" / row["tests"]["fname"])}
            out.append({"id": f"livecodebench/{row['question_id']}", "date": row["contest_date"][:10], **problem})
        return out

    @staticmethod
    def _qwen_tests(path: Path) -> dict[str, Any]:
        if not path.is_file():
            return {"public": None, "private": None, "fn_name": None}
        io_spec = json.loads(json.loads(path.read_text(encoding="utf-8"))["input_output"])
        kind = "functional" if io_spec.get("fn_name") else "stdin"
        tests = [{"input": i, "output": o, "testtype": kind} for i, o in zip(io_spec["inputs"], io_spec["outputs"], strict=True)]
        return {"public": tests, "private": [], "fn_name": io_spec.get("fn_name")}

    def to_doc(self, problem: dict[str, Any]) -> Doc:
        target = {"public": problem["public"], "private": problem["private"], "fn_name": problem["fn_name"]}
        return Doc(id=problem["id"], data={"content": problem["content"], "starter": problem["starter"]}, target=target,
                   fields={"month": problem["date"][:7]})

    def load(self, source: DataSource) -> list[Doc]:
        problems = self.problems(source)
        missing = [p["id"] for p in problems if p["public"] is None]
        if missing:
            raise UserError(f"livecodebench: {len(missing)} of {len(problems)} problems have no tests (e.g. {missing[0]}); "
                            "pass the official release file with --task-arg path=FILE, or put the test files in livecodebench/tests/")
        return [self.to_doc(p) for p in problems]

    def build(self, doc: Doc, ctx: PromptContext) -> tuple[str, list[GenerateRequest]]:
        content, starter = doc.data["content"], doc.data["starter"]
        if ctx.chat:
            messages = ctx.conversation(chat_turn(content, starter), system=SYSTEM_MESSAGE)
            return chat_prompt(messages, doc.id, ctx, self.max_tokens_chat)
        prompt = base_prompt(content, starter, ctx.shots)
        return prompt, generate_requests(prompt, doc.id, ctx, BASE_STOP, self.max_tokens_base)

    def program(self, sample: Sample, output: str) -> Job:
        target = sample.target
        tests = decode_tests(target["public"]) + decode_tests(target["private"])
        return io_job(extract_code(output).strip(), tests, target["fn_name"])


def io_job(solution: str, tests: list[dict[str, str]], fn_name: str | None) -> Job:
    """The sandbox job for one solution: the expected outputs go only to the checker."""
    if any(test["testtype"] == "functional" for test in tests):
        program = PRELUDE + solution
    else:
        program = f"{CHECKS_SOURCE}\nrun_stdin = stdin_runner({solution!r})\n"
    return checked_job(program, checks.check_io_tests, tests, fn_name, "class Solution" in solution)
