"""Tokenizer of a checkpoint: ``tokenizer.json`` through the ``tokenizers`` library and the chat
template of ``tokenizer_config.json`` rendered with jinja2 the way transformers does (sandboxed
environment, ``trim_blocks``/``lstrip_blocks``, variables ``messages``, ``add_generation_prompt``,
``bos_token``, ``eos_token``). No paper section; DeepSeek-V3's template is the one shipped."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _HFTokenizer

from dseval.engine.errors import CheckpointError


def _token_text(value: Any) -> str | None:
    """Special tokens appear as plain strings or as AddedToken dicts in tokenizer_config.json."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """Encode/decode plus the chat template; ``bos_id``/``eos_id`` resolved from the vocabulary."""

    def __init__(self, tokenizer_json: str | Path, tokenizer_config: str | Path | None = None) -> None:
        path = Path(tokenizer_json)
        try:
            self._tok = _HFTokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises bare Exception on bad JSON/models
            raise CheckpointError(f"{path}: cannot load tokenizer: {e}") from None
        cfg: dict[str, Any] = {}
        if tokenizer_config is not None and Path(tokenizer_config).exists():
            try:
                cfg = json.loads(Path(tokenizer_config).read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{tokenizer_config}: not valid JSON: {e}") from None
        self.chat_template: str | None = cfg.get("chat_template")
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        self.add_bos_token = bool(cfg.get("add_bos_token", False))
        self.bos_id = self._tok.token_to_id(self.bos_token) if self.bos_token else None
        self.eos_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None

    @classmethod
    def from_dir(cls, directory: str | Path) -> Tokenizer:
        d = Path(directory)
        if not (d / "tokenizer.json").is_file():
            raise CheckpointError(f"{d}: tokenizer.json not found")
        return cls(d / "tokenizer.json", d / "tokenizer_config.json")

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer can produce (the model's embedding may be padded beyond this)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of ``text``; special-token strings inside it map to their ids."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """:meth:`encode` of each text (no BOS), in one call that tokenizes on all cores."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of ``text`` and each token's (start, end) character span in it."""
        encoding = self._tok.encode(text, add_special_tokens=False)
        return list(encoding.ids), [tuple(span) for span in encoding.offsets]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    @cached_property
    def _compiled_template(self) -> Any:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        assert self.chat_template is not None
        return env.from_string(self.chat_template)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt string for ``messages``; ends with the assistant tag when asked."""
        if not self.chat_template:
            raise CheckpointError("tokenizer_config.json has no chat_template")
        return self._compiled_template.render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "",
        )
