"""BIG-Bench Hard (Suzgun et al., 2022, "Challenging BIG-Bench Tasks and Whether
Chain-of-Thought Can Solve Them").

27 tasks, 6,511 examples, 3-shot chain of thought as in the DeepSeek-V3 report's base table
("BBH (EM)", 3-shot). The prompt is the release's own ``cot-prompts/<task>.txt`` (read from the
data folder, never retyped here): its description and three worked exemplars exactly as in the
file, then the open question in the exemplars' form::

    {task description}\\n\\nQ: {shot 1}\\nA: Let's think step by step.\\n{reasoning} So the
    answer is {answer}.\\n\\n ... (3 shots) ... \\n\\nQ: {input}\\nA: Let's think step by step.

The file's canary line and the ``-----`` separator under it are not part of the prompt. Chat
models get each exemplar as a user turn (up to "A: Let's think step by step.") answered by an
assistant turn (its reasoning), the description opening the first user turn, without stops.
``--shots k`` keeps the first k exemplars. Generation stops at a blank line (every exemplar
answer is one block, and a base model goes on with a new "Q:" after one), as
lm-evaluation-harness's ``bbh_cot_fewshot`` does; its further stop at any "Q" is not copied,
since it cuts reasoning that mentions a capital Q.

Scoring: the text after the first "the answer is" up to the end of its line, minus the final
full stop (lm-evaluation-harness's regex), compared exactly with the target. Headline ``em``
is the unweighted mean of the 27 per-task accuracies, the way the BBH paper averages;
``em_micro`` weights every example alike, and ``em/task/<name>`` gives each task.
"""

from __future__ import annotations

from collections.abc import Sequence

from dseval.data import DatasetSpec, DataSource, read_json
from dseval.errors import UserError
from dseval.prompting import take_shots
from dseval.metrics import Summary, add_macro
from dseval.requests import GenerateRequest
from dseval.scoring.answers import answer_after
from dseval.scoring.sampling import chat_prompt, generate_requests
from dseval.records import Doc, Sample
from dseval.task import PromptContext, Task, register_task

TASKS = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
    "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
    "multistep_arithmetic_two", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
    "sports_understanding", "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects", "web_of_lies",
    "word_sorting",
)  # fmt: skip
#: The line that ends the release file's header (canary GUID above it).
HEADER_END = "-----\n"
ANSWER_OPENING = "\nA: Let's think step by step."
QUESTION = "Q: {input}" + ANSWER_OPENING
BLOCK_SEPARATOR = "\n\n"
STOP = ("\n\n",)
ANSWER_PHRASE = "the answer is"


def split_cot_prompt(text: str, where: str) -> tuple[str, list[str]]:
    """(description, exemplar blocks "Q: ...") of a release cot-prompts file."""
    if HEADER_END not in text:
        raise UserError(f"{where}: no '-----' line after the canary header; is this a BBH cot-prompts file?")
    description, *shots = text.split(HEADER_END, 1)[1].split(BLOCK_SEPARATOR + "Q: ")
    return description, ["Q: " + shot for shot in shots]


def exemplar_turns(shot: str) -> tuple[str, str]:
    """An exemplar block as (user turn up to "A: Let's think step by step.", assistant reasoning)."""
    question, opening, reasoning = shot.partition(ANSWER_OPENING)
    return question + opening, reasoning.lstrip("\n")


def cot_prompt(description: str, shots: Sequence[str], question: str) -> str:
    return BLOCK_SEPARATOR.join([description, *shots, QUESTION.format(input=question)])


@register_task
class BBH(Task):
    name = "bbh"
    display_name = "BBH"
    metric_label = "EM"
    category = "English"
    version = "2"  # 2: chat prompts as multi-turn messages
    dataset = DatasetSpec(hub_id="lukaemon/bbh", split="test", local="bbh")
    request_type = "generate"
    default_shots = 3
    headline = "em"
    breakdowns = ("task",)
    max_tokens_base = 1024
    max_tokens_chat = 2048

    def __init__(self) -> None:
        self._prompts: dict[str, tuple[str, list[str]]] = {}

    def load(self, source: DataSource) -> list[Doc]:
        if source.hub:
            raise UserError("bbh needs the release's cot-prompts/ folder, which the Hub copy lacks: pass --data-dir DIR")
        docs = []
        for task in TASKS:
            prompt_file = source.require_local(self.dataset, f"{self.dataset.local}/cot-prompts/{task}.txt")
            self._prompts[task] = split_cot_prompt(prompt_file.read_text(encoding="utf-8"), str(prompt_file))
            path = source.require_local(self.dataset, f"{self.dataset.local}/bbh/{task}.json")
            data = read_json(path)
            examples = data.get("examples") if isinstance(data, dict) else None
            if not isinstance(examples, list):
                raise UserError(f"{path}: expected an object with an 'examples' list")
            for i, example in enumerate(examples):
                if not isinstance(example, dict) or not {"input", "target"} <= example.keys():
                    raise UserError(f"{path}: example #{i + 1} needs 'input' and 'target'")
                docs.append(Doc(id=f"bbh/{task}/{i}", data={"input": example["input"]}, target=example["target"],
                                group=task, fields={"task": task}))
        return docs

    def build(self, doc: Doc, ctx: PromptContext) -> tuple[str, list[GenerateRequest]]:
        description, shots = self._prompts[doc.fields["task"]]
        chosen = take_shots(shots, ctx.shots, f"bbh's cot-prompts/{doc.fields['task']}.txt")
        if ctx.chat:
            turns = [exemplar_turns(shot) for shot in chosen]
            if turns:
                turns[0] = (description + BLOCK_SEPARATOR + turns[0][0], turns[0][1])
            question = QUESTION.format(input=doc.data["input"])
            messages = ctx.conversation(question if turns else description + BLOCK_SEPARATOR + question, shots=turns)
            return chat_prompt(messages, doc.id, ctx, self.max_tokens_chat)
        prompt = cot_prompt(description, chosen, doc.data["input"])
        return prompt, generate_requests(prompt, doc.id, ctx, STOP, self.max_tokens_base)

    def score(self, samples: Sequence[Sample]) -> list[dict[str, float]]:
        out = []
        for sample in samples:
            answers = [answer_after(output, ANSWER_PHRASE) for output in sample.outputs or []]
            sample.details["extracted"] = answers
            out.append({"em": sum(a == sample.target for a in answers) / max(len(answers), 1)})
        return out

    def summarize(self, samples: Sequence[Sample]) -> Summary:
        summary = super().summarize(samples)
        summary.metrics["em_micro"], summary.stderr["em_micro"] = summary.metrics["em"], summary.stderr["em"]
        add_macro(summary, samples, "em", "task", "em")
        return summary
