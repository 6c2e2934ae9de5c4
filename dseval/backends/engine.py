"""The harness backend of the built-in engine: typed harness requests -> engine requests.

Tokenisation rules live here, not in the engine, because they are the harness's contract:

* **BOS.** DeepSeek-V3's ``tokenizer_config.json`` says ``add_bos_token: false`` because its
  chat template writes the BOS itself; the model was nevertheless trained with BOS at the start
  of every document. So every request the engine sees starts with BOS: prepended to raw
  prompts and loglikelihood contexts, not doubled when the text already begins with it (a
  rendered chat template).
* **Loglikelihood boundary** (lm-evaluation-harness's rule, see
  :class:`dseval.requests.LoglikelihoodRequest`): trailing whitespace of the context moves to
  the front of the continuation; ``context + continuation`` is encoded whole and the
  continuation is the tokens past ``len(encode(context))``; an empty context is scored right
  after BOS.
* **Too long.** Inputs beyond the context limit lose their oldest tokens (just after the BOS,
  which stays), as lm-evaluation-harness truncates from the left; the continuation (or room
  for ``max_tokens``) is always kept.

Requests that share a context are submitted next to each other, so the prefix cache computes
the shared context once for all of a question's choices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from collections.abc import Sequence as Seq
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import torch

from dseval.backends.base import BackendOptions, LiveGeneration, ModelBackend, OnResult, PromptToken
from dseval.engine.api import (
    LLM,
    EngineConfig,
    EngineError,
    PREFILL_BACKENDS,
    GenerationOutput,
    LiveSession,
    ParallelContext,
    SamplingParams,
    ScoreRequest,
    default_device,
)
from dseval.engine.loading.loader import resolve_checkpoint_dir
from dseval.errors import UserError
from dseval.gc_policy import bulk_building
from dseval.provenance import checkpoint_fingerprint
from dseval.requests import (
    ChatRequest,
    GenerateRequest,
    GenerateResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    LoglikelihoodRollingRequest,
    LoglikelihoodRollingResult,
)

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


@contextmanager
def user_errors(context: str = "") -> Iterator[None]:
    """The engine's bad-input errors as the harness's :class:`UserError` (one line, exit 2),
    prefixed with ``context``; anything else stays a bug with its traceback."""
    try:
        yield
    except EngineError as e:
        raise UserError(f"{context}{e}") from None


def parse_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The compute dtype: as named, else float32 on CPU (bf16 matmuls are slow and inexact
    there) and bfloat16 on GPU (the checkpoint's own precision)."""
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise UserError(f"option 'dtype' must be one of {sorted(_DTYPES)}, got {name!r}") from None


def resolve_device(name: str | None) -> torch.device:
    """--device as a torch device, refused at once when this machine lacks it."""
    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name!r} is not a torch device ({e}); use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible to torch on this machine; use --device cpu "
                        f"or check CUDA_VISIBLE_DEVICES and the driver")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible; pick an index below that")
    return device


def rolling_windows(length: int, max_len: int, first: int) -> list[tuple[int, int, int]]:
    """Windows ``(begin, start, end)`` that score positions ``first..length-1`` of a token
    sequence exactly once: each window feeds ``tokens[begin:end]`` (at most ``max_len``) and
    scores ``tokens[start:end]``. As lm-evaluation-harness's disjoint rolling windows, a full
    window scores ``max_len - 1`` tokens after one token of context, and the last, shorter one
    is topped up with preceding tokens to the full length."""
    windows, start = [], first
    while start < length:
        end = min(start + max_len - 1, length)
        begin = max(0, end - max_len)
        windows.append((begin, start, end))
        start = end
    return windows



