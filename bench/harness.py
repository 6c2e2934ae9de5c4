"""Harness benchmark: the user's own ``dseval run`` on a checkpoint on disk, against the loop a
user would otherwise write, on the same prompts, in one device call (issue 16).

1. ``write``: W3 (DeepSeek-V3 dimensions, ``--layers`` layers, random FP8 weights drawn on the
   GPU by :func:`random_fp8_model`) written as a checkpoint folder in the official layout, with
   the real V3 tokenizer; every later step reads it from disk (the page cache) as a user's run does.
2. ``cli``: ``python -m dseval run TASK --model engine:CKPT`` as subprocesses with default flags:
   first a one-doc run on a fresh install (the cold start: imports and kernel compilation), then
   the same again (the next run's start), then each task (a generation task twice: its first run
   compiles the decode kernels, the second runs with them cached). A fresh install here is what
   ``pip install`` leaves: the bytecode of every module written (by a one-doc CPU run into a
   bytecode cache of the runs' own) and an empty Triton cache, also of their own. Each run writes
   ``timing.json`` (:func:`dseval.runner.write_timing`): load, docs/s, time to the first doc, the
   engine's prompt and generated tokens and the seconds of its prefill and decode steps; and runs
   under ``bench/triton_compiles.py``, whose log of the kernels Triton compiled joins its row.
3. ``hf``: the loglikelihood loop of lm-evaluation-harness's ``hf`` backend on the same MMLU
   requests: transformers' DeepseekV3ForCausalLM in bf16 with the same config, context +
   continuation encoded together, sorted by length (longest first), padded batches of
   ``--hf-batch``, one forward each, log-softmax at the continuation's positions.
4. ``engine``: the engine's own generation (``LLM.generate``, no harness around it) on the
   generation task's prompts at the concurrency the CLI chose: the rate the CLI should reach.

    python bench/harness.py [--ckpt /tmp/w3] [--layers 3] [--tasks mmlu math500] [--limit math500=100]
        [--max-tokens 1024] [--hf-docs 500] [--out results/bench/harness.json]
    python bench/harness.py --skip write hf engine --tasks   # the cold start alone, on the checkpoint at --ckpt
    python bench/harness.py --smoke   # CPU: the tiny preset, a few docs: this script's logic, no measurement

On the H200 machines math-verify (MATH-500's scorer) is missing: carry its wheels and their
needs (math-verify, latex2sympy2_extended, antlr4-python3-runtime) as the device README says.

Prints a table and writes JSON to ``--out`` and ``$OUT`` (if set) after every phase.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
W3_CONFIG = ROOT / "configs" / "models" / "w3.json"
SHARD_BYTES = 4 << 30


class Report:
    """The JSON written after every phase, so a run cut short keeps what it measured."""

    def __init__(self, paths: list[Path], meta: dict[str, Any]) -> None:
        self.paths = paths
        self.data: dict[str, Any] = {"meta": meta, "cli": [], "hf": None, "engine": None, "errors": []}

    def save(self) -> None:
        for p in self.paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(self.data, indent=2) + "\n")

    def error(self, phase: str, exc: BaseException) -> None:
        print(f"[harness] {phase} failed: {exc!r}", flush=True)
        self.data["errors"].append({"phase": phase, "error": repr(exc), "traceback": traceback.format_exc()[-2000:]})
        self.save()


def say(msg: str) -> None:
    print(f"[harness] {msg}", flush=True)


# ---------------------------------------------------------------------------------------- write
def write_w3(ckpt: Path, layers: int, tokenizer_dir: Path) -> float:
    """W3 as a checkpoint folder (skipped when one is there); returns seconds spent. Written
    beside ``ckpt`` and renamed when complete, so a failed write is never taken for a checkpoint."""
    import dataclasses

    import torch
    from safetensors.torch import save_file

    from dseval.engine.loading.random_init import random_fp8_model
    from dseval.engine.model.config import ModelConfig

    if (ckpt / "config.json").is_file():
        return 0.0
    t0 = time.perf_counter()
    final, ckpt = ckpt, ckpt.with_name(ckpt.name + ".partial")
    shutil.rmtree(ckpt, ignore_errors=True)
    cfg = dataclasses.replace(ModelConfig.from_json_file(W3_CONFIG), num_hidden_layers=layers)
    model = random_fp8_model(cfg, "cuda", torch.bfloat16, seed=0)
    ckpt.mkdir(parents=True)
    state = model.state_dict()
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in state.items():
        if shards[-1] and size + t.numel() * t.element_size() > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += t.numel() * t.element_size()
    weight_map = {}
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: state[n].cpu().contiguous() for n in names}, str(ckpt / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, fname))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                   "weight_map": weight_map}))
    hf = cfg.to_hf_dict()
    hf["torch_dtype"] = "bfloat16"
    (ckpt / "config.json").write_text(json.dumps(hf, indent=2))
    for fname in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / fname, ckpt / fname)
    shutil.rmtree(final, ignore_errors=True)
    ckpt.rename(final)
    del model, state
    torch.cuda.empty_cache()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------- cli
def cli_env() -> dict[str, str]:
    """This process's environment with the checkout first on the import path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run_cli(name: str, task: str, model: str, args: argparse.Namespace, extra: list[str],
            dp: int = 1) -> dict[str, Any]:
    """One ``dseval run`` in a fresh process (``dp`` > 1: that many data-parallel replicas under
    torchrun, as a user launches them), timed from outside; its timing.json merged in."""
    out = Path(args.runs) / name
    shutil.rmtree(out, ignore_errors=True)
    compiles = Path(args.runs) / f"{name}.triton_compiles.json"
    compiles.unlink(missing_ok=True)  # a log left by an earlier invocation is not this run's
    dseval = ["dseval", "run", task, "--model", f"engine:{model}", "--data-dir", args.data_dir, "--out", str(out),
              *extra]
    if dp > 1:  # every rank compiles into the same Triton cache: no per-process compile log
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(dp), "-m",
               *dseval, "--dp", str(dp)]
    else:
        cmd = [sys.executable, str(ROOT / "bench" / "triton_compiles.py"), "--log", str(compiles), "-m", *dseval]
    say(" ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=args.cli_timeout)
    wall = time.perf_counter() - t0
    row: dict[str, Any] = {"name": name, "task": task, "argv": cmd[cmd.index("dseval") + 1:], "dp": dp,
                           "process_s": round(wall, 2), "rc": proc.returncode}
    if compiles.exists():  # every kernel variant Triton compiled (or found in its disk cache) in the run
        row["triton"] = json.loads(compiles.read_text())
    if proc.returncode != 0:
        row["stderr"] = proc.stderr[-3000:]
        say(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
        return row
    timing = json.loads((out / "timing.json").read_text())
    t = timing["tasks"][task]
    row.update(load_s=timing["load_s"], load_phases=timing.get("load_phases"), **t)  # wall_s: the task's own
    row["start_s"] = round(wall - (timing["load_s"] or 0) - t["wall_s"], 2)  # imports, data, prompts, exit
    row["run_s"] = round(wall - (timing["load_s"] or 0), 2)  # end to end, load excluded
    summary = json.loads((out / "summary.json").read_text())["tasks"][task]
    row["metrics"] = summary.get("metrics", summary)
    say(f"{name}: {json.dumps({k: v for k, v in row.items() if k not in ('argv', 'metrics', 'triton')})}")
    return row


def task_flags(task: str, args: argparse.Namespace, limits: dict[str, int]) -> list[str]:
    """The task's ``--limit`` (if one was asked) and a generation task's ``--max-tokens``."""
    lim = ["--limit", str(limits[task])] if task in limits else []
    return lim + ([] if task == "mmlu" else ["--max-tokens", str(args.max_tokens)])


def fresh_install(args: argparse.Namespace) -> None:
    """Point every later run at caches of its own, as a fresh install finds them: Python bytecode
    written (``pip install`` compiles it; here a one-doc run of the tiny preset on the CPU imports
    what a run imports) and Triton's kernel cache empty, so the cold row pays each compile."""
    caches = Path(args.runs) / "caches"
    shutil.rmtree(caches, ignore_errors=True)
    os.environ.update(PYTHONPYCACHEPREFIX=str(caches / "pycache"), TRITON_CACHE_DIR=str(caches / "triton"))
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    cmd = [sys.executable, "-m", "dseval", "run", "mmlu", "--model", "engine:tiny", "--device", "cpu", "--limit", "1",
           "--data-dir", args.data_dir, "--out", str(caches / "bytecode_run")]
    subprocess.run(cmd, env=cli_env(), capture_output=True, check=True, timeout=args.cli_timeout)
    shutil.rmtree(caches / "triton", ignore_errors=True)  # whatever Triton built on the CPU run


# ---------------------------------------------------------------------------------------- requests
def task_requests(task_name: str, args: argparse.Namespace, limit: int | None) -> tuple[list[Any], list[Any]]:
    """(docs, per-doc requests) exactly as ``dseval run`` builds them (default shots)."""
    from dseval.backends.base import BackendOptions
    from dseval.config import RunConfig
    from dseval.data import DataSource
    from dseval.runner import build_tasks, prepare

    config = RunConfig(tasks=(task_name,), model="none", out=Path(args.runs) / "unused", limit=limit,
                       data_dir=args.data_dir, options=BackendOptions())
    (task,) = build_tasks(config)
    prepared, _ = prepare(task, config, DataSource(args.data_dir), SimpleNamespace(apply_chat_template=None, recorded_chat=None))
    return prepared.docs, prepared.requests


# ---------------------------------------------------------------------------------------- hf loop
def hf_model(model_dir: Path, device: str) -> Any:
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    raw = json.loads((model_dir / "config.json").read_text())
    for k in ("quantization_config", "architectures", "torch_dtype"):
        raw.pop(k, None)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if device == "cuda" else torch.float32)
    try:
        with torch.device(device):
            return DeepseekV3ForCausalLM(DeepseekV3Config(**raw)).eval()
    finally:
        torch.set_default_dtype(prev)


def run_hf_loglikelihood(model_dir: Path, args: argparse.Namespace, device: str) -> dict[str, Any]:
    """lm-eval's ``hf`` loglikelihood loop over the first ``--hf-docs`` MMLU docs."""
    import torch
    from tokenizers import Tokenizer

    _, requests = task_requests("mmlu", args, None)
    requests = requests[: args.hf_docs]
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    bos = json.loads((model_dir / "config.json").read_text()).get("bos_token_id", 0)
    seqs = []
    for doc_reqs in requests:
        for r in doc_reqs:
            ctx = r.context.rstrip()
            cont = r.context[len(ctx):] + r.continuation
            whole = tok.encode(ctx + cont, add_special_tokens=False).ids
            n_ctx = len(tok.encode(ctx, add_special_tokens=False).ids)
            seqs.append(([bos] + whole, 1 + n_ctx))
    t0 = time.perf_counter()
    model = hf_model(model_dir, device)
    build_s = time.perf_counter() - t0
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    sync(device)
    t0 = time.perf_counter()
    tokens = 0
    with torch.inference_mode():
        for b in range(0, len(order), args.hf_batch):
            batch = [seqs[i] for i in order[b : b + args.hf_batch]]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for j, (row, _) in enumerate(batch):
                ids[j, : len(row)] = torch.tensor(row)
                mask[j, : len(row)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for j, (row, start) in enumerate(batch):
                lp = logits[j, start - 1 : len(row) - 1].float().log_softmax(-1)
                target = torch.tensor(row[start:], device=lp.device)
                float(lp.gather(-1, target[:, None]).sum())  # the loop reads each answer back
            tokens += sum(len(r) for r, _ in batch)
    sync(device)
    wall = time.perf_counter() - t0
    del model
    return {"docs": len(requests), "continuations": len(seqs), "tokens": tokens, "build_s": round(build_s, 2),
            "wall_s": round(wall, 2), "docs_per_s": round(len(requests) / wall, 2), "tok_per_s": round(tokens / wall)}


# ---------------------------------------------------------------------------------------- engine alone
def run_engine_generate(model_dir: Path, task: str, args: argparse.Namespace, limit: int | None) -> dict[str, Any]:
    """The engine's own generation rate on the task's prompts, at the concurrency the CLI
    chooses (both leave ``max_num_seqs`` unset)."""
    from dseval.backends.base import BackendOptions
    from dseval.backends.engine import EngineBackend
    from dseval.engine.api import SamplingParams

    _, requests = task_requests(task, args, limit)
    backend = EngineBackend.from_spec(str(model_dir), BackendOptions(device="cpu" if args.smoke else None))
    prompts = backend.encode_prompts([r.prompt for rs in requests for r in rs])
    params = SamplingParams(max_tokens=args.max_tokens, ignore_eos=True)
    backend.generate_ids(prompts[:2], [params] * 2)  # warm-up: first-call costs are not decode
    t0 = time.perf_counter()
    outs = backend.generate_ids(prompts, [params] * len(prompts))
    wall = time.perf_counter() - t0
    generated = sum(len(o.token_ids) for o in outs)
    row = {"task": task, "requests": len(prompts), "max_num_seqs": backend.llm.max_num_seqs,
           "prefill_attention": repr(backend.llm.runner.prefill_attention), "wall_s": round(wall, 2),
           "generated_tokens": generated, "tok_per_s": round(generated / wall, 1)}
    backend.close()
    return row


def gpu_name() -> str:
    """The card the numbers belong to, asked without a CUDA context in this process."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------- table
def print_table(data: dict[str, Any]) -> None:
    """The README's table (bench/tables.py) of this run."""
    from tables import harness

    print("\n" + harness(lambda _name: data))


def ratios(data: dict[str, Any]) -> dict[str, float | bool]:
    """The issue's targets as numbers: MMLU docs/s over the transformers loop's, the CLI's
    generated tok/s over the engine alone's on the same prompts, and data-parallel runs' speed
    over one GPU's (with whether their merged scores are the one GPU's)."""
    out: dict[str, float | bool] = {}
    rows = {r["name"]: r for r in data["cli"] if r.get("rc") == 0}
    if "mmlu" in rows and data["hf"]:
        out["mmlu_docs_per_s_vs_transformers"] = round(rows["mmlu"]["docs_per_s"] / data["hf"]["docs_per_s"], 2)
    for row in rows.values():  # data-parallel rows against the one-GPU row of the same task
        one = rows.get(row["task"]) if row.get("dp", 1) > 1 else None
        if one:
            key = f"{row['task']}_dp{row['dp']}"
            out[f"{key}_vs_one_gpu"] = round(one["run_s"] / row["run_s"], 2)  # end to end, load excluded
            out[f"{key}_same_scores"] = row["metrics"] == one["metrics"]
    eng = data["engine"]
    if eng and eng["task"] in rows:
        r = rows[eng["task"]]
        out["generation_vs_engine"] = round(r["generated_tokens"] / r["wall_s"] / eng["tok_per_s"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="/tmp/dseval_w3")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--tokenizer-dir", default=str(ROOT.parent / "shared" / "data" / "tokenizers" / "deepseek-v3"))
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--runs", default="/tmp/dseval_harness_runs")
    p.add_argument("--tasks", nargs="*", default=["mmlu", "math500"], help="none: the cold and next rows alone")
    p.add_argument("--limit", nargs="*", default=["math500=100"], help="TASK=N docs (per subject for mmlu)")
    p.add_argument("--max-tokens", type=int, default=1024, help="generation tasks' --max-tokens")
    p.add_argument("--dp", type=int, default=1, help="also run each task on this many data-parallel replicas")
    p.add_argument("--hf-docs", type=int, default=500)
    p.add_argument("--hf-batch", type=int, default=16)
    p.add_argument("--cli-timeout", type=float, default=300)
    p.add_argument("--skip", nargs="*", default=[],
                   help="phases to skip: write (reuse the checkpoint at --ckpt) cold hf engine")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny preset, a few docs: the logic, not a measurement")
    p.add_argument("--out", default=str(ROOT / "results" / "bench" / "harness.json"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    limits = {k: int(v) for k, v in (item.split("=") for item in args.limit)}
    device = "cpu" if args.smoke else "cuda"
    paths = [Path(args.out)] + ([Path(os.environ["OUT"]) / "harness.json"] if os.environ.get("OUT") else [])
    report = Report(paths, {"argv": sys.argv, "smoke": args.smoke, "layers": args.layers, "tasks": args.tasks,
                            "limits": limits, "max_tokens": args.max_tokens})
    extra = ["--device", "cpu"] if args.smoke else []
    if args.smoke:
        from dseval.engine.loading.presets import ensure_preset

        model_dir = ensure_preset("tiny")
        args.hf_docs = min(args.hf_docs, 2)
    else:
        model_dir = Path(args.ckpt)
        report.data["meta"]["gpu"] = gpu_name()
        if "write" not in args.skip:
            # In a child process: a CUDA context left in this one would share the GPU with every
            # run timed after it, which a user's run does not.
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                write_s = pool.submit(write_w3, model_dir, args.layers, Path(args.tokenizer_dir)).result()
            report.data["meta"]["write_s"] = round(write_s, 1)
            say(f"checkpoint at {model_dir}: written in {report.data['meta']['write_s']} s")
        elif not (model_dir / "config.json").exists():
            raise SystemExit(f"--skip write: no checkpoint at {model_dir} (its config.json is missing)")
    report.save()
    fresh_install(args)
    if "cold" not in args.skip:  # a one-doc run on a fresh install, then the same again
        for name in ("cold", "next"):
            try:
                report.data["cli"].append(run_cli(name, "mmlu", str(model_dir), args, extra + ["--limit", "1"]))
            except Exception as e:  # noqa: BLE001 (one failed phase must not end the run)
                report.error(name, e)
            report.save()
    for task in args.tasks:
        flags = task_flags(task, args, limits)
        # A generation task's first run on the machine compiles the decode kernels (MMLU never
        # decodes); the row named for the task is the next run, as the engine phase is.
        for name in ([task] if task == "mmlu" else [f"{task}-first", task]):
            try:
                report.data["cli"].append(run_cli(name, task, str(model_dir), args, extra + flags))
            except Exception as e:  # noqa: BLE001
                report.error(name, e)
            report.save()
    if args.dp > 1:  # the same tasks again on args.dp replicas, kernels cached by the rows above
        for task in args.tasks:
            try:
                report.data["cli"].append(run_cli(f"{task}-dp{args.dp}", task, str(model_dir), args,
                                                  extra + task_flags(task, args, limits), dp=args.dp))
            except Exception as e:  # noqa: BLE001
                report.error(f"{task}-dp{args.dp}", e)
            report.save()
    if "hf" not in args.skip and "mmlu" in args.tasks:
        try:
            report.data["hf"] = run_hf_loglikelihood(model_dir, args, device)
            say(f"hf: {report.data['hf']}")
        except Exception as e:  # noqa: BLE001
            report.error("hf", e)
        report.save()
    gen_tasks = [t for t in args.tasks if t != "mmlu"]
    if "engine" not in args.skip and gen_tasks:
        try:
            report.data["engine"] = run_engine_generate(model_dir, gen_tasks[0], args, limits.get(gen_tasks[0]))
            say(f"engine: {report.data['engine']}")
        except Exception as e:  # noqa: BLE001
            report.error("engine", e)
    report.data["ratios"] = ratios(report.data)
    report.save()
    print_table(report.data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
