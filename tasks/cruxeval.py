"""CRUXEval (Gu et al., 2024, "CRUXEval: A Benchmark for Code Reasoning, Understanding and
Execution").

800 short Python functions ``f``, each with one input and its output. Two tasks, the
DeepSeek-V3 report's "CRUXEval-I" and "CRUXEval-O" rows (2-shot):

* ``cruxeval_o``: given ``f`` and the input, predict the output.
* ``cruxeval_i``: given ``f`` and the output, find an input that produces it.

Prompts are the official direct (non-CoT) prompts of the CRUXEval repository
(``prompts.py``: ``make_direct_output_prompt`` / ``make_direct_input_prompt``), whose two
worked examples are the two shots: an instruction, then ``[PYTHON]\\n{code}\\nassert ...\\n
[/PYTHON]\\n[ANSWER]\\nassert ...\\n[/ANSWER]`` blocks separated by a blank line, the open one
ending after ``[ANSWER]\\n``. Generation stops at ``[/ANSWER]``.

Scoring follows the official ``evaluate_score``: the answer is the text after the first
"==" (output) or between "assert" and the first "==" (input), and the official check is the
Python statement ``{code}\\nassert {output} == {answer}`` (3 s); pass@1 is the share that pass.
An input answer that does not call ``f(`` fails, and so does an output answer that just
restates the call ``f({input})``: both without running anything that matters.

Here the comparison of that statement runs in the sandbox's checker process, apart from the
code that produces the answer: the program is ``{code}`` and a function returning the
expression the statement compares with (read off the statement's own parse, so operator
precedence is Python's, as there); the expected output is evaluated only in the checker, which
calls that function through the sandbox's link and compares the returned plain value with its
own ``==`` (:func:`dseval.scoring.checks.check_value`; :mod:`dseval.scoring.checks` says which
values cross). Parity: on every answer whose statement is ``assert {output} == <expression>``
(an assert message after it changes nothing) the verdict is the official one whenever the
value is of a type that crosses (the 800 gold values all are). An answer that is not exactly
that fails: a chained or boolean tail (``== x or True`` passes there without the right value)
or statements after the assert (they could rewrite the value before the checker reads it).
"""

from __future__ import annotations

import ast

from dseval.data import DatasetSpec, DataSource
from dseval.prompting import take_shots
from dseval.requests import GenerateRequest
from dseval.sandbox import Job
from dseval.scoring import checks
from dseval.scoring.code_exec import CodeExecution, checked_job
from dseval.scoring.sampling import chat_prompt, generate_requests
from dseval.records import Doc, Sample
from dseval.task import PromptContext, Task, register_task

OUTPUT_INSTRUCTION = (
    "You are given a Python function and an assertion containing an input to the function. Complete the assertion "
    "with a literal (no unsimplified expressions, no function calls) containing the output when executing the "
    "provided code on the given input, even if the function is incorrect or incomplete. Do NOT output any extra "
    "information. Provide the full assertion with the correct output in [ANSWER] and [/ANSWER] tags, following the examples."
)
INPUT_INSTRUCTION = (
    "You will be given a function f and an output in the form f(??) == output. Find any input such that executing f "
    "on the input leads to the given output. There may be multiple answers, but you should only output one. In "
    "[ANSWER] and [/ANSWER] tags, complete the assertion with one such input that will produce the output when "
    "executing the function."
)
# The official prompts' two worked examples: (code, input, output).
OUTPUT_SHOTS = (("def f(n):\n    return n", "17", "17"), ('def f(s):\n    return s + "a"', '"x9j"', '"x9ja"'))
INPUT_SHOTS = (
    ("def f(my_list):\n    count = 0\n    for i in my_list:\n        if len(i) % 2 == 0:\n            count += 1\n    return count",
     '["mq", "px", "zy"]', "3"),
    ("def f(s1, s2):\n    return s1 + s2", '"ba", "nana"', '"banana"'),
)  # fmt: skip
QUESTION = "[PYTHON]\n{code}\n{question}\n[/PYTHON]\n[ANSWER]\n"
ANSWER = "assert f({input}) == {output}\n[/ANSWER]"
BLOCK_SEPARATOR = "\n\n"
STOP = ("[/ANSWER]",)
#: Programs that fail at once: what an answer the official scorer rejects unrun becomes, and an
#: answer whose official statement compares more than the expected output with one value.
REJECTED = Job("raise AssertionError('answer rejected before execution')\n")
NOT_ONE_COMPARISON = Job("raise AssertionError('answer is not one == comparison with the expected output')\n")
#: The program's function that returns the answer's value (a name no CRUXEval function uses).
ANSWER_FUNCTION = "__cruxeval_answer__"