class EngineBackend(ModelBackend):
    """Answers harness requests with an in-process :class:`LLM`."""

    spec_help = "built-in DeepSeek-V3 engine: a checkpoint folder or a preset name (tiny)"

    def __init__(self, llm: LLM, name: str = "") -> None:
        if llm.tokenizer is None:
            raise UserError(f"model {name!r} has no tokenizer; the engine backend needs one")
        self.llm = llm
        self.tokenizer = llm.tokenizer
        bos = getattr(self.tokenizer, "bos_id", None)
        self.bos_id: int | None = bos if bos is not None else getattr(llm.config, "bos_token_id", None)
        self.description = f"engine:{name} on {llm.device} ({str(llm.dtype).removeprefix('torch.')})"
        if not llm.model.parallel.is_single:  # run.json says how the replica was split
            self.description += f", {llm.model.parallel.describe()}"

    @classmethod
    def from_spec(cls, arg: str, options: BackendOptions) -> EngineBackend:
        """``arg`` is a checkpoint folder or a preset name (``tiny``)."""
        device = resolve_device(options.device)
        dtype = parse_dtype(options.dtype, device)
        if options.prefill_attention not in PREFILL_BACKENDS:
            raise UserError(f"--prefill-attention must be one of {', '.join(PREFILL_BACKENDS)}, "
                            f"got {options.prefill_attention!r}")
        with user_errors("model options: "):  # the engine's config owns the defaults (None) and checks of its knobs
            ec = EngineConfig(max_num_seqs=options.batch_size, speculative=options.speculative,
                              max_num_batched_tokens=options.max_num_batched_tokens,
                              prefill_attention=options.prefill_attention)
        with user_errors():
            # --tp/--ep/--moe-comm: docs/parallelism.md
            layout = {"moe_comm": options.moe_comm} if options.moe_comm else {}
            parallel = ParallelContext.from_options(options.tp, options.ep, **layout)  # type: ignore[arg-type]
            llm = LLM(arg, ec, device=device, dtype=dtype, parallel=parallel)
        if ec.prefill_attention == "fp8":  # checked on every device, so a CPU trial run catches it too
            from dseval.kernels.mla_prefill_fp8 import check_head_dims  # lazy: loads Triton

            c = llm.config
            try:
                check_head_dims(c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim)
            except ValueError as e:
                raise UserError(f"--prefill-attention fp8 cannot run model {arg!r}: {e}") from None
        backend = cls(llm, arg)
        backend.fingerprint = checkpoint_fingerprint(resolve_checkpoint_dir(arg))
        return backend

    # ------------------------------------------------------------------ tokenisation
    def encode_prompts(self, texts: Seq[str]) -> list[list[int]]:
        """Prompt ids with exactly one leading BOS (a rendered chat template already has it),
        all texts tokenized in one batch."""
        out = []
        for ids in self.tokenizer.encode_batch(list(texts)):
            if self.bos_id is not None and (not ids or ids[0] != self.bos_id):
                ids = [self.bos_id] + ids
            if not ids:
                raise UserError("empty prompt and the tokenizer has no BOS token")
            out.append(ids)
        return out

    def encode_prompt(self, text: str) -> list[int]:
        """:meth:`encode_prompts` of one text."""
        return self.encode_prompts([text])[0]

    @staticmethod
    def split_pair(context: str, continuation: str) -> tuple[str, str]:
        """The documented boundary rule: trailing whitespace of the context moves to the front
        of the continuation."""
        stripped = context.rstrip()
        return stripped, context[len(stripped):] + continuation

    def encode_pairs(self, pairs: Seq[tuple[str, str]]) -> list[tuple[list[int], int]]:
        """(tokens, index of the first continuation token) of each (context, continuation), by
        the documented boundary rule; every text tokenized in one batch, each distinct
        context once (a question's choices share theirs)."""
        split = [self.split_pair(c, x) for c, x in pairs]
        index = {c: i for i, c in enumerate(dict.fromkeys(c for c, _ in split))}
        contexts, wholes = self.tokenizer.encode_extended(list(index), [(index[c], x) for c, x in split])
        return [self._fit_pair(whole, len(contexts[index[c]])) for (c, _), whole in zip(split, wholes)]

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], int]:
        """:meth:`encode_pairs` of one pair."""
        return self.encode_pairs([(context, continuation)])[0]

    def _fit_pair(self, whole: list[int], n_ctx: int) -> tuple[list[int], int]:
        """BOS + ``whole`` and its continuation's start, cut from the left to the context limit."""
        head = [self.bos_id] if self.bos_id is not None else []
        if not head and n_ctx == 0:
            raise UserError("loglikelihood with an empty context needs a BOS token, and the tokenizer has none")
        tokens, start = head + whole, len(head) + n_ctx
        limit = self.llm.max_model_len
        if len(tokens) > limit:
            cut = len(tokens) - limit  # oldest context tokens, after the BOS
            if len(head) + cut >= start:
                raise UserError(f"loglikelihood continuation of {len(tokens) - start} tokens does not fit the "
                                f"context limit of {limit} tokens")
            tokens, start = head + tokens[len(head) + cut :], start - cut
        return tokens, start

    # ------------------------------------------------------------------ requests
    def loglikelihood(
        self, requests: Seq[LoglikelihoodRequest], on_result: OnResult[LoglikelihoodResult] | None = None
    ) -> list[LoglikelihoodResult]:
        results: list[LoglikelihoodResult | None] = [None] * len(requests)

        def emit(i: int, r: LoglikelihoodResult) -> None:
            results[i] = r
            if on_result is not None:
                on_result(i, r)

        # Group by context, groups in order of first appearance: choices of one question run
        # side by side and their shared context hits the prefix cache.
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(req.context.rstrip(), []).append(i)
        order = [i for members in groups.values() for i in members]
        score_reqs: list[ScoreRequest] = []
        index: list[int] = []
        with bulk_building():
            encoded = self.encode_pairs([(requests[i].context, requests[i].continuation) for i in order])
            for i, (tokens, start) in zip(order, encoded):
                if start >= len(tokens):  # empty continuation: probability 1
                    emit(i, LoglikelihoodResult(0.0, True))
                    continue
                score_reqs.append(ScoreRequest(tuple(tokens), start))
                index.append(i)
        with user_errors():
            self.llm.score(score_reqs, lambda k, out: emit(
                index[k], LoglikelihoodResult(out.logprob, out.is_greedy, len(score_reqs[k].token_ids))))
        return [r for r in results if r is not None]

    def loglikelihood_rolling(
        self, requests: Seq[LoglikelihoodRollingRequest], on_result: OnResult[LoglikelihoodRollingResult] | None = None
    ) -> list[LoglikelihoodRollingResult]:
        """Each text as ``[BOS] + tokens`` cut into :func:`rolling_windows` of the context
        length; a text's result is the sum over its windows. Without a BOS token the first
        token has no context and is not scored (``num_tokens`` says how many were)."""
        head = [self.bos_id] if self.bos_id is not None else []
        results: list[LoglikelihoodRollingResult | None] = [None] * len(requests)
        total = [0.0] * len(requests)
        pending = [0] * len(requests)
        scored = [0] * len(requests)
        score_reqs: list[ScoreRequest] = []
        owner: list[int] = []

        def finish(i: int) -> None:
            results[i] = LoglikelihoodRollingResult(total[i], scored[i])
            if on_result is not None:
                on_result(i, results[i])

        for i, ids in enumerate(self.tokenizer.encode_batch([r.text for r in requests])):
            tokens = head + ids
            for begin, start, end in rolling_windows(len(tokens), self.llm.max_model_len, 1):
                score_reqs.append(ScoreRequest(tuple(tokens[begin:end]), start - begin))
                owner.append(i)
                pending[i] += 1
                scored[i] += end - start
            if pending[i] == 0:  # empty text: nothing to score
                finish(i)

        def done(k: int, out: Any) -> None:
            i = owner[k]
            total[i] += out.logprob
            pending[i] -= 1
            if pending[i] == 0:
                finish(i)

        with user_errors():
            self.llm.score(score_reqs, done)
        return [r for r in results if r is not None]

    def generate_ids(
        self,
        prompts: Seq[list[int]],
        params: Seq[SamplingParams],
        on_finish: Callable[[int, GenerationOutput], None] | None = None,
    ) -> list[GenerationOutput]:
        """Token-level generation (the ``dseval generate`` entry point needs the ids)."""
        fitted = [self.fit_prompt(ids, p) for ids, p in zip(prompts, params)]
        with user_errors():
            return self.llm.generate(fitted, list(params), on_finish)

    def fit_prompt(self, ids: list[int], params: SamplingParams) -> list[int]:
        """``ids`` without the oldest tokens (a leading BOS stays) that leave no room for
        ``max_tokens`` in the context."""
        keep = max(2, self.llm.max_model_len - max(params.max_tokens, 1))
        if len(ids) <= keep:
            return ids
        return ids[:1] + ids[len(ids) - keep + 1 :] if ids[0] == self.bos_id else ids[-keep:]

    @staticmethod
    def sampling_params(request: GenerateRequest) -> SamplingParams:
        """The engine's sampling of a harness request."""
        r = request
        with user_errors("generate request: "):
            return SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, seed=r.seed,
                                  max_tokens=r.max_tokens, stop=tuple(r.stop))

    def generate(
        self, requests: Seq[GenerateRequest], on_result: OnResult[GenerateResult] | None = None
    ) -> list[GenerateResult]:
        params = [self.sampling_params(r) for r in requests]
        prompts = self.encode_prompts([r.prompt for r in requests])
        results: list[GenerateResult | None] = [None] * len(requests)

        def done(i: int, out: GenerationOutput) -> None:
            res = generate_result(out)
            results[i] = res
            if on_result is not None:
                on_result(i, res)

        self.generate_ids(prompts, params, done)
        return [r for r in results if r is not None]

    def live(self) -> LiveGeneration | None:
        """Continuous generation over this engine; None for a model split over ranks, whose
        steps every rank must take in lockstep (``dseval serve`` batches those calls)."""
        return EngineLive(self) if self.llm.model.parallel.is_single else None

    def stats(self) -> dict[str, Any]:
        counters = self.llm.stats
        return {**asdict(counters), "acceptance_rate": counters.acceptance_rate}

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> str:
        return self.tokenizer.apply_chat_template(messages)

    def prompt_logprobs(self, prompt: str, completion: str = "") -> list[PromptToken]:
        """The prompt's tokens after the leading BOS (added as for every engine request, and
        echoed as the first token with no log-probability), then the completion's, encoded
        on their own as generation produced them (encoded together, a completion's first
        token could merge with the prompt's last)."""
        ids, spans = self.tokenizer.encode_with_offsets(prompt)
        if self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids, spans = [self.bos_id] + ids, [(0, 0)] + spans
        if completion:
            more, more_spans = self.tokenizer.encode_with_offsets(completion)
            ids, spans = ids + more, spans + [(a + len(prompt), b + len(prompt)) for a, b in more_spans]
        prompt += completion
        if len(ids) > self.llm.max_model_len:
            raise UserError(f"prompt of {len(ids)} tokens exceeds the context limit of {self.llm.max_model_len}")
        first = PromptToken(prompt[spans[0][0]:spans[0][1]], spans[0][0], None, None, None)
        if len(ids) < 2:
            return [first]
        with user_errors():
            (scored,) = self.llm.score([ScoreRequest(tuple(ids), 1)])
        return [first] + [
            PromptToken(prompt[a:b], a, t.logprob, self.tokenizer.decode([t.top_id]), t.top_logprob)
            for (a, b), t in zip(spans[1:], scored.tokens, strict=True)
        ]

    def close(self) -> None:
        del self.llm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def generate_result(out: GenerationOutput) -> GenerateResult:
    """The harness's result of an engine output."""
    return GenerateResult(out.text, len(out.token_ids), out.finish_reason, len(out.prompt_token_ids))


class EngineLive(LiveGeneration):
    """:class:`LiveGeneration` over the engine's :class:`LiveSession`, with the backend's
    tokenisation rules (BOS, left truncation, chat template)."""

    def __init__(self, backend: EngineBackend) -> None:
        self.backend = backend
        self.session = LiveSession(backend.llm)

    def add(self, request: GenerateRequest, on_done: Callable[[GenerateResult], None],
            on_text: Callable[[str], None] | None = None) -> object:
        if isinstance(request, ChatRequest):
            request = request.rendered(self.backend.apply_chat_template(list(request.messages)))
        params = self.backend.sampling_params(request)
        ids = self.backend.fit_prompt(self.backend.encode_prompt(request.prompt), params)
        with user_errors("generate request: "):
            return self.session.add(ids, params, lambda out: on_done(generate_result(out)), on_text)

    def abort(self, handle: Any) -> None:  # the engine Sequence that add returned
        self.session.abort(handle)

    def busy(self) -> bool:
        return self.session.has_work()

    def step(self) -> None:
        with user_errors():
            self.session.step()
