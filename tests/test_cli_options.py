"""Every command that runs a model takes the same model options, declared once."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from dseval.backends.base import BackendOptions
from dseval.cli import app

REPO = Path(__file__).resolve().parents[1]
MODEL_COMMANDS = ("run", "niah", "generate", "chat", "serve")
OPTION_NAMES = {f.name for f in fields(BackendOptions)}
COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]


def flags(command: str) -> dict[str, Any]:
    return {p.name: p for p in COMMANDS[command].params}


def test_each_model_command_takes_every_model_option() -> None:
    for command in MODEL_COMMANDS:
        assert OPTION_NAMES <= set(flags(command)), command
    for name in OPTION_NAMES:  # the same flag and help everywhere; only niah's batch default differs
        assert len({(tuple(flags(c)[name].opts), flags(c)[name].help) for c in MODEL_COMMANDS}) == 1, name
    assert flags("run")["batch_size"].default == BackendOptions().batch_size and flags("niah")["batch_size"].default == 8


def test_readme_niah_example_with_tp_parses() -> None:
    lines = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("torchrun") and " niah " in line]
    assert lines, "the README shows the sweep on a tensor-parallel model"
    args = shlex.split(lines[0].split("#")[0])
    args = args[args.index("dseval") + 2 :]  # after `-m dseval niah`
    ctx = COMMANDS["niah"].make_context("niah", args)
    assert ctx.params["tp"] == 8 and ctx.params["model"] == "/ckpt/DeepSeek-V3"


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What each command hands on, captured instead of running a model."""
    seen: dict[str, Any] = {}
    import dseval.backends.engine_entrypoints as entrypoints
    import dseval.runner as runner

    monkeypatch.setattr(runner, "evaluate", lambda config, tasks=None: seen.update(config=config, tasks=tasks) or {})
    monkeypatch.setattr(entrypoints, "generate_file", lambda model, *args: seen.update(options=args[5], seed=args[6]))
    monkeypatch.setattr(entrypoints, "chat_loop", lambda model, options, *args, **kw: seen.update(options=options, seed=args[2]))
    import uvicorn

    import dseval.backends.registry as registry
    import dseval.serve as serve

    monkeypatch.setattr(registry, "load_backend", lambda model, options: seen.update(options=options))
    monkeypatch.setattr(serve, "Server", lambda *args, **kwargs: type("App", (), {"app": lambda self: None})())
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    return seen


MODEL_ARGS = ["--batch-size", "3", "--dtype", "bfloat16", "--moe-comm", "all_reduce", "--max-num-batched-tokens", "64",
              "--prefill-attention", "fp8", "--speculative", "mtp"]
WANT = BackendOptions(batch_size=3, dtype="bfloat16", moe_comm="all_reduce", max_num_batched_tokens=64, prefill_attention="fp8",
                      speculative="mtp")


@pytest.mark.parametrize("command", [
    ["run", "mmlu", "--model", "tiny"],
    ["niah", "--model", "tiny", "--lengths", "1k,2k", "--depths", "0,50"],
    ["generate", "--model", "tiny", "--input-file", "prompts.txt", "--seed", "5"],
    ["chat", "--model", "tiny", "--seed", "5"],
    ["serve", "--model", "tiny", "--port", "0"],
])
def test_options_reach_the_command_as_one_object(command: list[str], captured: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, [*command, *MODEL_ARGS])
    assert result.exit_code == 0, result.output
    options = captured["config"].options if "config" in captured else captured["options"]
    assert options == WANT
    if command[0] == "niah":
        assert (captured["tasks"][0].lengths, captured["tasks"][0].depths) == ((1024, 2048), (0, 50))
    if command[0] in ("generate", "chat"):
        assert captured["seed"] == 5


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_one_check_per_knob_for_every_command(command: str, captured: dict[str, Any]) -> None:
    args = {"run": ["run", "mmlu"], "niah": ["niah"], "generate": ["generate", "--input-file", "p.txt"], "chat": ["chat"],
            "serve": ["serve"]}[command]
    result = CliRunner().invoke(app, [*args, "--model", "tiny", "--batch-size", "0"])
    assert result.exit_code == 2 and "--batch-size must be positive, got 0" in result.output


@pytest.mark.parametrize("command,refusal", [(["generate", "--input-file", "p.txt"], "runs one model replica"),
                                             (["chat"], "runs one model replica"),
                                             (["serve"], "--dp 2 does not divide the 1 processes started by torchrun")])
def test_commands_refuse_a_dp_they_cannot_run(command: list[str], refusal: str, captured: dict[str, Any]) -> None:
    """generate and chat run one replica; serve shares batches among replicas, so it needs torchrun."""
    result = CliRunner().invoke(app, [*command, "--model", "tiny", "--dp", "2"])
    assert result.exit_code == 2 and refusal in result.output


def _dseval(nproc: int, *args: str, stdin: str | None = None) -> str:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "dseval"]
    proc = subprocess.run((launcher if nproc > 1 else [sys.executable, "-m", "dseval"]) + list(args), input=stdin,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_generate_and_chat_split_one_model_under_torchrun(tmp_path: Path) -> None:
    """``--tp 2`` under torchrun: rank 0 alone writes generate's lines and chat's replies (every
    rank reads rank 0's input), and they are the single-process ones."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The capital of France is\nOne, two, three,\n")
    lines = {}
    for nproc in (1, 2):
        out = tmp_path / f"out{nproc}.jsonl"
        _dseval(nproc, "generate", "--model", "tiny", "--device", "cpu", "--input-file", str(prompts), "--output-file",
                str(out), "--max-new-tokens", "4", *(["--tp", "2"] if nproc > 1 else []))
        lines[nproc] = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines[2]) == 2 and lines[2] == lines[1]
    single = _dseval(1, "chat", "--model", "tiny", "--device", "cpu", "--max-new-tokens", "4", stdin="Hello\n/exit\n")
    split = _dseval(2, "chat", "--model", "tiny", "--device", "cpu", "--max-new-tokens", "4", "--tp", "2", stdin="Hello\n/exit\n")
    assert single.count(">>> ") == 2 and split.endswith(single)
