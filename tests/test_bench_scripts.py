"""The device benchmarks' own logic, on CPU: the W3 script's cross-layout check under torchrun
(gloo), the per-layer extrapolation from committed runs, the README's tables against the
committed JSON, and the kernel scripts' command lines. Timings are not checked here (they exist
only on the GPU, bench/README.md); what is checked is that a sharded W3 build holds the
single-process model, that every quoted table follows from the committed JSON, and that the
commands the README and bench/device_runs.sh give exist."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "bench"
KERNEL_SCRIPTS = ("kernel_checks", "kernel_bench", "kernel_sweep")
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
    runs = [RESULTS / f"x2_tp2ep2_layers{n}.json" for n in (4, 12, 20)]
    out = tmp_path / "extrapolation.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "extrapolate_layers.py"), *map(str, runs), "--out", str(out)],
                   check=True, capture_output=True)
    mine = json.loads(out.read_text())["rows"]
    committed = json.loads((RESULTS / "extrapolation_61_layers.json").read_text())["rows"]
    assert [r["batch"] for r in mine] == [1, 8, 32, 128]
    for a, b in zip(mine, committed):
        assert a["full_61_layer_tok_s"] == pytest.approx(b["full_61_layer_tok_s"], rel=1e-9)
        # the fit reproduces the measured points it came from to within a few percent
        for layers, ms in a["points"]:
            assert a["intercept_ms"] + a["ms_per_moe_layer_step"] * (layers - 1) == pytest.approx(ms, rel=0.05)


def _bench_module(name: str) -> ModuleType:
    """A script of bench/ imported as a module (its functions, not its command line)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "report.py"), *map(str, args)],
                          capture_output=True, text=True, env=_env(), cwd=ROOT)


def test_readme_tables_are_generated_from_the_committed_json() -> None:
    done = _report("--check")
    assert done.returncode == 0, done.stderr


