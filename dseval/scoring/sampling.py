"""Generation requests for one doc: greedy once, or ``--samples N`` seeded draws.

Every generation task fans a prompt out the same way, so the sampling settings used when a
task asks for several samples per doc are defined here once instead of in each task.
"""

from __future__ import annotations

from dseval.requests import GenerateRequest
from dseval.task import PromptContext, sample_seed

#: Sampling settings for ``--samples N`` with N > 1. The run configuration has no temperature
#: of its own; 0.8 / top-p 0.95 are the Codex paper's (Chen et al., 2021) settings for
#: estimating pass@k with k > 1. A single sample is always greedy, as the reference numbers are.
MULTI_SAMPLE_TEMPERATURE = 0.8
MULTI_SAMPLE_TOP_P = 0.95


def generate_requests(
    prompt: str, doc_id: str, ctx: PromptContext, stop: tuple[str, ...], max_tokens: int
) -> list[GenerateRequest]:
    """``ctx.samples`` requests for ``prompt``; ``ctx.max_tokens`` overrides the task default.

    Seeds come from :func:`sample_seed` so a doc draws the same samples whatever batch or
    order it runs in, and ``doc_id``/``sample_index`` let ``replay:`` answer by id.
    """
    budget = ctx.max_tokens or max_tokens
    if ctx.samples == 1:
        return [GenerateRequest(prompt=prompt, stop=stop, max_tokens=budget, seed=sample_seed(ctx.seed, doc_id, 0), doc_id=doc_id)]
    return [
        GenerateRequest(
            prompt=prompt,
            stop=stop,
            max_tokens=budget,
            temperature=MULTI_SAMPLE_TEMPERATURE,
            top_p=MULTI_SAMPLE_TOP_P,
            seed=sample_seed(ctx.seed, doc_id, i),
            doc_id=doc_id,
            sample_index=i,
        )
        for i in range(ctx.samples)
    ]
