"""AlpacaEval 2.0 (Dubois et al., 2024, "Length-Controlled AlpacaEval: A Simple Way to Debias
Automatic Evaluators"; tatsu-lab/alpaca_eval), the DeepSeek-V3 report's "AlpacaEval 2.0 (LC win
rate)".

* Data: the 805 instructions with the GPT-4 Turbo (``gpt4_1106_preview``) reference outputs,
  ``alpacaeval/gpt4_1106_preview/model_outputs.json``; ids ``alpacaeval/<position>``, the
  position being the instruction ``index`` the package's difficulty table is keyed by.
* Generation: the instruction as one user turn, greedy, up to 4096 new tokens.
* Judging (``--judge SPEC``): one comparison per instruction of the model's output with the
  reference, shown in a per-instruction fixed random order (the package shuffles the two as
  well) under the identifiers ``m`` and ``M``; the judge answers with the identifier of the
  better output. dseval's own prompt asks what the package's ``alpaca_eval_clf_gpt4_turbo``
  prompt asks. The default annotator reads the judge's token probabilities of ``m``/``M`` (a
  fractional preference); a chat judge gives its answer only, so preferences here are 0 or 1.
* Scoring: ``win_rate`` is the mean preference over instructions with a parsed answer (one
  character, ``m`` or ``M``); ``lc_win_rate`` the length-controlled GLM of
  :mod:`dseval.scoring.length_controlled`. The package takes instruction difficulties and the
  gamed-baseline annotations that regularise the fit from the Hugging Face Hub at run time;
  offline, task option ``difficulty=PATH`` reads them from a CSV (the Hub's
  ``instruction_difficulty.csv``, or ``df_gamed.csv`` whose extra columns also give the
  regularisation, i.e. the published ``length_controlled_v1``). Without the option the GLM is
  the package's ``length_controlled_minimal`` (length and model terms only), whose numbers
  differ from the leaderboard's.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dseval.data import DatasetSpec, DataSource, local_rows
from dseval.errors import UserError
from dseval.judging import JudgedTask, verdicts
from dseval.metrics import Summary
from dseval.requests import ChatRequest, GenerateRequest
from dseval.scoring.length_controlled import GamedRows, length_controlled_win_rate
from dseval.scoring.sampling import chat_prompt
from dseval.records import Doc, Sample
from dseval.task import PromptContext, Task, register_task

JUDGE_SYSTEM = ("You pick the better of two language-model outputs for a leaderboard of model quality, judging as a "
                "careful human reader would.")
JUDGE_PROMPT = (
    "Two models were given the instruction below. Their outputs follow in no particular order, each labelled "
    "with a model identifier.\n\n"
    '## Instruction\n"""{instruction}"""\n\n'
    '## Output of model m\n"""{output_m}"""\n\n'
    '## Output of model M\n"""{output_M}"""\n\n'
    "## Your answer\n"
    "Which model's output is better, judged by its quality and its relevance to the instruction? Your reply is read "
    "as the identifier of that model, so reply with that identifier alone, m or M, and nothing else: no quotes, "
    "spaces, punctuation or line breaks."
)
GENERATION_TOKENS = 4096
JUDGE_TOKENS = 16


def model_slot(doc_id: str) -> str:
    """The identifier the model's output gets for this instruction: fixed per instruction, so
    a rescore knows it, and balanced between the two positions over the set."""
    return "M" if hashlib.sha256(doc_id.encode()).digest()[0] % 2 == 0 else "m"


def preference(sample: Sample) -> float | None:
    """1 when the judge preferred the model's output, 0 the reference's, None when unparsed."""
    replies = verdicts(sample)
    chosen = replies[0].strip().strip("\"'`.") if replies else None
    if chosen not in ("m", "M"):
        return None
    return 1.0 if chosen == model_slot(sample.id) else 0.0


def read_difficulty_csv(path: Path) -> tuple[dict[int, float], dict[int, list[tuple[float, float]]]]:
    """Instruction difficulty by instruction index (first row of each index), and, when the file
    has the gamed-baseline annotations' columns, each instruction's gamed rows (preference in
    [0, 1], standardized length difference) in file order."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as err:
        raise UserError(f"alpacaeval2 option difficulty={path}: {err.strerror or err}") from None
    if not rows:
        raise UserError(f"alpacaeval2 option difficulty={path}: empty CSV")
    columns = list(rows[0])
    index_col = "index" if "index" in columns else columns[0]
    value_col = "instruction_difficulty" if "instruction_difficulty" in columns else columns[1]
    gamed_cols = {"preference", "std_delta_len", "not_gamed_baseline"} <= set(columns)
    difficulty: dict[int, float] = {}
    gamed: dict[int, list[tuple[float, float]]] = {}
    for number, row in enumerate(rows, 2):
        try:
            index = int(float(row[index_col]))
            difficulty.setdefault(index, float(row[value_col]))
            if gamed_cols and row["not_gamed_baseline"].strip().lower() in ("false", "0"):
                gamed.setdefault(index, []).append((float(row["preference"]), float(row["std_delta_len"])))
        except (TypeError, ValueError) as err:
            raise UserError(f"{path}:{number}: not a number ({err})") from None
    return difficulty, gamed


