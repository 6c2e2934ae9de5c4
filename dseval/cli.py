"""The ``dseval`` command line (typer).

Each command builds one validated config object and hands it on; user errors
(:class:`~dseval.errors.UserError`) print one line and exit non-zero without a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dseval.backends.base import BackendOptions, backend_kinds
from dseval.config import RunConfig
from dseval.errors import UserError

app = typer.Typer(help="Evaluate DeepSeek-V3-class models: run benchmarks, score, compare.", no_args_is_help=True, add_completion=False)
F = TypeVar("F", bound=Callable[..., Any])
PREFILL_ATTENTION_HELP = ("Built-in engine, CUDA: prefill attention, `auto` (bf16) or `fp8` (e4m3: ~20% faster "
                          "128K prefill, changes numerics).")
PREFILL_CHUNK_HELP = ("Built-in engine: prompt tokens per step, the chunk of chunked prefill (default 16384 on GPUs, "
                      "2048 on CPU). Larger chunks take long prompts faster and need more memory.")


def user_errors(func: F) -> F:
    """Turn a UserError into one line on stderr and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as err:
            Console(stderr=True).print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(err.exit_code) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@user_errors
def run(
    tasks: Annotated[list[str], typer.Argument(help="Task names (see `dseval tasks`).")],
    model: Annotated[str, typer.Option(help="Checkpoint folder, preset (tiny), replay:PATH or openai:URL#MODEL.")],
    out: Annotated[Path, typer.Option(help="Run folder; an interrupted run there is resumed.")] = Path("runs/latest"),
    limit: Annotated[int | None, typer.Option(help="At most N docs per task (per subject for MMLU).")] = None,
    ids: Annotated[str | None, typer.Option(help="Only these doc ids, comma-separated.")] = None,
    shots: Annotated[int | None, typer.Option(help="Few-shot examples (default: the task's reference).")] = None,
    batch_size: Annotated[int, typer.Option(help="Most sequences the engine runs at once.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed for sampling and seeded draws.")] = 1234,
    data_dir: Annotated[str | None, typer.Option(help="Folder laid out like shared/data, or `hub`; default $DSEVAL_DATA_DIR.")] = None,
    chat: Annotated[bool, typer.Option(help="Use the chat prompts and the model's chat template.")] = False,
    samples: Annotated[int, typer.Option(help="Samples per doc for generation tasks (pass@k).")] = 1,
    max_tokens: Annotated[int | None, typer.Option(help="Override the tasks' generation token limit.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    speculative: Annotated[str | None, typer.Option(help="`mtp` to decode with the MTP draft.")] = None,
    dp: Annotated[int, typer.Option(help="Data-parallel replicas (under torchrun).")] = 1,
    tp: Annotated[int, typer.Option(help="Tensor-parallel ranks per replica.")] = 1,
    ep: Annotated[int, typer.Option(help="Expert-parallel ranks per replica.")] = 1,
    moe_comm: Annotated[str, typer.Option(help="Expert-parallel exchange: all_to_all or all_reduce.")] = "all_to_all",
    prefill_attention: Annotated[str, typer.Option(help=PREFILL_ATTENTION_HELP)] = "auto",
    max_num_batched_tokens: Annotated[int | None, typer.Option(help=PREFILL_CHUNK_HELP)] = None,
) -> None:
    """Run TASKS against a model, writing run.json, samples and summary.json to --out."""
    from dseval.report import print_summary
    from dseval.runner import evaluate

    config = RunConfig(
        tasks=tuple(tasks), model=model, out=out, limit=limit, ids=tuple(ids.split(",")) if ids else None, shots=shots,
        batch_size=batch_size, seed=seed, data_dir=data_dir, chat=chat, samples=samples, max_tokens=max_tokens,
        device=device, speculative=speculative, dp=dp, tp=tp, ep=ep, moe_comm=moe_comm,
        prefill_attention=prefill_attention, max_num_batched_tokens=max_num_batched_tokens,
    )  # fmt: skip
    summary = evaluate(config)
    if summary:  # rank 0 under torchrun
        print_summary(summary)


@app.command()
@user_errors
def score(run_dir: Annotated[Path, typer.Argument(help="A run folder written by `dseval run`.")]) -> None:
    """Recompute every metric and summary.json from the run's samples alone."""
    from dseval.report import print_summary
    from dseval.runner import rescore
    from dseval.store import RunStore

    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} not found")
    print_summary(rescore(RunStore(run_dir)))


@app.command("tasks")
@user_errors
def list_tasks() -> None:
    """List tasks: name, data source, shots, request type, headline metric."""
    from dseval.tasks.base import all_tasks

    table = Table("task", "data (Hub | local)", "shots", "requests", "headline", "version")
    for name, cls in all_tasks().items():
        table.add_row(name, cls.dataset.describe(), str(cls.default_shots), cls.request_type, cls.headline, cls.version)
    Console().print(table)


@app.command()
@user_errors
def models() -> None:
    """List model spec kinds and the built-in engine presets."""
    from dseval.engine.api import list_presets

    table = Table("spec", "what it is")
    for name, description in list_presets():
        table.add_row(name, description)
    for prefix, description in backend_kinds().items():
        table.add_row(f"{prefix}:...", description)
    table.add_row("PATH", "a Hugging Face DeepSeek-V3 checkpoint folder, run by the built-in engine")
    Console().print(table)


@app.command()
@user_errors
def leaderboard(
    runs: Annotated[list[Path], typer.Argument(help="Run folders or reference files (results/reference/*.json).")],
    fmt: Annotated[str, typer.Option("--format", help="md, csv, html (one page, chart embedded) or latex.")] = "md",
    name: Annotated[list[str] | None, typer.Option(help="Column name per run, in order (default: the model spec).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file instead of stdout.")] = None,
    layout: Annotated[str | None, typer.Option(help="Rows and groups of a published table: deepseek-v3-base or deepseek-v3-chat.")] = None,
    stderr: Annotated[bool, typer.Option(help="Print ± standard errors where runs have them.")] = False,
    chart: Annotated[Path | None, typer.Option(help="Also write a grouped bar chart PNG (benchmark x model).")] = None,
) -> None:
    """A table like the DeepSeek-V3 report's: benchmarks by category as rows, models as columns, best in bold;
    rows whose runs differ (version, shots, prompts, docs) are flagged, limited runs marked."""
    from dseval.layouts import get_layout
    from dseval.leaderboard import load_board
    from dseval.leaderboard_render import chart_png, render

    board = load_board(runs, name, get_layout(layout) if layout else None)
    text = render(board, fmt, stderr)  # type: ignore[arg-type]
    if chart:
        chart.write_bytes(chart_png(board))
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        typer.echo(text, nl=False)


@app.command()
@user_errors
def compare(
    baseline: Annotated[Path, typer.Argument(help="Baseline run folder (e.g. results/baselines/NAME).")],
    new: Annotated[Path, typer.Argument(help="New run folder.")],
    tolerances: Annotated[Path | None, typer.Option(help="TOML or JSON: alpha, per-task tolerance/floor in points.")] = None,
    exact: Annotated[bool, typer.Option(help="Tolerance 0: per-sample outputs and loglikelihoods must be identical.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")] = False,
    junit: Annotated[Path | None, typer.Option(help="Also write the report as JUnit XML here.")] = None,
) -> None:
    """Regression gate: exit 1 when a task dropped beyond chance, is missing or under its floor; 2 when the
    runs are not comparable (task version, prompts, data, shots, generation settings, engine numerics)."""
    import json

    from dseval.compare import compare_runs
    from dseval.gate_output import summary_line, table, write_junit
    from dseval.gate_settings import GateSettings

    settings = GateSettings.from_file(tolerances, exact) if tolerances else GateSettings(exact=exact)
    report = compare_runs(baseline, new, settings)
    if junit:
        write_junit(report, junit)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        Console(width=200).print(table(report))
        Console().print(summary_line(report), highlight=False)
    raise typer.Exit(report.exit_code)


baseline_app = typer.Typer(help="Pinned baselines for `dseval compare` (results/baselines/).", no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")


@baseline_app.command("update")
@user_errors
def baseline_update(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
    name: Annotated[str | None, typer.Option(help="Baseline name (default: the run folder's name).")] = None,
    root: Annotated[Path, typer.Option(help="Folder of baselines.")] = Path("results/baselines"),
) -> None:
    """Copy a run's run.json, summary.json and per-doc records (digests instead of prompts, golds and
    outputs: no benchmark text) into ROOT/NAME, replacing what was there."""
    from dseval.baseline import update_baseline

    typer.echo(f"baseline written: {update_baseline(run_dir, name, root)}")


@app.command()
@user_errors
def niah(
    model: Annotated[str, typer.Option(help="Checkpoint folder, preset, or openai:URL#MODEL.")],
    out: Annotated[Path, typer.Option(help="Run folder (resumable); niah.png and niah.json land here.")] = Path("runs/niah"),
    lengths: Annotated[str, typer.Option(help="Context lengths in tokens, comma-separated (4k = 4096).")] = "1k,2k,4k,8k,16k,32k,64k,128k",
    depths: Annotated[str, typer.Option(help="Needle depths in percent, comma-separated.")] = "0,10,20,30,40,50,60,70,80,90,100",
    data_dir: Annotated[str | None, typer.Option(help="Folder laid out like shared/data (the haystack is DROP's passages).")] = None,
    chat: Annotated[bool, typer.Option(help="Ask through the chat template.")] = False,
    batch_size: Annotated[int, typer.Option(help="Most sequences at once.")] = 8,
    device: Annotated[str | None, typer.Option(help="cpu or cuda.")] = None,
    prefill_attention: Annotated[str, typer.Option(help=PREFILL_ATTENTION_HELP)] = "auto",
    max_num_batched_tokens: Annotated[int | None, typer.Option(help=PREFILL_CHUNK_HELP)] = None,
) -> None:
    """The long-context sweep: needle retrieval over context length x depth, with its heatmap."""
    from dseval.niah import length_label, write_report
    from dseval.runner import evaluate
    from dseval.store import RunStore
    from dseval.tasks.niah import NeedleInAHaystack, parse_length

    try:
        task = NeedleInAHaystack([parse_length(x) for x in lengths.split(",")], [int(x) for x in depths.split(",")])
    except ValueError as err:
        raise UserError(f"--lengths/--depths: {err}") from None
    config = RunConfig(tasks=("niah",), model=model, out=out, data_dir=data_dir, chat=chat, batch_size=batch_size, device=device,
                       prefill_attention=prefill_attention, max_num_batched_tokens=max_num_batched_tokens)
    if evaluate(config, tasks=[task]):
        table = write_report(RunStore(out), f"needle in a haystack: {model}")
        grid = Table("depth", *map(length_label, table["lengths"]), title="retrieved")
        for depth, row in zip(table["depths"], table["acc"], strict=True):
            grid.add_row(f"{depth}%", *["-" if v is None else f"{v:.0%}" for v in row])
        Console().print(grid)
        Console().print(f"heatmap: {out / 'niah.png'}")


@app.command()
@user_errors
def generate(
    model: Annotated[str, typer.Option(help="Checkpoint folder or preset.")],
    input_file: Annotated[Path, typer.Option(help="One prompt per line, or JSONL with a `prompt` field.")],
    output_file: Annotated[Path | None, typer.Option(help="JSONL output (default: stdout).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Token limit per prompt.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 for greedy.")] = 0.0,
    chat: Annotated[bool, typer.Option(help="Wrap each prompt in the chat template.")] = False,
    batch_size: Annotated[int, typer.Option(help="Most sequences at once.")] = 32,
    device: Annotated[str | None, typer.Option(help="cpu or cuda.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    """Batch generation, one JSON line per prompt (prompt, token ids, output)."""
    from dseval.backends.engine_entrypoints import generate_file

    options = BackendOptions(batch_size=batch_size, device=device, seed=seed)
    generate_file(model, input_file, output_file, max_new_tokens, temperature, chat, options)


@app.command()
@user_errors
def chat(
    model: Annotated[str, typer.Option(help="Checkpoint folder or preset.")],
    max_new_tokens: Annotated[int, typer.Option(help="Token limit per reply.")] = 512,
    temperature: Annotated[float, typer.Option(help="0 for greedy.")] = 0.0,
    device: Annotated[str | None, typer.Option(help="cpu or cuda.")] = None,
) -> None:
    """Interactive chat with the chat template (/clear resets, /exit quits)."""
    from dseval.backends.engine_entrypoints import chat_loop

    chat_loop(model, BackendOptions(device=device), max_new_tokens, temperature)


@app.command()
@user_errors
def serve(
    model: Annotated[str, typer.Option(help="Checkpoint folder, preset (tiny), replay:PATH or openai:URL#MODEL.")],
    host: Annotated[str, typer.Option(help="Address to bind; the default takes no connections from other machines.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    served_model_name: Annotated[str | None, typer.Option(help="The name clients send as `model` (default: --model).")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key clients must send as a "
                                                  "bearer token; unset: no key.")] = "DSEVAL_API_KEY",
    max_request_bytes: Annotated[int, typer.Option(help="Larger request bodies are refused (413).")] = 8 * 1024 * 1024,
    batch_size: Annotated[int, typer.Option(help="Most sequences the engine runs at once.")] = 32,
    seed: Annotated[int, typer.Option(help="Engine seed.")] = 1234,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    max_num_batched_tokens: Annotated[int | None, typer.Option(help=PREFILL_CHUNK_HELP)] = None,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (completions, chat, models, health)."""
    import os

    import uvicorn

    from dseval.backends.base import load_backend
    from dseval.serve import Server

    if not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {port}")
    options = BackendOptions(batch_size=batch_size, seed=seed, device=device, max_num_batched_tokens=max_num_batched_tokens)
    backend = load_backend(model, options)
    server = Server(backend, served_model_name or model, os.environ.get(api_key_env) or None, max_request_bytes)
    Console(stderr=True).print(f"serving {served_model_name or model!r} on http://{host}:{port}/v1", highlight=False)
    uvicorn.run(server.app(), host=host, port=port, log_level="warning")


def main() -> None:
    app(prog_name="dseval")


if __name__ == "__main__":
    sys.exit(main())
