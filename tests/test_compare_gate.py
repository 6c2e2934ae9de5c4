"""The regression gate (``dseval compare``): the four defects of issue 19 and their fixes, the
tests it runs, the comparability checks, tolerances, exact mode, baselines and its outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fake_model import FakeBackend, hashed_score
from synthetic_runs import write_run

from dseval.baseline import update_baseline
from dseval.compare import compare_runs
from dseval.config import RunConfig
from dseval.gate_settings import GateSettings
from dseval.runner import evaluate
from dseval.significance import holm, mcnemar_exact, paired_bootstrap

TESTS = Path(__file__).parent


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TESTS / "fake_cli.py"), *args], capture_output=True, text=True)


def flipped(n: int, flips: int) -> tuple[list[float], list[float]]:
    base = [1.0] * (n // 2) + [0.0] * (n - n // 2)
    return base, [0.0] * flips + base[flips:]


@pytest.fixture(scope="module")
def fake_runs(tmp_path_factory, data_dir: Path) -> dict[str, Path]:
    """Real runner, fake model: MMLU --limit 1 (57 docs) and --limit 2, 0 and 5 shots, with DROP."""
    root = tmp_path_factory.mktemp("gate")
    runs = {
        "both": RunConfig(tasks=("mmlu", "drop"), model="fake:hash", out=root / "both", limit=1, data_dir=str(data_dir)),
        "mmlu1": RunConfig(tasks=("mmlu",), model="fake:hash", out=root / "mmlu1", limit=1, data_dir=str(data_dir)),
        "mmlu2": RunConfig(tasks=("mmlu",), model="fake:hash", out=root / "mmlu2", limit=2, data_dir=str(data_dir)),
        "shots0": RunConfig(tasks=("mmlu",), model="fake:hash", out=root / "shots0", limit=1, shots=0, data_dir=str(data_dir)),
    }
    for config in runs.values():
        evaluate(config, FakeBackend(hashed_score))
    return {name: config.out for name, config in runs.items()}


# -- the four defects of issue 19 -----------------------------------------------------------


def test_defect1_missing_task_fails(fake_runs) -> None:
    report = compare_runs(fake_runs["both"], fake_runs["mmlu1"])
    assert {r.task: r.status for r in report.results} == {"mmlu": "ok", "drop": "MISSING"}
    proc = cli("compare", str(fake_runs["both"]), str(fake_runs["mmlu1"]))
    assert proc.returncode == 1 and "MISSING" in proc.stdout


def test_defect2_only_paired_docs_with_n_mismatch_reported(fake_runs) -> None:
    """--limit 1 against --limit 2: the first 57 docs are the same, so nothing changed."""
    [result] = compare_runs(fake_runs["mmlu1"], fake_runs["mmlu2"]).results
    assert (result.base_n, result.new_n, result.paired_n) == (57, 114, 57)
    assert result.diff == 0 and result.p == 1.0 and result.status == "ok"
    assert any("n differs" in reason for reason in result.reasons)
    full_means = [json.loads((fake_runs[k] / "summary.json").read_text())["tasks"]["mmlu"]["metrics"]["acc"] for k in ("mmlu1", "mmlu2")]
    assert full_means[0] != full_means[1], "the unpaired means differ: the defect compared those"
    proc = cli("compare", str(fake_runs["mmlu1"]), str(fake_runs["mmlu2"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_defect3_different_shots_are_not_comparable(fake_runs) -> None:
    report = compare_runs(fake_runs["mmlu1"], fake_runs["shots0"])
    assert report.exit_code == 2
    assert "shots: 5 vs 0" in report.results[0].reasons
    assert any("config.shots" in reason for reason in report.reasons)
    proc = cli("compare", str(fake_runs["mmlu1"]), str(fake_runs["shots0"]))
    assert proc.returncode == 2 and "not comparable" in proc.stdout and "shots" in proc.stdout
    proc = cli("compare", str(fake_runs["mmlu1"]), str(fake_runs["shots0"]), "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 2 and report["verdict"] == "incomparable" and report["tasks"][0]["status"] == "INCOMPARABLE"


def test_defect4_four_of_300_flipped_is_not_a_drop(tmp_path: Path) -> None:
    base, new = flipped(300, 4)
    report = compare_runs(write_run(tmp_path / "a", {"drop": base}), write_run(tmp_path / "b", {"drop": new}))
    [result] = report.results
    assert result.test == "mcnemar" and result.p == pytest.approx(0.125) and result.status == "ok"
    assert report.exit_code == 0


# -- tests and decisions ---------------------------------------------------------------------


def test_many_flips_are_a_drop_and_an_improvement_is_not(tmp_path: Path) -> None:
    base, new = flipped(300, 30)
    a, b = write_run(tmp_path / "a", {"mmlu": base}), write_run(tmp_path / "b", {"mmlu": new})
    [drop] = compare_runs(a, b).results
    assert drop.status == "DROP" and drop.p == pytest.approx(2 * 0.5**30) and drop.diff == pytest.approx(-0.1)
    assert compare_runs(b, a).results[0].status == "better"


def test_mcnemar_and_holm_against_hand_values() -> None:
    assert mcnemar_exact([1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 1]) == pytest.approx(0.125)
    assert mcnemar_exact([1, 0], [1, 0]) == 1.0
    assert mcnemar_exact([1, 1, 1, 0, 0], [0, 0, 1, 1, 0]) == pytest.approx(1.0)  # 2 worse, 1 better: 2-sided p=1
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_holm_keeps_two_borderline_tasks_from_failing(tmp_path: Path) -> None:
    """6 discordant docs all one way: p = 2/64 each; alone a drop, two at once not after Holm."""
    base, new = flipped(100, 6)
    alone = compare_runs(write_run(tmp_path / "a1", {"t": base}), write_run(tmp_path / "b1", {"t": new}))
    assert alone.results[0].status == "DROP"
    both = compare_runs(write_run(tmp_path / "a2", {"t": base, "u": base}), write_run(tmp_path / "b2", {"t": new, "u": new}))
    assert [r.p_holm for r in both.results] == pytest.approx([0.0625, 0.0625])
    assert both.exit_code == 0


def test_bootstrap_for_continuous_scores_is_seeded(tmp_path: Path) -> None:
    base = [((i * 37) % 100) / 100 for i in range(200)]
    close = [v - (0.01 if i % 2 else -0.01) for i, v in enumerate(base)]
    lower = [max(0.0, v - 0.1) for v in base]
    assert paired_bootstrap(base, close, seed=1) == paired_bootstrap(base, close, seed=1)
    assert paired_bootstrap(base, close, 2000) > 0.5
    assert paired_bootstrap(base, lower, 2000) == pytest.approx(1 / 2001)
    [result] = compare_runs(write_run(tmp_path / "a", {"drop": base}, "f1"), write_run(tmp_path / "b", {"drop": lower}, "f1")).results
    assert result.test == "bootstrap" and result.status == "DROP"


@pytest.mark.parametrize("suffix", ["toml", "json"])
def test_tolerance_and_floor_from_a_file(tmp_path: Path, suffix: str) -> None:
    base, new = flipped(300, 30)  # a 10-point significant drop, new score 40.0
    a, b = write_run(tmp_path / "a", {"mmlu": base, "drop": base}), write_run(tmp_path / "b", {"mmlu": new, "drop": new})
    settings = {"alpha": 0.01, "tasks": {"mmlu": {"tolerance": 12}, "drop": {"tolerance": 12, "floor": 45}}}
    path = tmp_path / f"tol.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(settings))
    else:
        path.write_text("alpha = 0.01\n[tasks.mmlu]\ntolerance = 12\n[tasks.drop]\ntolerance = 12\nfloor = 45\n")
    report = compare_runs(a, b, GateSettings.from_file(path))
    assert {r.task: r.status for r in report.results} == {"mmlu": "ok", "drop": "FLOOR"}
    proc = cli("compare", str(a), str(b), "--tolerances", str(path), "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["tasks"][1]["status"] == "FLOOR"


def test_bad_tolerance_file_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "tol.toml"
    path.write_text("[tasks.mmlu]\ntolerence = 1\n")
    proc = cli("compare", str(tmp_path), str(tmp_path), "--tolerances", str(path))
    assert proc.returncode == 2 and "tol.toml: [tasks.mmlu]: unknown key(s) tolerence" in proc.stderr


# -- comparability -----------------------------------------------------------------------------


@pytest.mark.parametrize("field,values", [("max_tokens", (None, 64)), ("prefill_attention", ("auto", "fp8")), ("chat", (False, True))])
def test_generation_settings_and_numerics_make_runs_incomparable(tmp_path: Path, field: str, values: tuple) -> None:
    a = write_run(tmp_path / "a", {"t": [1.0, 0.0]}, **{field: values[0]})
    b = write_run(tmp_path / "b", {"t": [1.0, 0.0]}, **{field: values[1]})
    report = compare_runs(a, b)
    assert report.exit_code == 2 and report.reasons == [f"run.json config.{field}: {values[0]!r} in the baseline, {values[1]!r} in the new run"]


def test_a_different_gold_on_a_paired_doc_is_incomparable(tmp_path: Path) -> None:
    a, b = write_run(tmp_path / "a", {"t": [1.0, 0.0, 1.0]}), write_run(tmp_path / "b", {"t": [1.0, 0.0]})
    lines = (b / "t" / "samples.jsonl").read_text().replace('"target": 1,', '"target": 7,')
    (b / "t" / "samples.jsonl").write_text(lines)
    [result] = compare_runs(a, b).results
    assert result.status == "INCOMPARABLE" and "1 paired doc(s) have a different target, e.g. t/1" in result.reasons


# -- exact mode and baselines --------------------------------------------------------------


def test_baseline_holds_no_benchmark_text_and_pairs_exactly(fake_runs, tmp_path: Path) -> None:
    pinned = update_baseline(fake_runs["both"], "pinned", tmp_path / "baselines")
    text = (pinned / "mmlu" / "samples.jsonl").read_text()
    first_prompt = json.loads((fake_runs["both"] / "mmlu" / "samples.jsonl").read_text().split("\n")[0])["prompt"]
    assert '"prompt"' not in text and first_prompt[:40] not in text and "prompt_sha256" in text
    assert compare_runs(pinned, fake_runs["both"], GateSettings(exact=True)).exit_code == 0

    changed = tmp_path / "changed"
    subprocess.run(["cp", "-r", str(fake_runs["both"]), str(changed)], check=True)
    path = changed / "mmlu" / "samples.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[3]["loglikelihoods"][0] = float.fromhex(records[3]["loglikelihoods"][0].hex()) * (1 + 2**-52)  # one ulp
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    report = compare_runs(pinned, changed, GateSettings(exact=True))
    mmlu = report.results[0]
    assert mmlu.status == "CHANGED" and mmlu.reasons == [f"loglikelihoods of 1 doc(s) changed: {records[3]['id']}"]
    assert compare_runs(pinned, changed).exit_code == 0, "without --exact the same scores pass"
    assert compare_runs(pinned, changed, GateSettings(exact=True, loglikelihood_atol=1e-4)).exit_code == 0
    records[3]["loglikelihoods"][0] += 1e-3  # more than float32 summation order moves it
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert compare_runs(pinned, changed, GateSettings(exact=True, loglikelihood_atol=1e-4)).results[0].status == "CHANGED"
    proc = cli("compare", str(pinned), str(changed), "--loglikelihood-atol", "1e-4")
    assert proc.returncode == 2 and "applies to --exact comparisons only" in proc.stderr
    junit = tmp_path / "gate.xml"
    proc = cli("compare", str(pinned), str(changed), "--exact", "--junit", str(junit))
    assert proc.returncode == 1 and "CHANGED" in proc.stdout
    suite = ET.parse(junit).getroot()
    assert suite.get("failures") == "1" and suite.find("testcase[@name='mmlu.acc']/failure").get("type") == "CHANGED"