@register_task
class AlpacaEval2(JudgedTask, Task):
    name = "alpacaeval2"
    display_name = "AlpacaEval 2.0"
    metric_label = "LC win rate"
    category = "English"
    version = "1"
    dataset = DatasetSpec(hub_id="(local only)", split="eval", local="alpacaeval/gpt4_1106_preview/model_outputs.json")
    request_type = "generate"
    headline = "lc_win_rate"
    breakdowns = ("dataset",)
    options = ("difficulty",)

    def __init__(self) -> None:
        self.difficulty_file: str | None = None

    def configure(self, options: Mapping[str, str]) -> None:
        self.difficulty_file = options.get("difficulty", self.difficulty_file)

    def load(self, source: DataSource) -> list[Doc]:
        rows = local_rows(source, self.dataset, ("dataset", "instruction", "output"))
        difficulty, gamed = read_difficulty_csv(Path(self.difficulty_file)) if self.difficulty_file else ({}, {})
        if difficulty and len(difficulty.keys() & range(len(rows))) < len(rows):
            raise UserError(f"alpacaeval2 option difficulty={self.difficulty_file}: no difficulty for some of the "
                            f"{len(rows)} instruction indexes")
        docs = []
        for index, row in enumerate(rows):
            # the GLM's inputs travel with the sample, so `dseval score` refits it from samples alone
            target = {"instruction": row["instruction"], "reference": row["output"], "index": index,
                      "difficulty": difficulty.get(index), "gamed": gamed.get(index)}
            docs.append(Doc(id=f"alpacaeval/{index}", data=row, target=target, fields={"dataset": row["dataset"]}))
        return docs

    def build(self, doc: Doc, ctx: PromptContext) -> tuple[str, list[GenerateRequest]]:
        return chat_prompt(ctx.conversation(doc.data["instruction"]), doc.id, ctx, GENERATION_TOKENS)

    def judge_requests(self, sample: Sample) -> list[ChatRequest]:
        if not sample.outputs:
            return []
        model, reference = sample.outputs[0], sample.target["reference"]
        slots = {"output_M": model, "output_m": reference} if model_slot(sample.id) == "M" else {"output_m": model, "output_M": reference}
        prompt = JUDGE_PROMPT.format(instruction=sample.target["instruction"], **slots)
        messages = ({"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt})
        return [ChatRequest(messages=messages, max_tokens=JUDGE_TOKENS, doc_id=sample.id)]

    def score(self, samples: Sequence[Sample]) -> list[dict[str, float]]:
        metrics = []
        for sample in samples:
            if verdicts(sample) is None:  # not judged yet
                metrics.append({})
                continue
            won = preference(sample)
            metrics.append({"judged": float(won is not None), **({"win_rate": won} if won is not None else {})})
        return metrics

    def summarize(self, samples: Sequence[Sample]) -> Summary:
        summary = super().summarize(samples)  # win_rate, judged and their per-dataset breakdowns
        prefs = np.array([np.nan if (p := preference(s)) is None else p for s in samples])
        targets = [s.target for s in samples]
        difficulty = None
        if targets and all(t["difficulty"] is not None for t in targets):
            difficulty = np.array([t["difficulty"] for t in targets])
        gamed = None
        if difficulty is not None and all(t["gamed"] for t in targets):
            slots = range(min(len(t["gamed"]) for t in targets))  # one row per gamed model, grouped by model
            rows = [(t["gamed"][j], t["difficulty"]) for j in slots for t in targets]
            gamed = GamedRows(np.array([r[0][0] for r in rows]), np.array([r[0][1] for r in rows]), np.array([r[1] for r in rows]))
        lc = length_controlled_win_rate(
            prefs, [len((s.outputs or [""])[0]) for s in samples], [len(t["reference"]) for t in targets], difficulty, gamed
        )
        summary.metrics["lc_win_rate"], summary.stderr["lc_win_rate"] = lc.win_rate, lc.stderr
        return summary
