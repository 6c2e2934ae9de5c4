"""A two-node launch as DeepSeek's release runs it (``torchrun --nnodes 2`` on each node, c10d
rendezvous), here two launcher processes on one machine over loopback with gloo: ``dseval run
--dp 2`` on the tiny engine gives the single process's scores."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IDS = ",".join(f"mmlu/test/{i}" for i in (0, 500, 1000, 1500, 2000, 2500))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dseval_run(out: Path, data_dir: Path) -> list[str]:
    return ["-m", "dseval", "run", "mmlu", "--model", "engine:tiny", "--device", "cpu", "--ids", IDS,
            "--data-dir", str(data_dir), "--out", str(out)]


def env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_launchers_with_c10d_rendezvous_give_the_single_process_scores(tmp_path: Path, data_dir: Path) -> None:
    single = subprocess.run([sys.executable, *dseval_run(tmp_path / "one", data_dir)], env=env(),
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    port = free_port()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-node-test",
                "--max-restarts", "0"]
    cmd = [*launcher, "--module", *dseval_run(tmp_path / "two", data_dir)[1:], "--dp", "2"]
    nodes = [subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) for _ in range(2)]
    try:
        results = [node.communicate(timeout=600) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, (_, err) in zip(nodes, results):
        assert node.returncode == 0, err[-3000:]

    def scores(out: Path) -> tuple[list[dict], dict]:
        samples = [json.loads(line) for line in (out / "mmlu" / "samples.jsonl").read_text().splitlines()]
        return samples, json.loads((out / "summary.json").read_text())["tasks"]["mmlu"]

    one, one_summary = scores(tmp_path / "one")
    two, two_summary = scores(tmp_path / "two")
    assert [s["id"] for s in two] == [s["id"] for s in one] and len(one) == 6
    for a, b in zip(one, two):
        assert b["loglikelihoods"] == pytest.approx(a["loglikelihoods"], abs=1e-5), a["id"]
        assert b["metrics"] == a["metrics"]
    assert two_summary["metrics"] == one_summary["metrics"]
