"""A benchmark run's result file: what was run, where, on which code, and what it measured.

    from results import Run        # beside the benchmarks: `python benchmarks/bench_x.py` finds it

    run = Run("bench_x")           # at the start: the command line, the UTC date, the clock
    run.figures["rows_per_s"] = 123_456.0
    run.table("Throughput", ["rows", "rows/s"], [["1,000,000", "123,456"]])
    run.note("target: met")        # shown under the table recorded last
    run.write()                    # benchmarks/results/bench_x.json, written atomically

Every benchmark writes one such file (committed beside the benchmarks), and
`python benchmarks/render.py` renders docs/benchmarks.md from them: every figure there comes from
a run and carries its date, machine, commit, command line and wall time. `figures` holds the
measurements as numbers, for anyone comparing runs; `tables` (each with the lines that conclude it)
hold what the benchmark prints, already formatted, so the renderer knows nothing of any
benchmark's internals.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
# What a run writes itself: a result file or the rendered page must not make the next run's commit "dirty".
NOT_CODE = ("benchmarks/results", "docs/benchmarks.md")
_NUMBER = re.compile(r"^[-+~]?(\d[\d,]*)?(\.\d+)?(e[-+]?\d+)?\s*(%|x|s|ms|GB|MB|MiB|EUR)?$", re.IGNORECASE)


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _ram_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _os_name() -> str:
    try:
        name = platform.freedesktop_os_release()["PRETTY_NAME"]
    except (OSError, KeyError, AttributeError):
        return platform.platform(terse=True)
    return f"{name}, {platform.system()} {platform.release()}"


def machine() -> dict:
    """The machine a run is on: CPU model, logical cores, RAM, OS and Python."""
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "ram_gb": _ram_gb(), "os": _os_name(),
            "python": platform.python_version()}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def commit() -> dict | None:
    """The checkout's commit (short hash) and whether its tree has changes (result files aside)."""
    short = _git("rev-parse", "--short", "HEAD")
    if short is None:
        return None
    changes = _git("status", "--porcelain", "--", ".", *(f":(exclude){p}" for p in NOT_CODE))
    return {"hash": short, "dirty": bool(changes)}


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as run, from the repository root: `python benchmarks/bench_x.py --option ...`."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else HERE
    try:
        shown = script.relative_to(REPO).as_posix()
    except ValueError:
        shown = str(script)
    return shlex.join(["python", shown, *argv[1:]])


def _align(rows: Sequence[Sequence[str]], n: int) -> str:
    """'r' for a column whose every non-empty cell is a number (with an optional unit), else 'l'."""
    out = []
    for j in range(n):
        cells = [row[j].strip().strip("*") for row in rows if j < len(row) and row[j].strip()]
        out.append("r" if cells and all(_NUMBER.match(c) for c in cells) else "l")
    return "".join(out)


class Run:
    """One run of one benchmark, written as `benchmarks/results/<name>.json` by `write()`."""

    def __init__(self, name: str, argv: Sequence[str] | None = None):
        self.name = name
        self.command = command_line(argv)
        self.started = datetime.now(timezone.utc)
        self._clock = time.perf_counter()
        self.figures: dict = {}
        self.tables: list[dict] = []
        self.notes: list[str] = []

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence], align: str | None = None) -> None:
        """A table as printed: column names and rows of cells (formatted text; None for an empty cell).

        `align` has one letter per column, 'l' or 'r'; by default numbers go right, text left.
        """
        cells = [["" if c is None else str(c) for c in row] for row in rows]
        if any(len(row) != len(columns) for row in cells):
            raise ValueError(f"{title}: every row needs {len(columns)} cells")
        align = align or _align(cells, len(columns))
        if len(align) != len(columns) or set(align) - {"l", "r"}:
            raise ValueError(f"{title}: align needs one of 'l'/'r' per column, got {align!r}")
        self.tables.append({"title": title, "columns": [str(c) for c in columns], "align": align, "rows": cells,
                            "notes": []})

    def note(self, line: str) -> None:
        """A line the benchmark concludes with (a ratio, a target met or not): it belongs to the table
        recorded last, and is shown under it; before any table, it is shown after all of them."""
        (self.tables[-1]["notes"] if self.tables else self.notes).append(line)

    def as_dict(self) -> dict:
        return {"benchmark": self.name, "command": self.command,
                "date_utc": self.started.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "wall_seconds": round(time.perf_counter() - self._clock, 1),
                "machine": machine(), "commit": commit(),
                "figures": self.figures, "tables": self.tables, "notes": self.notes}

    def write(self, results: Path = RESULTS) -> Path:
        """Writes the result file atomically and says where."""
        from nextbest.io import write_json

        path = write_json(results / f"{self.name}.json", self.as_dict())
        path.chmod(0o644)
        print(f"result: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}", flush=True)
        return path

    def finish(self, results: Path = RESULTS) -> Path:
        """Prints the lines that conclude every table, then writes the result file."""
        for table in self.tables:
            for line in table["notes"]:
                print(line)
        return self.write(results)
