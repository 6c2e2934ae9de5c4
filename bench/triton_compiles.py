"""Runs a module as ``python -m`` would and records every Triton kernel the process compiles.

A fresh machine's first ``dseval run`` spends most of its cold start compiling Triton kernels,
one compile per kernel and specialization (argument dtypes, which integers are 1 or divisible
by 16, which pointers are aligned, the constexprs). Which kernels and how many variants is what
decides whether a change to the launches (``do_not_specialize``, fewer configs) can shorten it;
``bench/harness.py`` runs its cold and next rows through this wrapper to say so.

    python bench/triton_compiles.py --log compiles.json -m dseval run mmlu --model engine:CKPT

The log is written when the module exits (also on an error), one entry per compile in order:
the kernel's name, seconds since this process started, and the seconds the compile took (from
Triton's memory: a hit in its on-disk cache is a short compile, a miss a full one).
"""

from __future__ import annotations

import argparse
import atexit
import json
import runpy
import sys
import time
from pathlib import Path
from typing import Any


def install(log: list[dict[str, Any]], t0: float) -> None:
    """Times each compile between Triton's before- and after-compile hooks (compiles are serial)."""
    try:
        from triton import knobs
    except ImportError:  # no Triton (a CPU machine without it): nothing is compiled, the log stays empty
        return

    started: dict[str, float] = {}

    def before(*, key: Any, fn: Any, **_: Any) -> bool:
        started[f"{fn.name}{key}"] = time.perf_counter()
        return False  # a true value would tell Triton to skip the compile

    def after(*, key: Any, fn: Any, repr: str, **_: Any) -> None:
        now = time.perf_counter()
        begun = started.pop(f"{fn.name}{key}", now)
        log.append({"kernel": fn.name.rsplit(".", 1)[-1], "at_s": round(begun - t0, 3),
                    "compile_s": round(now - begun, 3), "variant": repr})

    knobs.runtime.jit_cache_hook = before
    knobs.runtime.jit_post_compile_hook = after


def summary(log: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kernel: variants compiled and their seconds, largest first."""
    per: dict[str, dict[str, float]] = {}
    for e in log:
        row = per.setdefault(e["kernel"], {"variants": 0, "compile_s": 0.0})
        row["variants"] += 1
        row["compile_s"] = round(row["compile_s"] + e["compile_s"], 3)
    ordered = dict(sorted(per.items(), key=lambda kv: -kv[1]["compile_s"]))
    return {"compiles": len(log), "compile_s": round(sum(e["compile_s"] for e in log), 3), "per_kernel": ordered}


def main() -> None:
    t0 = time.perf_counter()
    if "-m" not in sys.argv[1:-1]:
        sys.exit(__doc__)
    at = sys.argv.index("-m")  # what follows the module's name is its own command line
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", required=True, type=Path)
    args = p.parse_args(sys.argv[1:at])
    module, rest = sys.argv[at + 1], sys.argv[at + 2:]
    log: list[dict[str, Any]] = []
    install(log, t0)
    atexit.register(lambda: args.log.write_text(json.dumps({**summary(log), "log": log}, indent=1) + "\n"))
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
