"""When a request is complete: EOS, stop token ids, stop strings, the token limit, the
model's context length, and non-finite logits (finish reason ``"nonfinite"``, the caller's to
report: a generation over NaN logits is not an answer).

Stop strings are checked on the decoded text and the output is cut before the stop string;
the other rules end the output after (EOS and stop tokens: without) the token that met them.
"""

from __future__ import annotations

from dataclasses import dataclass

from dseval.engine.loading.tokenizer import Tokenizer
from dseval.engine.model.config import ModelConfig
from dseval.engine.runtime.sampler import NONFINITE_TOKEN
from dseval.engine.runtime.sequence import Sequence


@dataclass(frozen=True)
class StopRules:
    eos_token_ids: frozenset[int]
    tokenizer: Tokenizer | None
    max_model_len: int

    @classmethod
    def for_model(cls, config: ModelConfig, tokenizer: Tokenizer | None, max_model_len: int) -> StopRules:
        """EOS ids from ``config.json`` and the tokenizer's own EOS, whichever are set."""
        eos = config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        if tokenizer is not None and getattr(tokenizer, "eos_id", None) is not None:
            ids.add(int(tokenizer.eos_id))
        return cls(frozenset(ids), tokenizer, max_model_len)

    def append(self, seq: Sequence, tok: int) -> bool:
        """Append one generated token to ``seq``; whether the request is now complete (then
        ``finish_reason`` and ``output_text`` are set)."""
        if tok == NONFINITE_TOKEN:  # not a token: the output ends before it
            seq.finish_reason = "nonfinite"
            self._set_text(seq, seq.output_token_ids)
            return True
        seq.token_ids.append(tok)
        p = seq.params
        if (not p.ignore_eos and tok in self.eos_token_ids) or tok in p.stop_token_ids:
            seq.finish_reason = "stop"
            self._set_text(seq, seq.output_token_ids[:-1])
            return True
        if p.stop and self.tokenizer is not None and self.may_complete(tok, p.stop):
            # A stop string completed by this token lies in the last few tokens' text; only
            # then is the whole output decoded (keeps long generations linear, not quadratic).
            # Every token is at least one byte, so a string of b bytes ending in this token
            # starts within its last b tokens; one more keeps it off the window's first token,
            # whose decoding may differ at the cut (a partial character, a stripped space).
            # Sliced from token_ids itself: copying the whole output per token is quadratic.
            window = max(len(s.encode()) for s in p.stop) + 1
            tail = self.tokenizer.decode(seq.token_ids[max(seq.num_prompt_tokens, len(seq.token_ids) - window) :])
            if any(s in tail for s in p.stop):
                text = self.tokenizer.decode(seq.output_token_ids)
                cut = min((i for i in (text.find(s) for s in p.stop) if i >= 0), default=-1)
                if cut >= 0:
                    seq.finish_reason, seq.output_text = "stop", text[:cut]
                    return True
        if seq.num_output_tokens >= p.max_tokens or len(seq) >= self.max_model_len:
            seq.finish_reason = "length"
            self._set_text(seq, seq.output_token_ids)
            return True
        return False

    def may_complete(self, tok: int, stops: tuple[str, ...]) -> bool:
        """Whether ``tok`` can complete one of ``stops`` (LLM.generate refuses stop strings
        without a tokenizer). A stop string newly in the text ends inside what this token
        added; where that is fixed (:meth:`Tokenizer.piece`) and holds no stop string's last
        character, none can be, and the tail need not be decoded."""
        assert self.tokenizer is not None
        piece = self.tokenizer.piece(tok)
        return piece is None or any(s[-1] in piece for s in stops)

    def _set_text(self, seq: Sequence, ids: list[int]) -> None:
        seq.output_text = self.tokenizer.decode(ids) if self.tokenizer is not None else ""
