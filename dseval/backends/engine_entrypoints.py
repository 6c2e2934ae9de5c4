"""The engine's own entry points, in the spirit of DeepSeek's ``generate.py``:
``dseval generate`` (a file of prompts -> JSON lines) and ``dseval chat`` (interactive).

Both go through :class:`EngineBackend` so the tokenisation rules (one BOS, chat template) are
the ones evaluation runs use.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

from dseval.backends.base import BackendOptions
from dseval.backends.engine import EngineBackend, user_errors
from dseval.engine.api import GenerationOutput, SamplingParams
from dseval.errors import UserError


def read_prompts(input_file: Path) -> list[str]:
    """Prompts of ``input_file``: one per non-empty line, or, when the first non-empty line
    starts with ``{``, JSONL whose objects carry a string ``prompt`` (deciding per file, not
    per line, so a text prompt that happens to start with ``{`` is never misread)."""
    try:
        lines = input_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{input_file}: input file not found") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{input_file}: not UTF-8 text: {e}") from None
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise UserError(f"{input_file}: no prompts (the file is empty)")
    if not numbered[0][1].lstrip().startswith("{"):
        return [line for _, line in numbered]
    prompts = []
    for n, line in numbered:
        try:
            obj: Any = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{input_file}:{n}: not valid JSON: {e.msg}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise UserError(f"{input_file}:{n}: expected a JSON object with a string field 'prompt'")
        prompts.append(obj["prompt"])
    return prompts


def generate_file(
    model_spec: str,
    input_file: Path,
    output_file: Path | None,
    max_new_tokens: int,
    temperature: float,
    chat: bool,
    options: BackendOptions,
    seed: int = 0,
) -> None:
    """Generate for every prompt of ``input_file``; write one JSON line per prompt, in input
    order, with ``prompt``, ``prompt_token_ids``, ``output`` and ``output_token_ids`` (to
    ``output_file``, else stdout). Lines are written as soon as all earlier ones are done, so
    an interrupted run keeps its finished prefix."""
    if max_new_tokens < 1:
        raise UserError(f"option 'max_new_tokens' must be >= 1, got {max_new_tokens}")
    prompts = read_prompts(input_file)
    with user_errors():
        params = SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=seed)
    backend = EngineBackend.from_spec(model_spec.removeprefix("engine:"), options)
    try:
        texts = [backend.apply_chat_template([{"role": "user", "content": p}]) if chat else p for p in prompts]
        ids = backend.encode_prompts(texts)
        sink: IO[str] = output_file.open("w", encoding="utf-8") if output_file else sys.stdout
        try:
            pending: dict[int, GenerationOutput] = {}
            next_line = 0

            def on_finish(i: int, out: GenerationOutput) -> None:
                nonlocal next_line
                pending[i] = out
                while next_line in pending:
                    o = pending.pop(next_line)
                    row = {"prompt": prompts[next_line], "prompt_token_ids": o.prompt_token_ids,
                           "output": o.text, "output_token_ids": o.token_ids}
                    sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                    sink.flush()
                    next_line += 1

            backend.generate_ids(ids, [params] * len(ids), on_finish)
        finally:
            if output_file:
                sink.close()
    finally:
        backend.close()


def chat_loop(model_spec: str, options: BackendOptions, max_new_tokens: int, temperature: float, seed: int = 0,
              stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> None:
    """Interactive chat: each stdin line is a user turn answered with the chat template over
    the whole conversation; ``/clear`` forgets the conversation, ``/exit`` (or end of input)
    quits. Earlier turns stay in the prefix cache, so a reply costs only the new turn."""
    if max_new_tokens < 1:
        raise UserError(f"option 'max_new_tokens' must be >= 1, got {max_new_tokens}")
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    with user_errors():
        params = SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=seed)
    backend = EngineBackend.from_spec(model_spec.removeprefix("engine:"), options)
    messages: list[dict[str, str]] = []
    try:
        while True:
            stdout.write(">>> ")
            stdout.flush()
            line = stdin.readline()
            if not line:
                break
            text = line.rstrip("\n")
            if text.strip() == "/exit":
                break
            if text.strip() == "/clear":
                messages.clear()
                stdout.write("(conversation cleared)\n")
                continue
            if not text.strip():
                continue
            messages.append({"role": "user", "content": text})
            ids = backend.encode_prompt(backend.apply_chat_template(messages))
            reply = backend.generate_ids([ids], [params])[0].text
            messages.append({"role": "assistant", "content": reply})
            stdout.write(reply + "\n")
            stdout.flush()
    finally:
        backend.close()
