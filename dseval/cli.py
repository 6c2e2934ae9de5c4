"""The ``dseval`` command line (typer).

Each command builds one validated config object and hands it on; user errors
(:class:`~dseval.errors.UserError`) print one line and exit non-zero without a traceback.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dseval.backends.base import BackendOptions
from dseval.backends.registry import backend_kinds
from dseval.cli_options import model_options, print_argument_types_in_words
from dseval.config import RunConfig
from dseval.distributed import shared_stdin, start_one_replica, start_processes
from dseval.errors import UserError

app = typer.Typer(help="Evaluate DeepSeek-V3-class models: run benchmarks, score, compare.", no_args_is_help=True, add_completion=False)
print_argument_types_in_words()
F = TypeVar("F", bound=Callable[..., Any])
MODEL_HELP = "Checkpoint folder, preset (tiny), replay:PATH or openai:URL#MODEL (see `dseval models`)."


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
@model_options()
def run(
    model: Annotated[str, typer.Option(help=MODEL_HELP)],
    options: BackendOptions,
    tasks: Annotated[list[str] | None, typer.Argument(help="Task names (see `dseval tasks`).")] = None,
    suite: Annotated[str | None, typer.Option(help="Run a suite instead of TASKS: a name in configs/suites or a TOML file.")] = None,
    task_arg: Annotated[list[str] | None, typer.Option(help="KEY=VALUE option for the tasks that take it (repeatable).")] = None,
    since: Annotated[str | None, typer.Option(help="Only problems from this date on (YYYY-MM-DD; livecodebench).")] = None,
    until: Annotated[str | None, typer.Option(help="Only problems up to this date (YYYY-MM-DD; livecodebench).")] = None,
    out: Annotated[Path, typer.Option(help="Run folder; an interrupted run there is resumed.")] = Path("runs/latest"),
    limit: Annotated[int | None, typer.Option(help="At most N docs per task (per subject for MMLU).")] = None,
    ids: Annotated[str | None, typer.Option(help="Only these doc ids, comma-separated.")] = None,
    shots: Annotated[int | None, typer.Option(help="Few-shot examples (default: the task's reference).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for sampling and seeded draws.")] = 1234,
    data_dir: Annotated[str | None, typer.Option(help="Folder laid out like shared/data, or `hub`; default $DSEVAL_DATA_DIR.")] = None,
    chat: Annotated[bool, typer.Option(help="Use the chat prompts and the model's chat template.")] = False,
    samples: Annotated[int, typer.Option(help="Samples per doc for generation tasks (pass@k).")] = 1,
    max_tokens: Annotated[int | None, typer.Option(help="Override the tasks' generation token limit.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature for every request (default: each "
                                                          "task's protocol, greedy for most).")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling mass (default: the task's protocol).")] = None,
    top_k: Annotated[int | None, typer.Option(help="Sample among the k most likely tokens (0: off).")] = None,
    system_prompt: Annotated[str | None, typer.Option(help="System turn of chat prompts.")] = None,
    strip_reasoning: Annotated[bool | None, typer.Option(
        help="Remove a leading <think>...</think> block from answers before scoring (raw text kept in the "
             "sample). Default: on for chat runs and chat tasks, off for base prompts.")] = None,
    strict: Annotated[bool, typer.Option(help="Code tasks: count passes the sandbox flagged as tampered as failures.")] = False,
    judge: Annotated[str | None, typer.Option(help="Model spec of the LLM judge for judge-scored tasks (arena_hard, "
                                                   "alpacaeval2), e.g. openai-chat:URL#MODEL.")] = None,
) -> None:
    """Run TASKS (or a --suite) against a model, writing run.json, samples and summary.json to --out."""
    from dseval.report import print_summary
    from dseval.runner import evaluate
    from dseval.suites import load_suite

    loaded = load_suite(suite) if suite else None
    if loaded and tasks:
        raise UserError(f"give either task names or --suite, not both (--suite {suite} runs {len(loaded.tasks)} tasks)")
    if loaded and chat and not loaded.chat:
        raise UserError(f"suite {loaded.name} is for base models (chat = false in its file); leave out --chat")
    if loaded and shots is not None:
        raise UserError(f"--shots would override the shots of suite {loaded.name}; leave it out or run tasks by name")
    task_args = tuple(("", *_key_value(arg)) for arg in task_arg or ())
    task_args += tuple(("", key, value) for key, value in (("since", since), ("until", until)) if value is not None)
    config = RunConfig(
        tasks=tuple(t.name for t in loaded.tasks) if loaded else tuple(tasks or ()), model=model,
        task_shots=loaded.task_shots() if loaded else (), task_args=(loaded.task_args() if loaded else ()) + task_args,
        out=out, limit=limit, ids=tuple(ids.split(",")) if ids else None, shots=shots, seed=seed, data_dir=data_dir,
        chat=chat or bool(loaded and loaded.chat), samples=samples, max_tokens=max_tokens, options=options, strict=strict,
        judge=judge, temperature=temperature, top_p=top_p, top_k=top_k, system_prompt=system_prompt,
        strip_reasoning=strip_reasoning,
    )  # fmt: skip
    summary = evaluate(config)
    if summary:  # rank 0 under torchrun
        print_summary(summary)
        if loaded:
            from dseval.layouts import get_layout
            from dseval.leaderboard import load_board
            from dseval.leaderboard_render import render

            typer.echo(f"\n{loaded.description or loaded.name}\n")
            typer.echo(render(load_board([out], layout=get_layout(loaded.layout) if loaded.layout else None), "md"), nl=False)


def _key_value(arg: str) -> tuple[str, str]:
    key, sep, value = arg.partition("=")
    if not sep or not key:
        raise UserError(f"--task-arg {arg!r}: expected KEY=VALUE")
    return key, value


@app.command()
@user_errors
def score(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `dseval run`.")],
    partial: Annotated[bool, typer.Option(help="Score an unfinished run too; its summary says complete: false.")] = False,
) -> None:
    """Recompute every metric and summary.json from the run's samples alone (exit 2 on an
    unfinished run unless --partial)."""
    from dseval.report import print_summary
    from dseval.runner import rescore
    from dseval.store import RunStore

    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} not found")
    print_summary(rescore(RunStore(run_dir), partial))


@app.command("tasks")
@user_errors
def list_tasks() -> None:
    """List tasks: name, data source, shots, request type, headline metric."""
    from dseval.task import all_tasks

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
    loglikelihood_atol: Annotated[float, typer.Option(help="With --exact: loglikelihoods may differ by this many nats "
                                                            "(float32 sums move in their last bits between CPU models).")] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")] = False,
    junit: Annotated[Path | None, typer.Option(help="Also write the report as JUnit XML here.")] = None,
) -> None:
    """Regression gate: exit 1 when a task dropped beyond chance, is missing or under its floor; 2 when the
    runs are not comparable (task version, prompts, data, shots, generation settings, engine numerics)."""
    import json
    from dataclasses import replace

    from dseval.compare import compare_runs
    from dseval.gate_output import summary_line, table, write_junit
    from dseval.gate_settings import GateSettings

    if loglikelihood_atol < 0 or (loglikelihood_atol and not exact):
        raise UserError(f"--loglikelihood-atol {loglikelihood_atol}: must be >= 0, and it applies to --exact comparisons only")
    settings = GateSettings.from_file(tolerances, exact) if tolerances else GateSettings(exact=exact)
    settings = replace(settings, loglikelihood_atol=loglikelihood_atol)
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
@model_options(batch_size=8)
def niah(
    options: BackendOptions,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    out: Annotated[Path, typer.Option(help="Run folder (resumable; a larger grid extends it); niah.png, "
                                           "niah_lengths.png and niah.json land here.")] = Path("runs/niah"),
    grid: Annotated[str | None, typer.Option(help="Preset grid: deepseek (15 x 15, 2K-128K, the report's Figure 8) or "
                                                  "readme (4K-128K, the README's figure).")] = None,
    lengths: Annotated[str | None, typer.Option(help="Context lengths in tokens: values and START:STOP:STEP ranges, "
                                                     "comma-separated (1k,2k; 4k:128k:x2 doubles; 2k:128k:9k adds). "
                                                     "Default: 1K-128K doubling, or the --grid's.")] = None,
    depths: Annotated[str | None, typer.Option(help="Needle depths in percent, values or ranges (0:100:10, the "
                                                    "default, or the --grid's).")] = None,
    haystack: Annotated[str, typer.Option(help="noise (RULER's repeated sentences, needs no data), drop (DROP's "
                                               "passages, from --data-dir) or the path of a text file.")] = "noise",
    samples: Annotated[int, typer.Option(help="Needles per cell (each its own code and place); cells show a 95% "
                                              "interval when above 1.")] = 1,
    report: Annotated[Path | None, typer.Option(help="Draw the heatmap and bars of this finished or partial niah "
                                                     "run folder; runs no model.")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Folder laid out like shared/data (for --haystack drop).")] = None,
    chat: Annotated[bool, typer.Option(help="Ask through the chat template.")] = False,
) -> None:
    """The long-context sweep: needle retrieval over context length x depth, with its heatmap."""
    from dseval.niah import choose_grid, length_label, report_rows, write_report
    from dseval.runner import evaluate
    from dseval.store import RunStore
    from dseval.task import get_task

    if report is None and model is None:
        raise UserError("give --model to run the sweep, or --report RUN_DIR to draw an existing one")
    if report is None:
        cells = choose_grid(grid, lengths, depths)
        task = get_task("niah", **cells, haystack=haystack, samples=samples)
        config = RunConfig(tasks=("niah",), model=model, out=out, data_dir=data_dir, chat=chat, options=options)
        if not evaluate(config, tasks=[task]):
            return  # a peer rank under torchrun: rank 0 draws
    elif not (report / "run.json").is_file():
        raise UserError(f"--report {report}: no run.json there; give the folder a `dseval niah` run wrote")
    folder = report or out
    table = write_report(RunStore(folder))
    heat = Table("depth", *map(length_label, table["lengths"]), title="retrieved")
    for row in report_rows(table):
        heat.add_row(*row)
    Console().print(heat)
    Console().print(f"heatmap: {folder / 'niah.png'}  bars: {folder / 'niah_lengths.png'}")


@app.command()
@user_errors
@model_options()
def generate(
    model: Annotated[str, typer.Option(help="Checkpoint folder or preset.")],
    input_file: Annotated[Path, typer.Option(help="One prompt per line, or JSONL with a `prompt` field.")],
    options: BackendOptions,
    output_file: Annotated[Path | None, typer.Option(help="JSONL output (default: stdout).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Token limit per prompt.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 for greedy.")] = 0.0,
    chat: Annotated[bool, typer.Option(help="Wrap each prompt in the chat template.")] = False,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    """Batch generation, one JSON line per prompt (prompt, token ids, output)."""
    from dseval.backends.engine_entrypoints import generate_file

    topology = start_one_replica(options, "generate")
    if not topology.is_leader:  # tensor/expert-parallel peers compute the same lines: rank 0 writes them
        output_file = Path(os.devnull)
    generate_file(model, input_file, output_file, max_new_tokens, temperature, chat, options, seed)


@app.command()
@user_errors
@model_options()
def chat(
    model: Annotated[str, typer.Option(help="Checkpoint folder or preset.")],
    options: BackendOptions,
    max_new_tokens: Annotated[int, typer.Option(help="Token limit per reply.")] = 512,
    temperature: Annotated[float, typer.Option(help="0 for greedy.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    """Interactive chat with the chat template (/clear resets, /exit quits)."""
    from dseval.backends.engine_entrypoints import chat_loop

    topology = start_one_replica(options, "chat")
    # Under torchrun rank 0 reads the terminal and every rank gets its lines; rank 0 answers.
    stdin, stdout = (None, None) if topology.world_size == 1 else shared_stdin(topology)
    chat_loop(model, options, max_new_tokens, temperature, seed, stdin=stdin, stdout=stdout)


@app.command()
@user_errors
@model_options()
def serve(
    model: Annotated[str, typer.Option(help=MODEL_HELP)],
    options: BackendOptions,
    host: Annotated[str, typer.Option(help="Address to bind; the default takes no connections from other machines.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    served_model_name: Annotated[str | None, typer.Option(help="The name clients send as `model` (default: --model).")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key clients must send as a "
                                                  "bearer token; unset: no key.")] = "DSEVAL_API_KEY",
    max_request_bytes: Annotated[int, typer.Option(help="Larger request bodies are refused (413).")] = 8 * 1024 * 1024,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (completions, chat, models, health).
    Under torchrun rank 0 serves; with --dp each batch is shared among the replicas, and with
    --tp/--ep the other ranks of a replica run its model calls."""
    import uvicorn

    from dseval.backends.registry import load_backend
    from dseval.batcher import follow
    from dseval.serve import Server

    if not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {port}")
    topology = start_processes(options)
    backend = load_backend(model, options)
    if not topology.is_leader:
        follow(backend, topology)
        backend.close()
        return
    server = Server(backend, served_model_name or model, os.environ.get(api_key_env) or None, max_request_bytes,
                    topology=topology)
    Console(stderr=True).print(f"serving {served_model_name or model!r} on http://{host}:{port}/v1", highlight=False)
    uvicorn.run(server.app(), host=host, port=port, log_level="warning")


