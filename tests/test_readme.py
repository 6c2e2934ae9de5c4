"""The README's two set-up commands stay true: CI runs the same test command."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = text.split("```bash\n")[1:3]
    return [block.split("\n```")[0].strip() for block in blocks]


def test_ci_runs_the_readme_test_command() -> None:
    install_and_run, run_tests = setup_commands()
    assert "dseval run" in install_and_run and "--model tiny" in install_and_run
    test_command = run_tests.split("&&")[-1].strip()
    assert test_command in (REPO / ".ci" / "run").read_text()
