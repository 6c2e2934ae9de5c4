"""BBH and GSM8K on the real data: prompts equal the reference text character for character,
answers are read after the exemplars' answer sentence, and gold answers replayed through
``dseval run --model replay:`` score 100%."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_task, replay_run
from dseval.records import Sample
from dseval.task import PromptContext

BASE = PromptContext(shots=3, chat=False, seed=0, samples=1, render_chat=lambda m: "")

# lm-evaluation-harness's gsm8k_cot (gsm8k-cot.yaml, version 3.0) renders the chain-of-thought
# paper's eight exemplars as "Q: ...\nA: ..." blocks joined by a blank line; typed out here from
# that file, independently of tasks/gsm8k.py.
GSM8K_REFERENCE_SHOTS = """Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?
A: There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6.

Q: If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?
A: There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.

Q: Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?
A: Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The answer is 39.

Q: Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?
A: Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The answer is 8.

Q: Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?
A: Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The answer is 9.

Q: There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?
A: There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.

Q: Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?
A: Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33.

Q: Olivia has $23. She bought five bagels for $3 each. How much money does she have left?
A: Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.

"""


@pytest.fixture(scope="module")
def bbh(data_dir: Path):
    return load_task("bbh", data_dir)


@pytest.fixture(scope="module")
def gsm8k(data_dir: Path):
    return load_task("gsm8k", data_dir)


def test_bbh_prompt_is_the_release_cot_prompt(bbh, data_dir: Path) -> None:
    """Every task's 3-shot prompt is its cot-prompts file after the header, byte for byte,
    followed by the open question in the exemplars' form."""
    task, docs = bbh
    assert len(docs) == 6511 and len({d.fields["task"] for d in docs}) == 27
    first = {}
    for doc in docs:
        first.setdefault(doc.fields["task"], doc)
    for name, doc in first.items():
        release = (data_dir / "bbh" / "cot-prompts" / f"{name}.txt").read_text(encoding="utf-8")
        prompt, requests = task.build(doc, BASE)
        body = release.split("-----\n", 1)[1]
        assert prompt == f"{body}\n\nQ: {doc.data['input']}\nA: Let's think step by step.", name
        assert requests[0].stop == ("\n\n",) and requests[0].temperature == 0.0
    one_shot, _ = task.build(first["navigate"], PromptContext(shots=1, chat=False, seed=0, samples=1, render_chat=lambda m: ""))
    assert one_shot.count("\nA: Let's think step by step.") == 2 and one_shot.startswith("Given a series of navigation")


def test_bbh_chat_prompt_is_the_exemplars_as_turns(bbh) -> None:
    """Chat: each exemplar a user turn up to "A: Let's think step by step." answered by its
    reasoning, the description opening the first turn; joined back they are the base prompt."""
    task, docs = bbh
    doc = next(d for d in docs if d.fields["task"] == "navigate")
    base_prompt, _ = task.build(doc, BASE)
    chat = PromptContext(shots=3, chat=True, seed=0, samples=1, render_chat=json.dumps, system_prompt="Be exact.")
    prompt, (request,) = task.build(doc, chat)
    messages = list(request.messages)
    assert json.loads(prompt) == messages and request.stop == ()
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert messages[1]["content"].startswith("Given a series of navigation instructions")
    shots = [f"{messages[i]['content']}\n{messages[i + 1]['content']}" for i in range(1, 7, 2)]
    assert "\n\n".join([*shots, messages[-1]["content"]]) == base_prompt
    zero = PromptContext(shots=0, chat=True, seed=0, samples=1, render_chat=json.dumps)
    (only,) = task.build(doc, zero)[1][0].messages
    assert only["content"] == task.build(doc, PromptContext(shots=0, chat=False, seed=0, samples=1, render_chat=json.dumps))[0]


def test_bbh_answer_extraction_and_macro_average(bbh) -> None:
    task, docs = bbh
    by_task = {}
    for doc in docs:
        by_task.setdefault(doc.fields["task"], []).append(doc)
    small, big = by_task["penguins_in_a_table"][:1], by_task["word_sorting"][:3]
    outputs = [f"They sit left. So the answer is {small[0].target}.", f"So the answer is {big[0].target}.",
               "so THE ANSWER IS (Z).", "No conclusion reached."]
    samples = [Sample(id=d.id, index=i, prompt="", target=d.target, fields=d.fields, outputs=[o])
               for i, (d, o) in enumerate(zip(small + big, outputs, strict=True))]
    for sample, metrics in zip(samples, task.score(samples), strict=True):
        sample.metrics = metrics
    assert [s.metrics["em"] for s in samples] == [1.0, 1.0, 0.0, 0.0]
    assert samples[2].details["extracted"] == ["(Z)"] and samples[3].details["extracted"] == [None]
    summary = task.summarize(samples)
    assert summary.metrics["em"] == pytest.approx((1.0 + 1 / 3) / 2), "unweighted mean over tasks"
    assert summary.metrics["em_micro"] == 0.5 and summary.metrics["em/task/word_sorting"] == pytest.approx(1 / 3)


