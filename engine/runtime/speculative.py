"""Speculative decoding with the model's own MTP module as the draft (DeepSeek-V3 §2.2, §5.4.3).

Cycle per greedy sequence: the MTP module, given the main model's hidden state at position
``i`` and the token at ``i+1``, drafts the token at ``i+2``. The next decode step feeds the
last token *and* the draft; the main model's argmax at both rows says whether the draft was
right. Right: two tokens are committed for one step. Wrong: only the main model's own token
is committed and the draft row's KV (written past the new context length) is simply
overwritten later. Either way every committed token is the main model's greedy choice, so the
output is exactly that of plain greedy decoding; the MTP module only changes how many steps it
takes. For the same reason a stale MTP cache row (e.g. a prefix block cached without MTP) can
cost acceptance but never correctness.

The MTP layer keeps its own latent cache (``kv_caches[num_hidden_layers]``) at the same slots
as the main layers. After every main forward pass the MTP module runs on each computed row
whose next token is known, so its cache covers the same positions as the main cache.
Sampled (temperature > 0) requests run alongside but get no drafts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dseval.engine.errors import ConfigError
from dseval.engine.runtime.model_runner import ModelRunner
from dseval.engine.runtime.scheduler import ScheduledBatch
from dseval.engine.runtime.sequence import Sequence
from dseval.engine.runtime.step import RowSpec, StepOutput


@dataclass
class SpecStats:
    proposed: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


class MtpSpeculator:
    """Accepts drafts after a verify step and proposes the next ones with the MTP module."""

    def __init__(self, runner: ModelRunner) -> None:
        cfg = runner.config
        if getattr(cfg, "num_nextn_predict_layers", 0) < 1:
            raise ConfigError("speculative 'mtp' needs a model with num_nextn_predict_layers >= 1")
        self.runner = runner
        self.stats = SpecStats()

    def accept(self, batch: ScheduledBatch, out: StepOutput) -> list[list[int]]:
        """New tokens per sequence of a step: the sampled token, plus the bonus token when the
        draft it verified was right. Updates acceptance statistics."""
        new_tokens: list[list[int]] = []
        for seq, sampled in zip(batch.seqs, out.sampled):
            if batch.is_prefill or seq.draft_token is None:
                new_tokens.append(sampled[:1])
                continue
            self.stats.proposed += 1
            if sampled[0] == seq.draft_token:
                self.stats.accepted += 1
                new_tokens.append(sampled[:2])
            else:
                new_tokens.append(sampled[:1])
        return new_tokens

    @torch.inference_mode()
    def propose(self, batch: ScheduledBatch, out: StepOutput, new_tokens: list[list[int]]) -> None:
        """Run the MTP module over the rows just computed by the main model; set each
        greedy, still-generating sequence's ``draft_token``.

        Called before the new tokens are appended to the sequences; ``new_tokens[i]`` are the
        tokens that follow ``batch.seqs[i]``'s current ones.
        """
        rows: list[RowSpec] = []
        hidden_idx: list[int] = []
        drafts_for: list[Sequence | None] = []
        for i, (seq, n, new) in enumerate(zip(batch.seqs, batch.num_new_tokens, new_tokens)):
            seq.draft_token = None
            if new and min(new) < 0:
                continue  # non-finite logits (sampler.NONFINITE_TOKEN): the request ends here
            start = seq.num_computed_tokens
            known = seq.token_ids + new  # everything whose next token is known
            # Main-model rows that are valid: prefill chunk rows, or in decode the fed token
            # plus the draft when it was accepted.
            valid = n if batch.is_prefill else len(new)
            next_ids = [known[p + 1] for p in range(start, start + valid) if p + 1 < len(known)]
            if not next_ids:
                continue
            rows.append(RowSpec(seq, start, next_ids))
            hidden_idx.extend(range(out.offsets[i], out.offsets[i] + len(next_ids)))
            # Draft only where the MTP row sits at the newest known token.
            wants = seq.params.greedy and start + len(next_ids) == len(known) - 1 and bool(new)
            drafts_for.append(seq if wants else None)
        if not rows:
            return
        runner = self.runner
        inputs = runner.prepare(rows, absorbed=not batch.is_prefill)
        idx = torch.tensor(hidden_idx, dtype=torch.int64).to(out.hidden.device, non_blocking=True)
        h = runner.model.mtp_forward(inputs.input_ids, inputs.positions, out.hidden.index_select(0, idx), inputs.meta)
        last_rows = [inputs.offsets[k + 1] - 1 for k, s in enumerate(drafts_for) if s is not None]
        if not last_rows:
            return
        sel = torch.tensor(last_rows, dtype=torch.int64).to(h.device, non_blocking=True)
        drafts = runner.model.mtp_logits(h.index_select(0, sel)).argmax(dim=-1).tolist()
        for seq, d in zip((s for s in drafts_for if s is not None), drafts):
            seq.draft_token = int(d)