#: What help prints for each value type: words a user reads ("INTEGER"), not Python's <int>.
TYPE_WORDS = {int: "INTEGER", float: "NUMBER", str: "TEXT", Path: "PATH", bool: ""}


def name_types_in_words(typer_app: typer.Typer) -> None:
    """Give every option without a metavar the word for its type (flags none; an argument's
    metavar would replace its name).

    The annotations are strings (``from __future__ import annotations``) that typer evaluates
    anew, so they are replaced by their evaluated, annotated objects first."""
    for command in typer_app.registered_commands:
        hints = typing.get_type_hints(command.callback, include_extras=True)
        inspect.unwrap(command.callback).__annotations__ = command.callback.__annotations__ = hints
        for hint in hints.values():
            if typing.get_origin(hint) is not Annotated:
                continue
            value, *extras = typing.get_args(hint)
            info = next((e for e in extras if isinstance(e, typer.models.OptionInfo)), None)
            inner = [a for a in typing.get_args(value) if a is not type(None)] or [value]
            many = typing.get_origin(inner[0]) is list
            word = TYPE_WORDS.get(typing.get_args(inner[0])[0] if many else inner[0])
            if info is not None and info.metavar is None and word is not None:
                info.metavar = word + ("..." if many and word else "")


def version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"dseval {version('dseval')}")
        except PackageNotFoundError:
            typer.echo("dseval (not installed: running from a checkout)")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Evaluate DeepSeek-V3-class models: run benchmarks, score, compare."""


name_types_in_words(app)


def main() -> None:
    app(prog_name="dseval")


if __name__ == "__main__":
    sys.exit(main())
