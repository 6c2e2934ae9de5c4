"""Tokenizer of a checkpoint: ``tokenizer.json`` through the ``tokenizers`` library and the chat
template of ``tokenizer_config.json`` rendered with jinja2 the way transformers does (sandboxed
environment, ``trim_blocks``/``lstrip_blocks``, variables ``messages``, ``add_generation_prompt``,
``bos_token``, ``eos_token``). No paper section; DeepSeek-V3's template is the one shipped."""

from __future__ import annotations

import hashlib
import json
import string
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders

from dseval.engine.errors import CheckpointError


def _token_text(value: Any) -> str | None:
    """Special tokens appear as plain strings or as AddedToken dicts in tokenizer_config.json."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


#: sha256 of the ``pre_tokenizer`` JSON of tokenizers whose splitting was checked to break at
#: every newline followed by a letter, digit or punctuation mark, whatever follows: DeepSeek-V3's
#: (digits in runs of 1-3, CJK runs, then a GPT-style regex whose alternatives that can hold a
#: newline all end before the next non-space character; no look-behind).
LINE_SAFE_PRE_TOKENIZERS = frozenset({"d8d32910cbb77e54a181e9b3f9a6808eed7fc330747bbcd913ef8c390bc1c9f9"})
#: A line starting with one of these begins a new pre-token in such a tokenizer.
_LINE_START = frozenset(string.punctuation)


#: What a byte-level decoder writes for bytes that are not (yet) a whole UTF-8 character.
REPLACEMENT = "\ufffd"


def _pre_tokenizer_digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config.get("pre_tokenizer"), sort_keys=True).encode()).hexdigest()


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
        self.line_safe = self._is_line_safe(path)
        #: A byte-level decoder decodes ids as their bytes joined; others may edit the joined text.
        self.byte_level = isinstance(self._tok.decoder, decoders.ByteLevel)
        self._pieces: dict[int, str | None] = {}

    @staticmethod
    def _is_line_safe(path: Path) -> bool:
        """Whether encoding may restart at a line start (:meth:`encode_extended`): a checked
        pre-tokenizer, no normalizer, and no added token that holds whitespace or absorbs its
        neighbours' (which could reach across a newline)."""
        try:
            config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        normalizer = config.get("normalizer")
        if normalizer and normalizer.get("normalizers", None) != []:
            return False
        for added in config.get("added_tokens", []):
            content = added.get("content", "")
            if added.get("lstrip") or added.get("rstrip") or added.get("single_word") or content != "".join(content.split()):
                return False
        return _pre_tokenizer_digest(config) in LINE_SAFE_PRE_TOKENIZERS

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

    def encode_extended(self, heads: list[str], tails: list[tuple[int, str]]) -> tuple[list[list[int]], list[list[int]]]:
        """The ids of each head, and for each ``(i, tail)`` the ids of ``heads[i] + tail``
        encoded as one text (a tail's first token may merge with the head's last).

        Many tails per head (the choices of a question after its few-shot prompt) would encode
        the head again each time. With a line-safe tokenizer the ids of a head up to the start
        of its last line are the same in ``head + tail`` whatever the tail, so only the last
        line plus the tail is encoded per tail; otherwise each joined text is encoded whole."""
        cuts = [self._last_line(h) if self.line_safe else 0 for h in heads]
        lines = [h[k:] for h, k in zip(heads, cuts) if k]
        joined = [heads[i][cuts[i]:] + tail for i, tail in tails]
        encoded = self.encode_batch(heads + lines + joined)
        head_ids = encoded[: len(heads)]
        line_ids = iter(encoded[len(heads): len(heads) + len(lines)])
        kept = [ids[: len(ids) - len(next(line_ids))] if k else [] for ids, k in zip(head_ids, cuts)]
        return head_ids, [kept[i] + ids for (i, _), ids in zip(tails, encoded[len(heads) + len(lines):])]

    @staticmethod
    def _last_line(text: str) -> int:
        """Where the last line of ``text`` starts, if a letter, digit or punctuation mark
        starts it (a pre-token boundary then); else 0."""
        k = text.rfind("\n") + 1
        return k if 0 < k < len(text) and (text[k].isalnum() or text[k] in _LINE_START) else 0

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of ``text`` and each token's (start, end) character span in it."""
        encoding = self._tok.encode(text, add_special_tokens=False)
        return list(encoding.ids), [tuple(span) for span in encoding.offsets]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def piece(self, token_id: int) -> str | None:
        """The text ``token_id`` adds to any decoded text it ends, or None where that is not
        fixed. Under a byte-level decoder the text of ids is their bytes joined and decoded, so
        a token whose bytes are whole UTF-8 characters always adds its own decoding; one that
        carries part of a character (it decodes to U+FFFD alone), or any token of another
        decoder (a leading-space marker depends on the position), has no fixed piece."""
        if token_id not in self._pieces:
            text = self.decode([token_id]) if self.byte_level else REPLACEMENT
            self._pieces[token_id] = None if REPLACEMENT in text else text
        return self._pieces[token_id]

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
