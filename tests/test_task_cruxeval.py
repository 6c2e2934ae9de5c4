"""CRUXEval on the real data: the official direct prompts character for character, the
official answer parsing, and gold answers replayed through ``dseval run`` passing in the
sandbox (800/800 for output and for input prediction)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_task, replay_run
from dseval.records import Sample
from dseval.task import PromptContext

TWO_SHOT = PromptContext(shots=2, chat=False, seed=0, samples=1, render_chat=lambda m: "")

# The official prompts (facebookresearch/cruxeval, prompts.py, make_direct_output_prompt and
# make_direct_input_prompt), typed out with {code}, {input} and {output} left open.
OFFICIAL_OUTPUT_PROMPT = '''You are given a Python function and an assertion containing an input to the function. Complete the assertion with a literal (no unsimplified expressions, no function calls) containing the output when executing the provided code on the given input, even if the function is incorrect or incomplete. Do NOT output any extra information. Provide the full assertion with the correct output in [ANSWER] and [/ANSWER] tags, following the examples.

[PYTHON]
def f(n):
    return n
assert f(17) == ??
[/PYTHON]
[ANSWER]
assert f(17) == 17
[/ANSWER]

[PYTHON]
def f(s):
    return s + "a"
assert f("x9j") == ??
[/PYTHON]
[ANSWER]
assert f("x9j") == "x9ja"
[/ANSWER]

[PYTHON]
{code}
assert f({input}) == ??
[/PYTHON]
[ANSWER]
'''
OFFICIAL_INPUT_PROMPT = '''You will be given a function f and an output in the form f(??) == output. Find any input such that executing f on the input leads to the given output. There may be multiple answers, but you should only output one. In [ANSWER] and [/ANSWER] tags, complete the assertion with one such input that will produce the output when executing the function.

[PYTHON]
def f(my_list):
    count = 0
    for i in my_list:
        if len(i) % 2 == 0:
            count += 1
    return count
assert f(??) == 3
[/PYTHON]
[ANSWER]
assert f(["mq", "px", "zy"]) == 3
[/ANSWER]

[PYTHON]
def f(s1, s2):
    return s1 + s2
assert f(??) == "banana"
[/PYTHON]
[ANSWER]
assert f("ba", "nana") == "banana"
[/ANSWER]

[PYTHON]
{code}
assert f(??) == {output}
[/PYTHON]
[ANSWER]
'''


@pytest.mark.parametrize(("name", "official"), [("cruxeval_o", OFFICIAL_OUTPUT_PROMPT), ("cruxeval_i", OFFICIAL_INPUT_PROMPT)])
def test_prompts_are_the_official_direct_prompts(data_dir: Path, name: str, official: str) -> None:
    task, docs = load_task(name, data_dir)
    assert len(docs) == 800 and docs[0].id == f"{name}/sample_0"
    for doc in docs[:50]:
        prompt, requests = task.build(doc, TWO_SHOT)
        assert prompt == official.replace("{code}", doc.data["code"]).replace("{input}", doc.data["input"]).replace("{output}", doc.data["output"])
        assert requests[0].stop == ("[/ANSWER]",)


def test_answers_parsed_and_executed_as_officially(data_dir: Path) -> None:
    """sample_0: f sorts (count, n) pairs. Right and wrong answers of both kinds, and the
    answers the official scorer rejects unrun (an output that restates the call, an input
    that never calls f)."""
    out_task, docs = load_task("cruxeval_o", data_dir)
    in_task, _ = load_task("cruxeval_i", data_dir)
    doc = docs[0]
    gold_in, gold_out = doc.data["input"], doc.data["output"]
    cases = [
        (out_task, f"assert f({gold_in}) == {gold_out}\n", 1.0),
        (out_task, gold_out, 1.0),  # no "==": the whole answer is the literal
        (out_task, f"assert f({gold_in}) == [(4, 1)]\n", 0.0),
        (out_task, f"assert f({gold_in}) == f({gold_in})\n", 0.0),
        (in_task, f"assert f({gold_in}) == {gold_out}\n", 1.0),
        (in_task, "assert f([3, 1, 1, 3, 1, 1]) == ...\n", 1.0),  # any input that gives the output
        (in_task, "assert f([1]) == ...\n", 0.0),
        (in_task, "assert [(4, 1)] == ...\n", 0.0),
    ]
    for task, output, expected in cases:
        sample = Sample(id=doc.id, index=0, prompt="", target=doc.target, fields={}, outputs=[output])
        assert task.score([sample])[0]["pass@1"] == expected, (task.name, output, sample.details["exec"])


@pytest.mark.parametrize("name", ["cruxeval_o", "cruxeval_i"])
def test_gold_answers_through_replay_pass(tmp_path: Path, data_dir: Path, name: str) -> None:
    _, docs = load_task(name, data_dir)
    records = [{"id": d.id, "output": f"assert f({d.data['input']}) == {d.data['output']}\n"} for d in docs]
    summary = replay_run(tmp_path, name, records, data_dir)
    assert summary["n"] == 800 and summary["metrics"]["pass@1"] == 1.0 and summary["metrics"]["exec/passed"] == 800
