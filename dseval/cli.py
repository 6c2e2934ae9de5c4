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
            Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
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
    runs: Annotated[list[Path], typer.Argument(help="Run folders (or their summary.json).")],
    fmt: Annotated[str, typer.Option("--format", help="md, csv, html or latex.")] = "md",
    name: Annotated[list[str] | None, typer.Option(help="Column name per run, in order (default: the model spec).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file instead of stdout.")] = None,
) -> None:
    """A table like the DeepSeek-V3 report's: benchmarks as rows, models as columns, best in bold."""
    from dseval.leaderboard import render, score_frame

    text = render(score_frame(runs, name), fmt)  # type: ignore[arg-type]
    if output:
        output.write_text(text)
    else:
        typer.echo(text, nl=False)


@app.command()
@user_errors
def compare(
    baseline: Annotated[Path, typer.Argument(help="Baseline run folder.")],
    new: Annotated[Path, typer.Argument(help="New run folder.")],
    z: Annotated[float, typer.Option(help="Flag drops more than this many standard errors.")] = 1.96,
    min_drop: Annotated[float, typer.Option(help="...and at least this many points (x100).")] = 0.0,
) -> None:
    """Regression check: exit 1 when a task's headline metric dropped beyond chance."""
    from dseval.compare import compare_runs

    results = compare_runs(baseline, new, z, min_drop)
    table = Table("task", "metric", "baseline", "new", "diff", "z", "test", "verdict")
    for r in results:
        verdict = "[bold red]DROP[/]" if r.regression else "ok"
        test = f"paired n={r.paired_n}" if r.paired_n else "summaries"
        table.add_row(r.task, r.metric, f"{100 * r.baseline:.2f}", f"{100 * r.new:.2f}", f"{100 * r.diff:+.2f}", f"{r.z:.2f}", test, verdict)
    Console().print(table)
    if any(r.regression for r in results):
        raise typer.Exit(1)


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


def main() -> None:
    app(prog_name="dseval")


if __name__ == "__main__":
    sys.exit(main())
