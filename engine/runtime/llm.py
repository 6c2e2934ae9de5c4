"""The engine: requests in, finished outputs out, through schedule -> run -> postprocess steps.

``LLM`` wires the pieces (block manager, scheduler, model runner, sampler, optional MTP speculator,
end-of-request rules) and owns only the step loop. Generation and scoring are the same machinery: a scoring request is a sequence with ``max_tokens`` 0 whose prompt positions past
``logprob_start`` are scored during prefill, so scoring shares batching, chunking and the
prefix cache with generation.

Overlap scheduling (SGLang's idea): a decode step's next step depends on its tokens only
through their values, not their number, so while step N runs the engine already plans step
N+1 (placeholders stand in for N's tokens, whose values reach N+1 on the device) and launches
it before reading N's tokens; the host's bookkeeping of step N then runs while the GPU computes
N+1 instead of between them. A request that stops on step N's token wastes its row of N+1.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq

import torch

from dseval.engine.errors import RequestError
from dseval.engine.loading.loader import load_model
from dseval.engine.loading.tokenizer import Tokenizer
from dseval.engine.model.config import ModelConfig
from dseval.engine.model.fused_weights import prepare_fused_moe
from dseval.engine.model.model import DeepseekV3ForCausalLM
from dseval.engine.parallel.context import ParallelContext
from dseval.engine.runtime.block_manager import BlockManager
from dseval.engine.runtime.engine_config import (EngineConfig, auto_max_num_seqs, auto_num_blocks, default_device,
                                                  default_prefill_tokens, parse_speculative)
from dseval.engine.runtime.model_runner import ModelRunner
from dseval.engine.runtime.outputs import EngineStats, GenerationOutput, ScoreOutput, ScoreRequest
from dseval.engine.runtime.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from dseval.engine.runtime.sequence import SamplingParams, Sequence, SequenceStatus
from dseval.engine.runtime.speculative import MtpSpeculator
from dseval.engine.runtime.step import InflightStep, TokenFeed
from dseval.engine.runtime.stopping import StopRules
from dseval.kernels.mla_prefill import resolve_prefill_attention


class LLM:
    """A loaded model plus its serving runtime.

    ``LLM("tiny")`` or ``LLM("/path/to/checkpoint")`` loads through
    :func:`dseval.engine.loading.loader.load_model`; ``LLM.from_model(model, config, tokenizer)`` wraps
    an already built model (tests).
    """

    def __init__(
        self,
        model_spec: str,
        engine_config: EngineConfig = EngineConfig(),
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        parallel: ParallelContext = ParallelContext(),  # noqa: B008 (frozen) - this rank's TP/EP shard
    ) -> None:
        dev = torch.device(device) if device is not None else default_device()
        if dtype is None:
            dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        # FP8 checkpoints keep FP8 weights only for bf16 compute (the FP8 GEMM takes bf16
        # activations); any other compute dtype gets dequantized weights.
        fp8 = "auto" if dtype == torch.bfloat16 else "dequantize"
        self.stats = EngineStats()
        with self.stats.timed_load("weights"):
            model, config, tokenizer = load_model(model_spec, device=str(dev), dtype=dtype, fp8_weights=fp8,
                                                  parallel=parallel)
        self._setup(model, config, tokenizer, engine_config, dev, dtype)

    @classmethod
    def from_model(
        cls,
        model: DeepseekV3ForCausalLM,
        config: ModelConfig,
        tokenizer: Tokenizer | None = None,
        engine_config: EngineConfig = EngineConfig(),
    ) -> LLM:
        self = cls.__new__(cls)
        self.stats = EngineStats()
        p = next(model.parameters())
        self._setup(model, config, tokenizer, engine_config, p.device, p.dtype)
        return self

    def _setup(self, model: DeepseekV3ForCausalLM, config: ModelConfig, tokenizer: Tokenizer | None,
               ec: EngineConfig, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.config, self.tokenizer = model, config, tokenizer
        self.engine_config = ec
        self.device, self.dtype = device, dtype
        self.max_model_len = ec.max_model_len or int(config.max_position_embeddings)
        spec = parse_speculative(ec.speculative)
        with self.stats.timed_load("prefill_probe"):
            prefill = resolve_prefill_attention(ec.prefill_attention, device, dtype, config.qk_nope_head_dim,
                                                config.qk_rope_head_dim, config.v_head_dim)
        if ec.fused_moe and dtype == torch.bfloat16 and self.device.type == "cuda":
            with self.stats.timed_load("fused_moe"):
                prepare_fused_moe(model)  # before sizing the cache: stacking briefly needs a layer's copy
        per_block = ModelRunner.kv_bytes_per_block(model, config, ec.block_size, dtype)
        num_blocks = ec.num_kv_blocks or auto_num_blocks(ec, per_block, self.max_model_len, device, model.parallel)
        self.max_num_seqs = ec.max_num_seqs or auto_max_num_seqs(device, num_blocks * ec.block_size)
        self.block_manager = BlockManager(num_blocks, ec.block_size, ec.enable_prefix_cache)
        self.scheduler = Scheduler(
            SchedulerConfig(self.max_num_seqs, ec.max_num_batched_tokens or default_prefill_tokens(device),
                            ec.chunked_prefill), self.block_manager
        )
        with self.stats.timed_load("kv_cache"):
            self.runner = ModelRunner(
                model, config, num_blocks=num_blocks, block_size=ec.block_size, max_num_seqs=self.max_num_seqs,
                max_model_len=self.max_model_len, device=device, dtype=dtype,
                cuda_graphs=ec.cuda_graphs, graph_sizes=ec.graph_batch_sizes, prefill_attention=prefill,
            )
        self.speculator = MtpSpeculator(self.runner) if spec == "mtp" else None
        self.stopping = StopRules.for_model(config, tokenizer, self.max_model_len)
        self._inflight: InflightStep | None = None

    # ------------------------------------------------------------------ public API
    def generate(
        self,
        prompts_token_ids: Seq[Seq[int]],
        params: SamplingParams | Seq[SamplingParams] | None = None,
        on_finish: Callable[[int, GenerationOutput], None] | None = None,
    ) -> list[GenerationOutput]:
        """Generate for every prompt with continuous batching; ``on_finish(i, output)`` fires as
        each request ends. Returns outputs in prompt order. Default params: greedy, 256 tokens."""
        if params is None:
            params = SamplingParams()
        plist = [params] * len(prompts_token_ids) if isinstance(params, SamplingParams) else list(params)
        if len(plist) != len(prompts_token_ids):
            raise RequestError(f"{len(prompts_token_ids)} prompts but {len(plist)} sampling params")
        if self.tokenizer is None and any(p.stop for p in plist):
            raise RequestError("stop strings need a tokenizer")
        seqs = []
        for i, (ids, p) in enumerate(zip(prompts_token_ids, plist)):
            if len(ids) >= self.max_model_len:
                raise RequestError(f"prompt {i} has {len(ids)} tokens; the context limit is {self.max_model_len}")
            seqs.append(Sequence(list(ids), p, request_index=i))
        results: list[GenerationOutput | None] = [None] * len(seqs)

        def done(seq: Sequence) -> None:
            out = GenerationOutput(seq.token_ids[: seq.num_prompt_tokens], seq.output_token_ids,
                                   seq.output_text, seq.finish_reason or "stop")
            results[seq.request_index] = out
            if on_finish is not None:
                on_finish(seq.request_index, out)

        self._run(seqs, done)
        return [r for r in results if r is not None]

    def score(
        self,
        requests: Seq[ScoreRequest],
        on_finish: Callable[[int, ScoreOutput], None] | None = None,
    ) -> list[ScoreOutput]:
        """Sum of log-probabilities of each request's continuation tokens, and whether each of
        them was the greedy choice. Requests sharing leading tokens share prefix-cache blocks;
        keep such requests adjacent so the shared part is computed once."""
        seqs, scoring = [], SamplingParams(max_tokens=0)
        for i, r in enumerate(requests):
            if not 1 <= r.continuation_start < len(r.token_ids):
                raise RequestError(f"score request {i}: continuation_start {r.continuation_start} must be in "
                                 f"[1, {len(r.token_ids)}) (at least one context and one continuation token)")
            if len(r.token_ids) > self.max_model_len:
                raise RequestError(f"score request {i} has {len(r.token_ids)} tokens; the context limit is {self.max_model_len}")
            seqs.append(Sequence(list(r.token_ids), scoring, logprob_start=r.continuation_start, request_index=i))
        results: list[ScoreOutput | None] = [None] * len(seqs)

        def done(seq: Sequence) -> None:
            assert seq.logprob_start is not None
            pos = range(seq.logprob_start, seq.num_prompt_tokens)
            lps = [seq.prompt_logprobs[p] for p in pos]
            out = ScoreOutput(sum(t.logprob for t in lps), all(t.is_greedy for t in lps), lps)
            results[seq.request_index] = out
            if on_finish is not None:
                on_finish(seq.request_index, out)

        self._run(seqs, done)
        return [r for r in results if r is not None]

    # ------------------------------------------------------------------ the loop
    def _run(self, seqs: list[Sequence], done: Callable[[Sequence], None]) -> None:
        t0 = time.perf_counter()
        for seq in seqs:
            self.scheduler.add(seq)
        gc.freeze()  # the requests live for the whole run: no collection of the loop's garbage walks them
        try:
            while self.scheduler.has_work() or self._inflight is not None:
                for seq in self.step():
                    done(seq)
        finally:
            gc.unfreeze()
            self.abort_all()  # an exception (or KeyboardInterrupt) must not leave requests holding blocks
            self.stats.seconds += time.perf_counter() - t0
            self.stats.preemptions = self.scheduler.num_preemptions
            self.stats.prefix_hit_tokens = self.block_manager.stats.hit_blocks * self.block_manager.block_size
            self.stats.wait_seconds = self.runner.wait_seconds
            if self.speculator is not None:
                self.stats.draft_proposed = self.speculator.stats.proposed
                self.stats.draft_accepted = self.speculator.stats.accepted

    def abort_all(self) -> None:
        """Drop every request and the step in flight (its cache writes are stream-ordered
        before any later step's, so the freed blocks are safe to reuse at once)."""
        self._inflight = None
        self.scheduler.abort_all()

    def step(self) -> list[Sequence]:
        """Apply one model step's tokens; returns the sequences that finished. The step applied
        is the one in flight, or a freshly scheduled one. With overlap scheduling the decode step
        after it is launched first, its input tokens taken from the device, so the host's
        bookkeeping here runs while the GPU computes that next step."""
        t0 = time.perf_counter()
        current = self._inflight or self._launch(self._schedule())
        self._inflight = self._launch_next(current) if self.engine_config.overlap_schedule else None
        finished = self._apply(current)
        self.stats.add_step_time(current.batch.is_prefill, time.perf_counter() - t0)
        return finished

    def drain(self) -> list[Sequence]:
        """Apply the step in flight, if any, without launching another."""
        current, self._inflight = self._inflight, None
        return self._apply(current) if current is not None else []

    def _schedule(self) -> ScheduledBatch:
        if not (batch := self.scheduler.schedule()):
            raise RuntimeError("scheduler produced an empty step with requests pending (KV cache too small?)")
        return batch

    def _launch(self, batch: ScheduledBatch, feed: TokenFeed | None = None) -> InflightStep:
        if batch.is_prefill:
            self.stats.prefill_steps += 1
            self.stats.prefill_tokens += batch.num_tokens
        else:
            self.stats.decode_steps += 1
        if self.speculator is None:
            return InflightStep(batch, self.runner.execute(batch, feed, defer=True))
        out = self.runner.execute(batch)
        new_tokens = self.speculator.accept(batch, out)
        self.speculator.propose(batch, out, new_tokens)
        return InflightStep(batch, out, new_tokens)

    def _launch_next(self, current: InflightStep) -> InflightStep | None:
        """Launch the decode step after ``current`` before its tokens reach the host, when that
        step is certain to be the one the scheduler would pick: plain decode on both sides
        (no drafts), every running sequence in it, no prefill or preemption pending. A
        sequence that stops on the token in flight (EOS, stop string) wastes its row there."""
        if self.speculator is not None or current.batch.is_prefill:
            return None
        live = [s for s in current.batch.seqs if s.status is SequenceStatus.RUNNING]
        if len(live) != len(self.scheduler.running):
            return None  # others are prefilling: the regular schedule decides with the tokens known
        # Sequences the token in flight brings to their length limit are certainly done.
        going = [s for s in live if s.num_output_tokens + 1 < s.params.max_tokens
                 and len(s) + 1 < self.max_model_len]
        batch = self.scheduler.schedule_next_decode(going) if going else None
        if batch is None:
            return None
        current.reserved = going
        self.stats.overlapped_steps += 1
        assert current.out.tokens is not None  # a decode step samples every row
        row = {s.seq_id: i for i, s in enumerate(current.batch.seqs)}  # decode samples one row per sequence
        return self._launch(batch, TokenFeed(current.out.tokens.device, [row[s.seq_id] for s in batch.seqs]))

    def _apply(self, step: InflightStep) -> list[Sequence]:
        """Read ``step``'s tokens and advance its sequences: cache progress, prompt log-probs,
        generated tokens, end-of-request rules."""
        batch, out = step.batch, step.out
        if step.new_tokens is None:
            waited = time.perf_counter()
            out.resolve()
            self.runner.wait_seconds += time.perf_counter() - waited
        new_tokens = step.new_tokens if step.new_tokens is not None else [s[:1] for s in out.sampled]
        for seq in step.reserved:  # the real token replaces the placeholder
            seq.release_token()
        finished: list[Sequence] = []
        for seq, n, new, lps in zip(batch.seqs, batch.num_new_tokens, new_tokens, out.logprobs):
            if seq.status is not SequenceStatus.RUNNING:
                continue  # it stopped on the token of the step before, while this one was in flight
            # Prefill: the whole chunk is now in the cache. Decode: the fed token, plus the
            # draft row when it was accepted (then len(new) == 2).
            seq.num_computed_tokens += n if batch.is_prefill else len(new)
            for p, scored in lps:
                seq.prompt_logprobs[p] = scored
            is_done = False
            for tok in new:
                self.stats.generated_tokens += 1
                is_done = self.stopping.append(seq, tok)
                if is_done:
                    break
            seq.num_computed_tokens = min(seq.num_computed_tokens, len(seq))
            if seq.params.max_tokens == 0 and seq.num_computed_tokens == len(seq):
                seq.finish_reason, is_done = "length", True
            self.block_manager.commit(seq)
            if is_done:
                seq.draft_token = None
                self.scheduler.finish(seq)
                finished.append(seq)
        return finished
