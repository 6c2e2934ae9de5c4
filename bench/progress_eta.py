"""How well the progress bar's ETA foretells the end of a real run (issue 16).

The bar draws only on a terminal, so ``record`` runs the command on a pseudo-terminal and keeps
every chunk it prints with the seconds since the start; ``report`` reads each frame's ETA and
compares it with the time left until the frame that shows the task done.

    python bench/progress_eta.py record RUN.jsonl -- python -m dseval run math500 --model engine:CKPT
    python bench/progress_eta.py report first=RUN1.jsonl next=RUN2.jsonl --out results/bench/progress_eta.json

A recording holds one JSON array ``[seconds, text]`` per chunk read from the terminal.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import struct
import sys
import termios
import time
from pathlib import Path
from typing import Any

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# description, done/total, percent, docs/s, tok/s, elapsed, "eta", remaining (make_progress's columns)
FRAME = re.compile(r"(?P<task>\S+)\s.*?(?P<done>\d+)/(?P<total>\d+)\s+(?P<pct>\d+)%.*?"
                   r"(?P<elapsed>\d+:\d\d:\d\d) eta (?P<eta>-:--:--|\d+:\d\d:\d\d)")
COLUMNS = 160  # wide enough that every column of the bar fits on one line


def record(path: Path, cmd: list[str]) -> int:
    """Runs ``cmd`` on a pseudo-terminal ``COLUMNS`` wide; its exit status is returned."""
    t0 = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["COLUMNS"] = str(COLUMNS)
        os.execvp(cmd[0], cmd)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, COLUMNS, 0, 0))
    with path.open("w") as out:
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            out.write(json.dumps([round(time.perf_counter() - t0, 3), data.decode("utf-8", "replace")]) + "\n")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def seconds(clock: str) -> int | None:
    """``H:MM:SS`` in seconds; rich's ``-:--:--`` (no estimate yet) is None."""
    if clock.startswith("-"):
        return None
    h, m, s = map(int, clock.split(":"))
    return 3600 * h + 60 * m + s


def frames(path: Path) -> list[dict[str, Any]]:
    """Every redraw of the bar: the recording's time, the bar's own elapsed clock and its ETA."""
    out = []
    for line in path.read_text().splitlines():
        t, text = json.loads(line)
        for part in text.split("\r"):
            m = FRAME.search(ANSI.sub("", part))
            if m:
                out.append({"t": t, "done": int(m["done"]), "total": int(m["total"]), "pct": int(m["pct"]),
                            "elapsed": seconds(m["elapsed"]), "eta": seconds(m["eta"])})
    return out


def analyse(name: str, path: Path) -> dict[str, Any]:
    """The ETA against the true time left, at each tenth of the run's wall time."""
    fs = frames(path)
    end = next((f for f in fs if f["done"] == f["total"]), None)
    if not fs or end is None:
        raise SystemExit(f"{path}: no progress frame shows the task done (was it recorded on a terminal?)")
    start, finish = fs[0]["t"], end["t"]
    rows = []
    for tenth in range(1, 10):
        at = start + (finish - start) * tenth / 10
        f = min((f for f in fs if f["t"] <= at), key=lambda f: at - f["t"])
        left = finish - f["t"]
        rows.append({"share_of_run": tenth / 10, "elapsed_s": round(f["t"] - start, 1), "bar": f["done"],
                     "eta_s": f["eta"], "left_s": round(left, 1),
                     "error_s": None if f["eta"] is None else round(f["eta"] - left, 1)})
    after_minute = [abs(f["eta"] - (finish - f["t"])) for f in fs
                    if f["t"] - start >= 60 and f["eta"] is not None and f["t"] < finish]
    return {"name": name, "recording": path.name, "task_s": round(finish - start, 1), "frames": len(fs),
            "total": end["total"], "rows": rows,
            "max_abs_error_after_first_minute_s": round(max(after_minute), 1) if after_minute else None}


def report(runs: list[str], out: Path | None, meta: str) -> None:
    data = {"meta": {"runs": meta}, "runs": [analyse(name, Path(p)) for name, p in (r.split("=", 1) for r in runs)]}
    for run in data["runs"]:
        print(f"\n{run['name']}: {run['total']} docs in {run['task_s']} s")
        print("| share of run | elapsed s | bar | ETA shown s | time left s | error s |")
        for r in run["rows"]:
            print(f"| {r['share_of_run']:.0%} | {r['elapsed_s']} | {r['bar']} | {r['eta_s']} | {r['left_s']} | "
                  f"{r['error_s']} |")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    rec = sub.add_parser("record", help="run a command on a terminal and keep what it prints")
    rec.add_argument("recording", type=Path)
    rec.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
    rep = sub.add_parser("report", help="the ETA against the time left, from recordings")
    rep.add_argument("runs", nargs="+", help="NAME=RECORDING.jsonl")
    rep.add_argument("--out", type=Path)
    rep.add_argument("--meta", default="", help="what the recorded runs were (machine, commands), kept in the JSON")
    args = p.parse_args()
    if args.verb == "record":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            p.error("record: the command to run follows --")
        return record(args.recording, cmd)
    report(args.runs, args.out, args.meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
