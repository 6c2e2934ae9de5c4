"""Generation that never stops to take requests: they join and leave between model steps, and
each one's text is handed out as it decodes.

:meth:`LLM.generate` takes a whole list and returns when all of it is done. A server needs more:
a request that arrives while others generate must start on the next step (continuous batching
across callers, not batches that wait for each other), each request's new text must go out
after every step (streaming), and a request whose client went away must leave at once and give
its KV blocks back. :class:`LiveSession` drives :meth:`LLM.step` that way. It is not
thread-safe: one thread owns the LLM and calls :meth:`~LiveSession.add`,
:meth:`~LiveSession.abort` and :meth:`~LiveSession.step`; while a session has work, nothing
else may run the LLM (``LLM.generate``/``LLM.score`` would run the session's sequences too).

Streamed text is exactly the text :meth:`LLM.generate` returns, cut into pieces: a piece never
ends inside a UTF-8 character (:class:`IncrementalDetokenizer`) and never holds what may be the
beginning of a stop string (the engine cuts the output before a stop string, so text sent
before the stop string is complete could not be taken back).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dseval.engine.errors import RequestError
from dseval.engine.loading.tokenizer import REPLACEMENT, Tokenizer
from dseval.engine.runtime.llm import LLM
from dseval.engine.runtime.outputs import GenerationOutput
from dseval.engine.runtime.sequence import SamplingParams, Sequence


class IncrementalDetokenizer:
    """The text of a growing list of token ids, one new piece per call, without decoding the
    whole list each time (that is quadratic in the output length).

    A byte-level BPE token may carry part of a UTF-8 character; decoded before the rest
    arrives, it reads as U+FFFD, which the next token would then have to take back. So text
    that ends in U+FFFD is held until a later token completes the character. Each call decodes
    a short window: the tokens of the previous piece (context for decoders whose output
    depends on the token before, such as a leading-space marker) and the new ones; the new
    piece is what the window adds to the previous piece's text.
    """

    def __init__(self, tokenizer: Tokenizer, start: int = 0) -> None:
        self.tokenizer = tokenizer
        #: The window starts here; text of tokens before it has been handed out.
        self.prefix = start
        #: Tokens before this have been handed out.
        self.read = start

    def push(self, ids: list[int]) -> str:
        """The text that ``ids[self.read:]`` adds (``ids`` is the whole, growing list);
        empty while it ends inside a character."""
        if len(ids) == self.read:
            return ""
        before = self.tokenizer.decode(ids[self.prefix : self.read])
        after = self.tokenizer.decode(ids[self.prefix :])
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return ""
        self.prefix, self.read = self.read, len(ids)
        return after[len(before) :]


def stop_prefix_length(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that begins one of ``stops`` (but is not a whole
    one): that much must wait, as the next token may complete the stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


OnText = Callable[[str], None]
OnFinish = Callable[[GenerationOutput], None]


@dataclass
class _Stream:
    """A live request's callbacks and how much of its text went out."""

    on_text: OnText | None
    on_finish: OnFinish
    detokenizer: IncrementalDetokenizer | None
    #: Decoded but not sent: it may be the beginning of a stop string.
    held: str = ""
    #: Characters sent so far.
    sent: int = 0


class LiveSession:
    """Requests added and aborted between the steps of one LLM (see the module docstring)."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self._streams: dict[int, tuple[Sequence, _Stream]] = {}

    def add(self, prompt_ids: list[int], params: SamplingParams, on_finish: OnFinish,
            on_text: OnText | None = None) -> Sequence:
        """Queue one request; it starts on the next step. ``on_text(piece)`` gets its text as it
        decodes (the pieces join to the output's text), then ``on_finish(output)`` fires once.
        Raises :class:`RequestError` for a request the engine cannot take."""
        llm = self.llm
        if len(prompt_ids) >= llm.max_model_len:
            raise RequestError(f"prompt has {len(prompt_ids)} tokens; the context limit is {llm.max_model_len}")
        if params.stop and llm.tokenizer is None:
            raise RequestError("stop strings need a tokenizer")
        seq = Sequence(list(prompt_ids), params)
        llm.scheduler.add(seq)
        streaming = on_text is not None and llm.tokenizer is not None
        detokenizer = IncrementalDetokenizer(llm.tokenizer, len(prompt_ids)) if streaming else None
        self._streams[seq.seq_id] = (seq, _Stream(on_text, on_finish, detokenizer))
        return seq

    def abort(self, seq: Sequence) -> None:
        """Drop ``seq`` (no callback fires) and free its KV blocks now. A step in flight that
        computes a row for it still writes those blocks, before any later step that reuses
        them (steps run in order); the engine then skips its token."""
        if self._streams.pop(seq.seq_id, None) is not None:  # else it finished already
            self.llm.scheduler.abort(seq)
            if not self.llm.scheduler.has_work():
                self.llm.drain()  # its step in flight: nothing left to compute

    def has_work(self) -> bool:
        return self.llm.scheduler.has_work()

    def step(self) -> None:
        """One engine step, then each live request's new text and each finished one's output.
        On an error every live request is dropped (its blocks freed) and the error raised."""
        llm = self.llm
        try:
            done = llm.step()
            if not llm.scheduler.has_work():  # a step launched ahead (overlap scheduling) that nobody needs
                done += llm.drain()
        except BaseException:
            llm.abort_all()
            self._streams.clear()
            raise
        finished = {seq.seq_id for seq in done}
        for seq_id, (seq, stream) in list(self._streams.items()):
            if seq_id in finished:
                del self._streams[seq_id]
                out = GenerationOutput(seq.token_ids[: seq.num_prompt_tokens], seq.output_token_ids,
                                       seq.output_text, seq.finish_reason or "stop")
                self._send(stream, out.text[stream.sent :])
                stream.on_finish(out)
            elif stream.detokenizer is not None:
                text = stream.held + stream.detokenizer.push(seq.token_ids)
                keep = stop_prefix_length(text, seq.params.stop)
                stream.held = text[len(text) - keep :]
                self._send(stream, text[: len(text) - keep])

    @staticmethod
    def _send(stream: _Stream, text: str) -> None:
        if text and stream.on_text is not None:
            stream.sent += len(text)
            stream.on_text(text)
