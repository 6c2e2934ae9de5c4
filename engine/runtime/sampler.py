"""Next-token selection: greedy, temperature, top-k and top-p, batched and batch-invariant.

Why not a ``torch.Generator`` per request: a generator's draw depends on how many numbers were
drawn before, so preemption (recompute) or a different batch layout shifts it, and one
generator per row means a Python loop and per-row kernel launches. Instead the noise is a
pure function of ``(seed, index of the generated token, vocabulary id)``, computed by an
integer hash on the device for the whole batch at once (Gumbel-max sampling). The same seed
therefore yields the same tokens alone, in any batch, and after preemption; the step needs no
host synchronisation and has a static shape, so it can live inside a CUDA graph later.

Greedy rows take the plain argmax of the unscaled logits, bit-identical to a greedy loop.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence as Seq

import torch

from dseval.engine.runtime.sequence import SamplingParams

_MASK32 = 0xFFFFFFFF
# Multipliers below 2**31 keep every product of a 32-bit value inside signed int64, so the
# hash is exact on every backend (no reliance on overflow wrap-around).
_M1 = 0x7FEB352D
_M2 = 0x4B2CA68B


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xorshift-multiply) on int64 tensors holding values < 2**32."""
    x = x ^ (x >> 16)
    x = (x * _M1) & _MASK32
    x = x ^ (x >> 15)
    x = (x * _M2) & _MASK32
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    x &= _MASK32
    x ^= x >> 16
    x = (x * _M1) & _MASK32
    x ^= x >> 15
    x = (x * _M2) & _MASK32
    return x ^ (x >> 16)


def row_key(seed: int, token_index: int) -> int:
    """The noise stream of one generated token of one request."""
    k = _mix32_int(seed & _MASK32)
    k = _mix32_int(k ^ ((seed >> 32) & _MASK32) ^ 0x68E31DA4)
    return _mix32_int(k ^ _mix32_int(token_index ^ 0x1B56C4E9))


