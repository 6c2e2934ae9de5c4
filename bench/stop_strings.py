"""Host cost of the end-of-request rules per generated token, with and without stop strings.

Every decode step runs ``StopRules.append`` once per running sequence on the host; at the
engine's default concurrency (256 on a GPU) that is 256 calls between two steps. A stop string
is searched in the decoded tail of the output, but only after a token that can complete one:
its text holds the string's last character, or its text is not fixed (``Tokenizer.piece``). This
script times the rules side by side in one process on two token streams, MATH-500's reference
solutions (text a model writes) and uniformly random ids (what W3's random weights emit), under
the real V3 tokenizer and under the same tokenizer with no fixed pieces (every token checked,
as for a decoder that edits the joined text).

    python bench/stop_strings.py [--repeats 5] [--out results/bench/stop_strings.json]

CPU only; the table gives ratios, absolute microseconds depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dseval.engine.loading.checkpoint_writer import default_tokenizer_dir  # noqa: E402
from dseval.engine.loading.tokenizer import Tokenizer  # noqa: E402
from dseval.engine.runtime.sequence import SamplingParams, Sequence  # noqa: E402
from dseval.engine.runtime.stopping import StopRules  # noqa: E402

STOP = ("Problem:",)  # MATH-500's base-prompt stop string


def streams(tok: Tokenizer, data_dir: Path, n: int) -> dict[str, list[list[int]]]:
    lines = (data_dir / "math500" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    solutions = [tok.encode(json.loads(line)["solution"]) for line in lines]
    rng = random.Random(0)
    randoms = [[rng.randrange(tok.vocab_size) for _ in range(len(s))] for s in solutions]
    return {"math500 solutions": solutions, "random ids": randoms}


def per_token_us(rules: StopRules, outputs: list[list[int]], stop: tuple[str, ...], repeats: int) -> float:
    """Median over repeats of the seconds per ``append``, every output from an empty sequence."""
    tokens = sum(len(o) for o in outputs)
    times = []
    for _ in range(repeats):
        seqs = [Sequence([0], SamplingParams(max_tokens=len(o) + 1, ignore_eos=True, stop=stop)) for o in outputs]
        start = time.perf_counter()
        for seq, out in zip(seqs, outputs):
            for t in out:
                rules.append(seq, t)
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times) / tokens


def decoded_share(rules: StopRules, outputs: list[list[int]]) -> float:
    """Share of tokens after which the tail is decoded (:meth:`StopRules.may_complete`)."""
    tokens = [t for o in outputs for t in o]
    return sum(rules.may_complete(t, STOP) for t in tokens) / len(tokens)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--docs", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "results" / "bench" / "stop_strings.json"))
    args = p.parse_args(argv)
    fixed = Tokenizer.from_dir(default_tokenizer_dir())
    unfixed = Tokenizer.from_dir(default_tokenizer_dir())
    unfixed.byte_level = False  # no fixed pieces: the tail is decoded after every token
    rows: list[dict[str, Any]] = []
    for name, outputs in streams(fixed, Path(args.data_dir), args.docs).items():
        for tok in (fixed, unfixed):
            per_token_us(StopRules(frozenset(), tok, 1 << 30), outputs, STOP, 1)  # fills the piece cache
        row = {"stream": name, "outputs": len(outputs), "tokens": sum(len(o) for o in outputs),
               "no_stop_us": per_token_us(StopRules(frozenset(), fixed, 1 << 30), outputs, (), args.repeats),
               "stop_us": per_token_us(StopRules(frozenset(), fixed, 1 << 30), outputs, STOP, args.repeats),
               "stop_every_token_us": per_token_us(StopRules(frozenset(), unfixed, 1 << 30), outputs, STOP, args.repeats),
               "decoded_share": decoded_share(StopRules(frozenset(), fixed, 1 << 30), outputs)}
        rows.append(row)
        print(json.dumps(row))
    data = {"meta": {"python": platform.python_version(), "machine": platform.processor() or platform.machine(),
                     "repeats": args.repeats, "stop": list(STOP)}, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
    sys.path.insert(0, str(Path(__file__).parent))
    from tables import stop_strings

    print("\n" + stop_strings(lambda _name: data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