def compared_expression(expected: str, answer: str) -> str | None:
    """The source of what the official ``assert {expected} == {answer}`` compares ``expected``
    with, or None when that statement is not a single ``==`` between ``expected`` and one
    expression (or does not parse)."""
    statement = f"assert {expected} == {answer}"
    try:
        body = ast.parse(statement).body
        left = ast.parse(expected, mode="eval").body
    except (SyntaxError, ValueError):  # ValueError: NUL bytes
        return None
    if len(body) != 1 or not isinstance(body[0], ast.Assert):
        return None
    test = body[0].test
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)
            and ast.dump(test.left) == ast.dump(left)):
        return None
    return ast.get_source_segment(statement, test.comparators[0])


@register_task
class CRUXEvalOutput(CodeExecution, Task):
    name = "cruxeval_o"
    display_name = "CRUXEval-O"
    metric_label = "Pass@1"
    category = "Code"
    version = "1"
    dataset = DatasetSpec(hub_id="cruxeval-org/cruxeval", split="test", local="cruxeval/cruxeval.jsonl")
    default_shots = 2
    max_tokens = 256
    instruction = OUTPUT_INSTRUCTION
    shots = OUTPUT_SHOTS

    @staticmethod
    def question(code: str, input: str, output: str) -> str:
        return f"assert f({input}) == ??"

    def prompt(self, code: str, input: str, output: str, shots: int) -> str:
        examples = take_shots(self.shots, shots, f"{self.name}'s official prompt")
        blocks = [QUESTION.format(code=c, question=self.question(c, i, o)) + ANSWER.format(input=i, output=o) for c, i, o in examples]
        return BLOCK_SEPARATOR.join([self.instruction, *blocks, QUESTION.format(code=code, question=self.question(code, input, output))])

    def load(self, source: DataSource) -> list[Doc]:
        rows = source.jsonl_rows(self.dataset, ("id", "code", "input", "output"))
        return [Doc(id=f"{self.name}/{row['id']}", data={"code": row["code"], "input": row["input"], "output": row["output"]},
                    target={"code": row["code"], "input": row["input"], "output": row["output"]}) for row in rows]

    def build(self, doc: Doc, ctx: PromptContext) -> tuple[str, list[GenerateRequest]]:
        prompt = self.prompt(doc.data["code"], doc.data["input"], doc.data["output"], ctx.shots)
        if ctx.chat:  # the official prompt as one user turn (its examples stay inside it)
            return chat_prompt(ctx.conversation(prompt), doc.id, ctx, self.max_tokens, STOP)
        return prompt, generate_requests(prompt, doc.id, ctx, STOP, self.max_tokens)

    @staticmethod
    def answer(output: str, target: dict[str, str]) -> str | None:
        """The predicted output literal, or None when the official scorer rejects the answer."""
        answer = output.split("==")[1].strip() if "==" in output else output.strip()
        return None if f"f({target['input']})" in answer else answer

    def program(self, sample: Sample, output: str) -> Job:
        target = sample.target
        answer = self.answer(output, target)
        if answer is None:
            return REJECTED
        expression = compared_expression(target["output"], answer)
        if expression is None:
            return NOT_ONE_COMPARISON
        program = f"{target['code']}\n\n\ndef {ANSWER_FUNCTION}():\n    return (\n{expression}\n    )\n"
        return checked_job(program, checks.check_value, ANSWER_FUNCTION, target["output"])


@register_task
class CRUXEvalInput(CRUXEvalOutput):
    name = "cruxeval_i"
    display_name = "CRUXEval-I"
    instruction = INPUT_INSTRUCTION
    shots = INPUT_SHOTS

    @staticmethod
    def question(code: str, input: str, output: str) -> str:
        return f"assert f(??) == {output}"

    @staticmethod
    def answer(output: str, target: dict[str, str]) -> str | None:
        """The predicted call ``f(...)``, or None when the answer does not call ``f``."""
        answer = output.split("==")[0].strip() if "==" in output else output.strip()
        answer = answer.split("assert")[1].strip() if "assert" in answer else answer
        return answer if "f(" in answer else None