def test_bbh_gold_answers_through_replay_score_100(tmp_path: Path, data_dir: Path, bbh) -> None:
    _, docs = bbh
    records = [{"id": d.id, "output": f" Some reasoning. So the answer is {d.target}."} for d in docs]
    summary = replay_run(tmp_path, "bbh", records, data_dir)
    assert summary["n"] == 6511 and summary["metrics"]["em"] == 1.0 and summary["metrics"]["em_micro"] == 1.0
    assert summary["metrics"]["em/task/dyck_languages"] == 1.0


def test_gsm8k_prompt_is_the_chain_of_thought_prompt(gsm8k) -> None:
    task, docs = gsm8k
    assert len(docs) == 1319 and docs[0].target == "18"
    prompt, requests = task.build(docs[0], PromptContext(shots=8, chat=False, seed=0, samples=1, render_chat=lambda m: ""))
    assert prompt == GSM8K_REFERENCE_SHOTS + f"Q: {docs[0].data['question']}\nA:"
    assert requests[0].stop == ("Q:", "</s>", "<|im_end|>")
    zero, _ = task.build(docs[0], PromptContext(shots=0, chat=False, seed=0, samples=1, render_chat=lambda m: ""))
    assert zero == f"Q: {docs[0].data['question']}\nA:"


def test_gsm8k_chat_prompt_is_the_exemplars_as_turns(gsm8k) -> None:
    task, docs = gsm8k
    prompt, (request,) = task.build(docs[0], PromptContext(shots=8, chat=True, seed=0, samples=1, render_chat=json.dumps))
    messages = list(request.messages)
    assert json.loads(prompt) == messages and request.stop == ()
    assert [m["role"] for m in messages] == ["user", "assistant"] * 8 + ["user"]
    shots = [f"{messages[i]['content']} {messages[i + 1]['content']}" for i in range(0, 16, 2)]
    assert "\n\n".join(shots) + "\n\n" == GSM8K_REFERENCE_SHOTS
    assert messages[-1]["content"] == f"Q: {docs[0].data['question']}\nA:"


def test_gsm8k_numbers_compared_by_value(gsm8k) -> None:
    task, _ = gsm8k
    cases = [  # (output, gold, em, em_strict)
        (" 16 - 3 - 4 = 9. 9 * 2 = 18. The answer is 18.\n\n", "18", 1.0, 1.0),
        (" The answer is $1,000.00.", "1,000", 1.0, 1.0),
        (" The answer is 18 dollars. Then 20 more.", "18", 1.0, 1.0),
        (" So she makes 18 dollars a day", "18", 1.0, 0.0),
        (" The answer is 17.", "18", 0.0, 0.0),
        (" I am not sure.", "18", 0.0, 0.0),
        (" The answer is -3.5.", "-7/2", 1.0, 1.0),
    ]
    samples = [Sample(id=str(i), index=i, prompt="", target=gold, fields={}, outputs=[out]) for i, (out, gold, _, _) in enumerate(cases)]
    got = [(m["em"], m["em_strict"]) for m in task.score(samples)]
    assert got == [(em, strict) for _, _, em, strict in cases]


def test_gsm8k_gold_answers_through_replay_score_100(tmp_path: Path, data_dir: Path) -> None:
    rows = [json.loads(line) for line in (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()]
    records = [{"id": f"gsm8k/test/{i}", "output": " " + row["answer"].replace("####", "The answer is") + "."} for i, row in enumerate(rows)]
    summary = replay_run(tmp_path, "gsm8k", records, data_dir)
    assert summary["n"] == 1319 and summary["metrics"]["em"] == 1.0 and summary["metrics"]["em_strict"] == 1.0


def test_malformed_gsm8k_row_names_file_and_line(tmp_path: Path) -> None:
    from dseval.data import DataSource
    from dseval.errors import UserError
    from dseval.task import get_task

    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q", "answer": "a\\n#### 1"}\n{"question": "q", "answer": "2"}\n')
    with pytest.raises(UserError, match=r"gsm8k/test.jsonl:2: field 'answer' has no '####'"):
        get_task("gsm8k").load(DataSource(tmp_path))
