"""Multiple-choice loglikelihood tasks declared by a config file instead of Python.

Every ``*.toml`` or ``*.json`` file in ``configs/tasks/`` (and in the folders or files listed
in ``$DSEVAL_TASK_CONFIGS``, separated like ``PATH``) becomes a task, registered under its
``name`` like any built-in one. A config names its data, how a row becomes a question with
choices and an answer, and the prompt as Jinja templates; the request protocol is
lm-evaluation-harness's ``multiple_choice``: one loglikelihood request per choice, continuing
the rendered question, and the highest-scoring choice is the model's answer::

    name = "my_quiz"                     # task name (dseval run my_quiz)
    display_name = "My quiz"             # optional, for leaderboards (with metric_label, category)
    shots = 5                            # default few-shot count
    macro = true                         # also report the unweighted mean over subsets

    [data]                               # paths under --data-dir; {subset} globs one file per subset
    test = "quiz/test/{subset}.csv"      # .csv (needs columns), .jsonl or .json (a list of rows)
    fewshot = "quiz/dev/{subset}.csv"    # optional: shots are this file's first rows
    columns = ["question", "A", "B", "C", "D", "answer"]

    [doc]
    choices = ["A", "B", "C", "D"]       # fields holding the choices, or one field holding a list
    answer = "answer"                    # a letter A.., a 0-based index, or the right choice's text

    [prompt]
    description = "Questions about {{ subset | replace('_', ' ') }}.\\n\\n"
    question = "{{ question | trim }}\\nA. {{ choices[0] }}\\nB. {{ choices[1] }}\\nAnswer:"
    continuation = " {{ letter }}"      # per choice; also sees {{ choice }} (its text)
    shot_separator = "\\n\\n"

Templates see the row's fields, ``choices``, ``subset`` and (continuations) ``letter``,
``choice``. A shot is its question followed by its right continuation. With ``--chat`` the
prompt goes through the chat template and continuations lose their leading whitespace, as
the built-in ``mmlu`` does. tests/test_multiple_choice_config.py declares MMLU this way and
checks that prompts and scores equal the built-in task's.
"""

from __future__ import annotations

import json
import os
import string
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2

from dseval.data import DatasetSpec, DataSource, read_csv, read_json, read_jsonl
from dseval.errors import UserError
from dseval.prompting import take_shots
from dseval.metrics import Summary, add_macro
from dseval.requests import LoglikelihoodRequest
from dseval.records import Doc, Sample
from dseval.task import PromptContext, Task, register_task

CONFIG_DIRS = (Path(__file__).resolve().parents[1] / "configs" / "tasks",)
LETTERS = string.ascii_uppercase
_JINJA = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined, autoescape=False)


