"""The device benchmarks' own logic, on CPU: the W3 script's cross-layout check under torchrun
(gloo) and the per-layer extrapolation from committed runs. Timings are not checked here (they
exist only on the GPU, bench/README.md); what is checked is that a sharded W3 build holds the
single-process model and that the quoted extrapolation follows from the committed JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--tiny", "--layers", "3", "--batches", "1", "--prompts", "64", "--new-tokens", "2", "--prefill-len", "0",
        "--no-hf", "--skip", "decode", "e2e"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("OUT", None)
    return env


@pytest.mark.timeout(600)
def test_w3_tp2_build_matches_the_single_process_model(tmp_path: Path) -> None:
    ref = tmp_path / "single.pt"
    subprocess.run([sys.executable, str(ROOT / "bench" / "engine_w3.py"), *TINY, "--save-logits", str(ref),
                    "--out", str(tmp_path / "single.json")], check=True, env=_env(), cwd=ROOT, capture_output=True)
    out = tmp_path / "tp2.json"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(ROOT / "bench" / "engine_w3.py"), *TINY, "--tp", "2", "--compare-logits", str(ref),
                    "--out", str(out)], check=True, env=_env(), cwd=ROOT, capture_output=True)
    check = json.loads(out.read_text())["check"]
    assert json.loads(out.read_text())["meta"]["layout"] == "tp2"
    for probe in ("attention", "dense_mlp", "moe"):
        assert check[f"vs_single_gpu_{probe}_rel"] < 1e-2, check
    assert check["vs_single_gpu_pass"] is True


def test_extrapolation_follows_from_the_committed_layer_runs(tmp_path: Path) -> None:
    runs = [ROOT / "results" / "bench" / "x2" / f"x2_tp2ep2_layers{n}.json" for n in (4, 12, 20)]
    out = tmp_path / "extrapolation.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "extrapolate_layers.py"), *map(str, runs), "--out", str(out)],
                   check=True, capture_output=True)
    mine = json.loads(out.read_text())["rows"]
    committed = json.loads((ROOT / "results" / "bench" / "x2" / "extrapolation_61_layers.json").read_text())["rows"]
    assert [r["batch"] for r in mine] == [1, 8, 32, 128]
    for a, b in zip(mine, committed):
        assert a["full_61_layer_tok_s"] == pytest.approx(b["full_61_layer_tok_s"], rel=1e-9)
        # the fit reproduces the measured points it came from to within a few percent
        for layers, ms in a["points"]:
            assert a["intercept_ms"] + a["ms_per_moe_layer_step"] * (layers - 1) == pytest.approx(ms, rel=0.05)
