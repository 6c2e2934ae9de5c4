"""GSM8K (Cobbe et al., 2021, "Training Verifiers to Solve Math Word Problems").

1,319 grade-school word problems (test split), 8-shot chain of thought as in the DeepSeek-V3
report's base table ("GSM8K (EM)", 8-shot). The exemplars are the standard eight of the
chain-of-thought paper (Wei et al., 2022, "Chain-of-Thought Prompting Elicits Reasoning in Large
Language Models", Table 20: the 15 trees, the parking lot, ... Olivia's bagels), in the exact
wording and layout of lm-evaluation-harness's ``gsm8k_cot`` task::

    Q: {question}\\nA: {reasoning} The answer is {n}.\\n\\n   (8 shots)
    Q: {question}\\nA:

The exemplars are fixed, not drawn from the train split, so every model sees the same prompt.
Generation stops at "Q:" (the next question a base model writes), and at "</s>" and
"<|im_end|>" as the reference does. Chat models get each exemplar as a user turn ("Q: ...\nA:")
answered by an assistant turn (its reasoning), then the question, without stop strings.

Scoring: the number after the first "The answer is" (the reference's strict filter), or, when
the output has no such sentence, its last number (the flexible filter); equal to the gold (the
text after "####") by value, so "1,000", "$1000" and "1000.00" all match 1000. ``em`` uses that
fallback, ``em_strict`` only the sentence.
"""

from __future__ import annotations

from collections.abc import Sequence

from dseval.data import DatasetSpec, DataSource
from dseval.errors import UserError
from dseval.prompting import take_shots
from dseval.requests import GenerateRequest
from dseval.scoring.answers import answer_after, numbers, same_number
from dseval.scoring.sampling import chat_prompt, generate_requests
from dseval.records import Doc, Sample
from dseval.task import PromptContext, Task, register_task

# The chain-of-thought paper's eight exemplars (question, reasoning ending in the answer).
COT_SHOTS: tuple[tuple[str, str], ...] = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8."),
)  # fmt: skip
QUESTION = "Q: {question}\nA:"
SHOT = QUESTION + " {answer}"
SHOT_SEPARATOR = "\n\n"
STOP = ("Q:", "</s>", "<|im_end|>")
ANSWER_PHRASE = "The answer is"
GOLD_MARK = "####"
PROMPT_NAME = "gsm8k's chain-of-thought prompt"


def cot_prompt(question: str, shots: int) -> str:
    blocks = [SHOT.format(question=q, answer=a) for q, a in take_shots(COT_SHOTS, shots, PROMPT_NAME)]
    return SHOT_SEPARATOR.join([*blocks, QUESTION.format(question=question)])


def gold_answer(solution: str) -> str:
    """The final answer of a reference solution: the text after its "####"."""
    return solution.split(GOLD_MARK)[-1].strip()


@register_task
class GSM8K(Task):
    name = "gsm8k"
    display_name = "GSM8K"
    metric_label = "EM"
    category = "Math"
    version = "2"  # 2: chat prompts as multi-turn messages
    dataset = DatasetSpec(hub_id="openai/gsm8k", hub_config="main", split="test", local="gsm8k/test.jsonl")
    request_type = "generate"
    default_shots = 8
    headline = "em"
    max_tokens_base = 512
    max_tokens_chat = 2048

    def load(self, source: DataSource) -> list[Doc]:
        rows = source.jsonl_rows(self.dataset, ("question", "answer"))
        for number, row in enumerate(rows, 1):
            if GOLD_MARK not in row["answer"]:
                where = source.local(self.dataset) or self.dataset.hub_id
                raise UserError(f"{where}:{number}: field 'answer' has no '####' before the final answer")
        return [Doc(id=f"gsm8k/test/{i}", data={"question": row["question"]}, target=gold_answer(row["answer"]))
                for i, row in enumerate(rows)]

    def build(self, doc: Doc, ctx: PromptContext) -> tuple[str, list[GenerateRequest]]:
        question = doc.data["question"]
        if ctx.chat:
            shots = [(QUESTION.format(question=q), a) for q, a in take_shots(COT_SHOTS, ctx.shots, PROMPT_NAME)]
            return chat_prompt(ctx.conversation(QUESTION.format(question=question), shots=shots), doc.id, ctx, self.max_tokens_chat)
        prompt = cot_prompt(question, ctx.shots)
        return prompt, generate_requests(prompt, doc.id, ctx, STOP, self.max_tokens_base)

    def score(self, samples: Sequence[Sample]) -> list[dict[str, float]]:
        out = []
        for sample in samples:
            outputs = sample.outputs or []
            strict = [next(iter(numbers(answer_after(o, ANSWER_PHRASE) or "")), None) for o in outputs]  # "18 dollars." -> "18"
            flexible = [s if s is not None else next(iter(reversed(numbers(o))), None) for s, o in zip(strict, outputs)]
            sample.details["extracted"] = flexible
            n = max(len(flexible), 1)
            out.append({
                "em": sum(same_number(a, sample.target) for a in flexible) / n,
                "em_strict": sum(same_number(a, sample.target) for a in strict) / n,
            })
        return out