def test_report_rewrites_a_drifted_table_and_flags_stale_json(tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    readme = tmp_path / "README.md"
    text = (ROOT / "bench" / "README.md").read_text()
    # a hand-edited number in a generated table is drift
    drifted = text.replace("| 64K | 2 | 3.48 s |", "| 64K | 2 | 3.10 s |")
    assert drifted != text
    readme.write_text(drifted)
    done = _report("--check", "--readme", readme, "--results", results)
    assert done.returncode == 1 and "differ from the JSON" in done.stderr
    # a new run replaces its JSON: the rewritten table shows the new number
    chunk = results / "engine_w3_prefill_chunk65536.json"
    run = json.loads(chunk.read_text())
    for r in run["prefill_runs"]:
        if r["attention_backend"] == "fp8":
            r["seconds"] = 3.21
    chunk.write_text(json.dumps(run))
    assert _report("--readme", readme, "--results", results).returncode == 0
    assert "| 64K | 2 | 3.21 s |" in readme.read_text()
    assert _report("--check", "--readme", readme, "--results", results).returncode == 0
    # a JSON that no table reads is an old run left behind
    (results / "engine_w3_old.json").write_text("{}")
    done = _report("--check", "--readme", readme, "--results", results)
    assert done.returncode == 1 and "engine_w3_old.json feeds no table" in done.stderr


def _sections(script: str) -> set[str]:
    """The --only choices a kernel script accepts, read from its --help."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / f"{script}.py"), "--help"], capture_output=True,
                          text=True, env=_env(), cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    found = re.search(r"\{([\w,]+)\}", done.stdout)
    return set(found.group(1).split(",")) if found else set()


def test_kernel_commands_in_readme_and_device_runs_exist() -> None:
    texts = [(ROOT / "bench" / name).read_text() for name in ("README.md", "device_runs.sh")]
    scripts = {m for t in texts for m in re.findall(r"bench/(\w+)\.py", t)}
    assert {"kernel_checks", "kernel_bench", "kernel_sweep", "engine_w3", "report"} <= scripts
    for script in scripts:
        assert (ROOT / "bench" / f"{script}.py").is_file(), script
    sections = {s: _sections(s) for s in KERNEL_SCRIPTS}
    assert sections["kernel_checks"] == set()  # one job: all checks
    assert {"gemm_decode", "rope", "prefill_attn"} <= sections["kernel_bench"]
    assert {"gemm_tune", "mla_tune", "moe_prefill"} <= sections["kernel_sweep"]
    for text in texts:
        for script, only in re.findall(r"bench/(kernel_\w+)\.py[^\n]*?--only ((?:\w+ ?)+)", text):
            assert set(only.split()) <= sections[script], (script, only)


@pytest.mark.parametrize("script", KERNEL_SCRIPTS)
def test_kernel_scripts_refuse_to_run_without_a_gpu(script: str, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    args = ["--only", "gemm_tune"] if script == "kernel_sweep" else []
    env = {**_env(), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / f"{script}.py"), *args, "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode != 0 and f"bench/{script}.py needs a CUDA GPU" in done.stderr
    assert not out.exists()


def test_triton_compile_log_passes_the_module_its_arguments_and_exit_status(tmp_path: Path) -> None:
    (tmp_path / "probe_module.py").write_text("import sys\nprint(' '.join(sys.argv[1:]))\nraise SystemExit(3)\n")
    log = tmp_path / "compiles.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "triton_compiles.py"), "--log", str(log),
                           "-m", "probe_module", "run", "--log", "-m", "x"], capture_output=True, text=True,
                          env={**_env(), "PYTHONPATH": str(tmp_path)}, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() == "run --log -m x"  # what follows the module's name is the module's own
    assert json.loads(log.read_text()) == {"compiles": 0, "compile_s": 0, "per_kernel": {}, "log": []}  # CPU


def test_triton_compile_log_sums_variants_per_kernel_largest_first() -> None:
    summary = _bench_module("triton_compiles").summary
    log = [{"kernel": "quant", "compile_s": 0.25}, {"kernel": "gemm", "compile_s": 1.0},
           {"kernel": "quant", "compile_s": 1.0}]
    out = summary(log)
    assert (out["compiles"], out["compile_s"]) == (3, 2.25)
    assert list(out["per_kernel"].items()) == [("quant", {"variants": 2, "compile_s": 1.25}),
                                               ("gemm", {"variants": 1, "compile_s": 1.0})]


def test_progress_eta_reads_the_bar_of_a_real_run_on_a_terminal(tmp_path: Path, data_dir: Path) -> None:
    rec, out = tmp_path / "run.jsonl", tmp_path / "eta.json"
    script = [sys.executable, str(ROOT / "bench" / "progress_eta.py")]
    run = [sys.executable, "-m", "dseval", "run", "mmlu", "--model", "tiny", "--device", "cpu", "--limit", "1",
           "--data-dir", str(data_dir), "--out", str(tmp_path / "run")]
    done = subprocess.run([*script, "record", str(rec), "--", *run], env=_env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, rec.read_text()[-2000:]
    subprocess.run([*script, "report", f"tiny={rec}", "--out", str(out)], check=True, capture_output=True, cwd=ROOT)
    result = json.loads(out.read_text())["runs"][0]
    assert result["total"] == 57 and result["frames"] >= 2  # one doc per subject, redrawn as it ran
    lefts = [r["left_s"] for r in result["rows"]]
    assert lefts == sorted(lefts, reverse=True) and 0 <= lefts[-1] < lefts[0] <= result["task_s"]
    for r in result["rows"]:
        assert r["error_s"] is None or r["error_s"] == pytest.approx(r["eta_s"] - r["left_s"], abs=0.11)


def test_harness_ratios_put_data_parallel_rows_against_the_one_gpu_row_of_their_task() -> None:
    ratios = _bench_module("harness").ratios
    acc = {"acc": 0.25}

    def row(name: str, task: str, dp: int, run_s: float, metrics: dict) -> dict:
        return {"name": name, "task": task, "dp": dp, "rc": 0, "run_s": run_s, "metrics": metrics}

    data = {"hf": None, "engine": None, "cli": [
        row("mmlu", "mmlu", 1, 40.0, acc), row("math500-first", "math500", 1, 12.0, acc),
        row("math500", "math500", 1, 10.0, acc), row("mmlu-dp2", "mmlu", 2, 20.5, acc),
        row("math500-dp2", "math500", 2, 5.0, {"acc": 0.3})]}
    assert ratios(data) == {"mmlu_dp2_vs_one_gpu": 1.95, "mmlu_dp2_same_scores": True,
                            "math500_dp2_vs_one_gpu": 2.0, "math500_dp2_same_scores": False}