def uniform_noise(keys: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[B, V]`` uniforms in (0, 1), a deterministic function of (key, vocabulary id)."""
    vocab = _mix32(torch.arange(vocab_size, device=keys.device, dtype=torch.int64) ^ 0x2545F491)
    h = _mix32(keys[:, None] ^ vocab[None, :])
    h = _mix32(h ^ 0x5BD1E995)
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                      candidates: int | None = None) -> torch.Tensor:
    """Set logits outside each row's top-k and top-p nucleus to -inf.

    ``top_k`` 0 and ``top_p`` 1 disable the filters for a row; at least one token survives.
    ``candidates``: consider only the best ``candidates`` tokens of each row (a ``topk``
    instead of a full-vocabulary sort). Exact when every row's top-k is at most that, or its
    nucleus lies inside it; :class:`Sampler` guarantees one or the other.
    """
    vocab = logits.shape[-1]
    if candidates is not None and candidates < vocab:
        sorted_logits, order = logits.topk(candidates, dim=-1)
    else:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
    width = sorted_logits.shape[-1]
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab)).clamp(max=width)
    ranks = torch.arange(width, device=logits.device)[None, :]
    drop = ranks >= k[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    # Probabilities over the whole row (top-k applied), even when only candidates are kept.
    # A row limited by top-k renormalises over its k kept tokens (all present among the
    # candidates); any other row over the whole vocabulary.
    lse = torch.where((top_k > 0)[:, None], torch.logsumexp(sorted_logits, dim=-1, keepdim=True),
                      torch.logsumexp(logits, dim=-1, keepdim=True))
    probs = (sorted_logits - lse).exp()
    # Keep a token if the probability mass *before* it is still below top_p.
    mass_before = probs.cumsum(dim=-1) - probs
    drop = drop | (mass_before > top_p[:, None])
    drop[:, 0] = False
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, ~drop)
    return logits.masked_fill(~keep, float("-inf"))


@functools.lru_cache(maxsize=8)
def _argmax_chunk(vocab: int) -> int | None:
    """The widest piece of at most 1024 that divides ``vocab`` and leaves at least 64 pieces."""
    return next((d for d in range(min(1024, vocab // 64), 127, -1) if vocab % d == 0), None)


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(-1)`` of a ``[N, V]`` matrix (the first maximal index), in two passes.

    Why: with few rows a full-vocabulary argmax is one long reduction per row, which the
    generic CUDA reduction runs on few threads (28 us for one 129,280-wide row on an H200, 2%
    of a W3 decode step). Reducing ``chunk``-wide pieces first gives ``V / chunk`` independent
    reductions per row, then a short one over their maxima. Ties resolve to the first index
    in both passes, so the result equals ``argmax`` exactly. Vocabularies without a suitable
    divisor take the plain path.
    """
    n, v = logits.shape
    chunk = _argmax_chunk(v)
    if chunk is None:
        return logits.argmax(dim=-1)
    values, within = logits.view(n, v // chunk, chunk).max(dim=-1)
    best = values.argmax(dim=-1, keepdim=True)
    return best.squeeze(-1) * chunk + within.gather(-1, best).squeeze(-1)


def _nucleus_fits(logits: torch.Tensor, top_p: torch.Tensor, candidates: int) -> bool:
    """Whether every row's top-p nucleus lies within its best ``candidates`` tokens (one host
    sync; used on CPU only, where a full-vocabulary sort costs far more than the sync)."""
    vals = logits.topk(candidates, dim=-1).values
    mass = (vals - torch.logsumexp(logits, dim=-1, keepdim=True)).exp().sum(-1)
    return bool((mass >= top_p).all())


class Sampler:
    """Pick one token per row of a logits matrix."""

    #: On CPU, top-p looks for its nucleus among this many best tokens before sorting everything.
    cpu_candidates: int = 1024

    def __call__(
        self, logits: torch.Tensor, params: Seq[SamplingParams], token_indices: Seq[int]
    ) -> torch.Tensor:
        """``logits`` ``[N, V]`` float32; ``params[i]`` and ``token_indices[i]`` (index of the
        token being generated within its request's output) describe row ``i``. Returns ``[N]``
        int64 on the logits' device."""
        greedy = argmax_rows(logits) if logits.is_cuda else logits.argmax(dim=-1)
        if all(p.greedy for p in params):
            return mark_nonfinite(logits, greedy)
        dev = logits.device
        temps = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params], dtype=torch.float32)
        keys = torch.tensor([row_key(p.seed, i) for p, i in zip(params, token_indices)], dtype=torch.int64)
        is_greedy = torch.tensor([p.greedy for p in params])
        temps, keys, is_greedy = (t.to(dev, non_blocking=True) for t in (temps, keys, is_greedy))
        scaled = logits.float() / temps[:, None]
        if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
            # Greedy rows take the argmax anyway; top_k 1 keeps them off the slow paths.
            top_k = torch.tensor([1 if p.greedy else p.top_k for p in params], dtype=torch.int64).to(dev, non_blocking=True)
            top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32).to(dev, non_blocking=True)
            candidates: int | None = None
            if all(p.top_k > 0 for p in params if not p.greedy):
                candidates = max(p.top_k for p in params if not p.greedy)
            elif (dev.type == "cpu" and all(p.top_k <= self.cpu_candidates for p in params)
                  and _nucleus_fits(scaled[~is_greedy], top_p[~is_greedy], min(self.cpu_candidates, scaled.shape[-1]))):
                candidates = self.cpu_candidates
            scaled = apply_top_k_top_p(scaled, top_k, top_p, candidates)
        gumbel = -torch.log(-torch.log(uniform_noise(keys, logits.shape[-1])))
        sampled = (scaled + gumbel).argmax(dim=-1)
        return mark_nonfinite(logits, torch.where(is_greedy, greedy, sampled))


#: The token a row gets when its logits hold NaN or Inf: the request ends there with finish
#: reason ``"nonfinite"`` (``stopping``), instead of an argmax over NaN passing for an answer.
NONFINITE_TOKEN = -1


def mark_nonfinite(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``tokens`` with NONFINITE_TOKEN on the rows whose logits are not all finite (no host sync)."""
    return torch.where(torch.isfinite(logits).all(dim=-1), tokens, torch.full_like(tokens, NONFINITE_TOKEN))


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probability of ``targets`` under each row of ``logits``, whether each target is the
    row's argmax (the greedy choice), and the row's top log-probability and token, all ``[N]``
    (an OpenAI-style server reports the top token beside each prompt token)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(-1, targets[:, None]).squeeze(-1)
    top_logprob, top_id = logp.max(dim=-1)
    # ">= max" rather than "== argmax": a target tied for the maximum is a greedy choice.
    return chosen, chosen >= top_logprob, top_logprob, top_id
