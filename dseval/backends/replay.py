"""``replay:PATH``: answer generation and chat requests from saved outputs.

Lets saved or third-party generations be scored exactly like live ones. PATH is JSON Lines of
``{"id": ..., "output": ...}``; a previous run's samples.jsonl works as is (its ``output`` is a
string, or a list when several samples were drawn per doc).
"""

from __future__ import annotations

import json

from collections.abc import Sequence
from pathlib import Path

from dseval.backends.base import BackendOptions, ModelBackend, OnResult
from dseval.data import read_jsonl
from dseval.errors import UserError
from dseval.requests import (
    ChatRequest,
    GenerateRequest,
    GenerateResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    LoglikelihoodRollingRequest,
    LoglikelihoodRollingResult,
)


class ReplayBackend(ModelBackend):
    spec_help = "answers generation requests from a JSONL file of {id, output}"

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise UserError(f"replay file {path} not found")
        self.path = path
        self.description = f"replay of {path}"
        self.outputs: dict[str, list[str]] = {}
        for number, row in enumerate(read_jsonl(path), 1):
            if "id" not in row or "output" not in row:
                raise UserError(f"{path}: record {number} needs fields 'id' and 'output'")
            output = row["output"]
            self.outputs[str(row["id"])] = output if isinstance(output, list) else [output]

    @classmethod
    def from_spec(cls, arg: str, options: BackendOptions) -> ReplayBackend:
        if not arg:
            raise UserError("replay needs a file: --model replay:PATH")
        return cls(Path(arg))

    def generate(self, requests: Sequence[GenerateRequest], on_result: OnResult[GenerateResult] | None = None) -> list[GenerateResult]:
        results = []
        for index, request in enumerate(requests):
            saved = self.outputs.get(request.doc_id)
            if saved is None:
                raise UserError(f"{self.path}: no output for id {request.doc_id!r}")
            if request.sample_index >= len(saved):
                raise UserError(f"{self.path}: id {request.doc_id!r} has {len(saved)} output(s), sample {request.sample_index + 1} was asked for")
            result = GenerateResult(text=saved[request.sample_index])
            results.append(result)
            if on_result:
                on_result(index, result)
        return results

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        """Saved answers need no template: the conversation is recorded as JSON, so chat runs
        (``--chat``) can be rescored from saved outputs and their prompts still say what was
        asked."""
        return json.dumps(messages, ensure_ascii=False)

    def chat(self, requests: Sequence[ChatRequest], on_result: OnResult[GenerateResult] | None = None) -> list[GenerateResult]:
        """Saved answers are looked up by doc id, whatever the prompt was."""
        return self.generate(requests, on_result)

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], on_result: OnResult[LoglikelihoodResult] | None = None
    ) -> list[LoglikelihoodResult]:
        raise UserError("replay: answers generation tasks only; loglikelihood tasks (e.g. mmlu) need a model")

    def loglikelihood_rolling(
        self, requests: Sequence[LoglikelihoodRollingRequest], on_result: OnResult[LoglikelihoodRollingResult] | None = None
    ) -> list[LoglikelihoodRollingResult]:
        raise UserError("replay: answers generation tasks only; perplexity tasks need a model")
