"""The README's two set-up commands stay true: CI runs the same test command."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = text.split("```bash\n")[1:3]
    return [block.split("\n```")[0].strip() for block in blocks]


def test_ci_runs_both_readme_commands_verbatim() -> None:
    install_and_run, run_tests = setup_commands()
    assert "dseval run" in install_and_run and "--model tiny" in install_and_run
    assert run_tests.endswith("python3 -m pytest -q")
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert install_and_run in ci_lines
    assert run_tests in ci_lines


def test_ci_makes_fresh_environments() -> None:
    """CI must not reuse what an earlier run installed on the machine: that hid a broken install."""
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.count("python3 -m venv") >= 2
    assert "constraints.txt" in ci and (REPO / "constraints.txt").is_file()
