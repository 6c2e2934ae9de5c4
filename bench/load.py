"""Host-to-GPU copy of a checkpoint: pageable ``tensor.to("cuda")`` per tensor against the
loader's pinned double-buffered staging (``HostToDevice``), side by side in one process.

Both read every tensor of the checkpoint from its memory-mapped shard (the page cache once the
first pass has read it) in the loader's order and leave it on the GPU in its stored dtype; the
passes alternate, and the first pass of each way is dropped as a warm-up (page cache, pinned
allocation, CUDA context). The first staged pass is compared byte for byte with the pageable
one. Then ``load_model`` runs end to end (validation, meta build, staging, NaN check) as
``dseval run`` calls it, for the load time the user sees.

    python bench/load.py --ckpt /tmp/dseval_w3 [--repeats 3] [--out results/bench/load.json]

GPU only; ``bench/device_runs.sh harness`` runs it after the harness wrote W3.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dseval.engine.loading.checkpoint import CheckpointReader  # noqa: E402
from dseval.engine.loading.host_to_device import HostToDevice  # noqa: E402
from dseval.engine.loading.loader import load_model  # noqa: E402


def copy_all(reader: CheckpointReader, names: list[str], move: Callable[[torch.Tensor], torch.Tensor],
             finish: Callable[[], None]) -> tuple[float, list[torch.Tensor]]:
    """Seconds to move every tensor to the GPU, and the moved tensors."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = [move(reader.get(name)) for name in names]
    finish()
    torch.cuda.synchronize()
    return time.perf_counter() - start, out


def same_bytes(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(x.dtype == y.dtype and x.shape == y.shape and torch.equal(x.view(torch.uint8), y.view(torch.uint8))
               for x, y in zip(a, b, strict=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="/tmp/dseval_w3")
    p.add_argument("--repeats", type=int, default=3, help="timed passes of each way, after one warm-up each")
    p.add_argument("--out", default=str(ROOT / "results" / "bench" / "load.json"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench/load.py needs a CUDA GPU")
    device = torch.device("cuda")
    torch.empty(1, device=device)  # the CUDA context is not the copy's cost
    reader = CheckpointReader(args.ckpt)
    names = [n for _, group in reader.names_by_file() for n in group]
    gib = sum(t.numel() * t.element_size() for t in map(reader.get, names)) / 2**30

    def pageable() -> tuple[float, list[torch.Tensor]]:
        return copy_all(reader, names, lambda t: t.to(device), lambda: None)

    def staged() -> tuple[float, list[torch.Tensor]]:
        stager = HostToDevice(device)
        return copy_all(reader, names, stager.copy, stager.finish)

    times: dict[str, list[float]] = {"pageable": [], "staged": []}
    exact = None
    for i in range(args.repeats + 1):
        s_page, page_out = pageable()
        if exact is not None:
            page_out = []  # freed before the staged pass: only the first pass compares
        s_staged, staged_out = staged()
        if exact is None:
            exact = same_bytes(page_out, staged_out)
        page_out = staged_out = []
        torch.cuda.empty_cache()
        if i:  # the first pass of each way warms up
            times["pageable"].append(s_page)
            times["staged"].append(s_staged)
        print(f"pass {i}: pageable {s_page:.2f} s, staged {s_staged:.2f} s", flush=True)

    load_s = []
    for _ in range(args.repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model, _, _ = load_model(args.ckpt, device)
        torch.cuda.synchronize()
        load_s.append(time.perf_counter() - start)
        del model
        torch.cuda.empty_cache()

    rows = [{"way": way, "median_s": statistics.median(ts), "gib_s": gib / statistics.median(ts), "runs_s": ts}
            for way, ts in times.items()]
    data: dict[str, Any] = {
        "meta": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "checkpoint_gib": gib,
                 "tensors": len(names), "repeats": args.repeats, "exact": exact},
        "rows": rows,
        "load_model_s": load_s,
    }
    for r in rows:
        print(f"{r['way']:>9}: {r['median_s']:.2f} s, {r['gib_s']:.1f} GiB/s")
    print(f"staged / pageable: {rows[0]['median_s'] / rows[1]['median_s']:.2f}x faster; same bytes: {exact}")
    print(f"load_model: median {statistics.median(load_s):.2f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