def _require(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = table.get(key)
    if not isinstance(value, kind):
        raise UserError(f"{where}: field '{key}' is required and must be {kind.__name__}")
    return value


def _template(text: str, where: str) -> jinja2.Template:
    try:
        return _JINJA.from_string(text)
    except jinja2.TemplateSyntaxError as err:
        raise UserError(f"{where}: template line {err.lineno}: {err.message}") from None


def _render(template: jinja2.Template, values: dict[str, Any], where: str) -> str:
    try:
        return template.render(values)
    except jinja2.UndefinedError as err:
        raise UserError(f"{where}: {err.message} (fields of the row: {', '.join(values)})") from None


class ConfiguredMultipleChoice(Task):
    """The task a config file declares; :func:`declare` makes one subclass per file."""

    request_type = "loglikelihood"
    headline = "acc"
    breakdowns = ("subset",)
    config: dict[str, Any]
    source_file: Path

    def __init__(self) -> None:
        self._shots: dict[str, list[dict[str, Any]]] = {}

    def _where(self, section: str) -> str:
        return f"{self.source_file} [{section}]"

    def _files(self, source: DataSource, key: str) -> dict[str, Path]:
        """subset -> file for the path pattern ``data.<key>`` (one file, subset "", without {subset})."""
        pattern = self.config["data"][key]
        if "{subset}" not in pattern:
            return {"": source.require_local(self.dataset, pattern)}
        root = source.require_local(self.dataset, ".")
        head, tail = pattern.split("{subset}", 1)
        found = {}
        for path in root.glob(head + "*" + tail):
            relative = path.relative_to(root).as_posix()
            found[relative[len(head): len(relative) - len(tail)]] = path
        if not found:
            raise UserError(f"{self._where('data')}: no file matches {key} = {pattern!r} under {root}")
        return dict(sorted(found.items()))

    def _rows(self, path: Path) -> list[dict[str, Any]]:
        if path.suffix == ".csv":
            columns = _require(self.config["data"], "columns", list, self._where("data"))
            return [dict(zip(columns, row, strict=True)) for _, row in read_csv(path, len(columns))]
        rows = read_jsonl(path) if path.suffix in (".jsonl", ".gz") else read_json(path)
        if not isinstance(rows, list):
            raise UserError(f"{path}: expected a list of rows")
        return rows

    def _item(self, row: dict[str, Any], subset: str, where: str) -> dict[str, Any]:
        """A row as template values plus its ``choices`` and 0-based ``answer``."""
        spec = self.config["doc"]
        fields = spec["choices"] if isinstance(spec["choices"], list) else [spec["choices"]]
        missing = [f for f in [*fields, spec["answer"]] if f not in row]
        if missing:
            raise UserError(f"{where}: missing field(s) {', '.join(missing)}")
        choices = [row[f] for f in fields] if isinstance(spec["choices"], list) else list(row[fields[0]])
        answer = row[spec["answer"]]
        if isinstance(answer, int) and 0 <= answer < len(choices):
            index = answer
        elif isinstance(answer, str) and len(answer) == 1 and answer in LETTERS[: len(choices)]:
            index = LETTERS.index(answer)
        elif answer in choices:
            index = choices.index(answer)
        else:
            raise UserError(f"{where}: answer {answer!r} is neither a letter, an index nor one of the choices")
        return {**row, "choices": choices, "answer": index, "subset": subset}

    def load(self, source: DataSource) -> list[Doc]:
        if "fewshot" in self.config["data"]:
            for subset, path in self._files(source, "fewshot").items():
                self._shots[subset] = [self._item(r, subset, f"{path}: row {i + 1}") for i, r in enumerate(self._rows(path))]
        docs = []
        for subset, path in self._files(source, "test").items():
            for i, row in enumerate(self._rows(path)):
                item = self._item(row, subset, f"{path}: row {i + 1}")
                docs.append(Doc(id=f"{self.name}/test/{len(docs)}", data=item, target=item["answer"], group=subset, fields={"subset": subset}))
        return docs

    def _continuations(self, item: dict[str, Any]) -> list[str]:
        template = self._templates["continuation"]
        return [_render(template, {**item, "letter": LETTERS[i], "choice": c}, self._where("prompt"))
                for i, c in enumerate(item["choices"])]

    def build(self, doc: Doc, ctx: PromptContext) -> tuple[str, list[LoglikelihoodRequest]]:
        shots = take_shots(self._shots.get(doc.data["subset"], []), ctx.shots, f"{self.name}'s few-shot file for {doc.data['subset']!r}")
        question = self._templates["question"]
        blocks = [_render(question, s, self._where("prompt")) + self._continuations(s)[s["answer"]] for s in shots]
        text = _render(self._templates["description"], doc.data, self._where("prompt"))
        text += self.config["prompt"].get("shot_separator", "\n\n").join([*blocks, _render(question, doc.data, self._where("prompt"))])
        prompt = ctx.as_prompt(text)
        continuations = [c.lstrip() if ctx.chat else c for c in self._continuations(doc.data)]
        return prompt, [LoglikelihoodRequest(prompt, c) for c in continuations]

    def score(self, samples: Sequence[Sample]) -> list[dict[str, float]]:
        out = []
        for sample in samples:
            scores = sample.loglikelihoods or []
            out.append({"acc": float(max(range(len(scores)), key=scores.__getitem__) == sample.target)})
        return out

    def summarize(self, samples: Sequence[Sample]) -> Summary:
        summary = super().summarize(samples)
        if self.config.get("macro"):
            add_macro(summary, samples, "acc", "subset", "acc_macro")
        return summary


def declare(path: Path) -> type[Task]:
    """Read a task config and register the task it declares."""
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8")) if path.suffix == ".toml" else json.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a valid task config ({err})") from None
    for section in ("data", "doc", "prompt"):
        _require(config, section, dict, str(path))
    _require(config["data"], "test", str, f"{path} [data]")
    _require(config["doc"], "answer", str, f"{path} [doc]")
    if not isinstance(config["doc"].get("choices"), (list, str)):
        raise UserError(f"{path} [doc]: field 'choices' must be a list of fields or one field name")
    _require(config["prompt"], "question", str, f"{path} [prompt]")
    templates = {key: _template(config["prompt"].get(key, default), f"{path} [prompt] {key}")
                 for key, default in (("description", ""), ("question", ""), ("continuation", " {{ letter }}"))}
    attributes = {
        "name": _require(config, "name", str, str(path)),
        "display_name": str(config.get("display_name", config["name"])),
        "metric_label": str(config.get("metric_label", "Acc.")),
        "category": str(config.get("category", "")),
        "version": str(config.get("version", "1")),
        "default_shots": int(config.get("shots", 0)),
        "dataset": DatasetSpec(hub_id=f"(config {path.name})", split="test", local=config["data"]["test"]),
        "config": config,
        "source_file": path,
        "_templates": templates,
    }
    return register_task(type(f"Configured_{config['name']}", (ConfiguredMultipleChoice,), attributes))


def config_files() -> list[Path]:
    """The configs of ``configs/tasks`` and of ``$DSEVAL_TASK_CONFIGS`` (folders or files)."""
    extra = [Path(p).expanduser() for p in os.environ.get("DSEVAL_TASK_CONFIGS", "").split(os.pathsep) if p]
    files: list[Path] = []
    for place in [*CONFIG_DIRS, *extra]:
        if place.is_dir():
            files += sorted(p for p in place.iterdir() if p.suffix in (".toml", ".json"))
        elif place.is_file():
            files.append(place)
        elif place not in CONFIG_DIRS:
            raise UserError(f"$DSEVAL_TASK_CONFIGS names {place}, which does not exist")
    return files


for _path in config_files():
    declare(_path)
