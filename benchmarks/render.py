"""Renders docs/benchmarks.md from its template and the benchmarks' result files.

    python benchmarks/render.py            # or: make benchmarks-doc
    python benchmarks/render.py --check    # exit 1 if docs/benchmarks.md is not what it renders

The template (benchmarks/benchmarks.md.in) holds the prose; each line of the form

    {{ result bench_generate | python benchmarks/bench_generate.py }}

becomes that benchmark's result (benchmarks/results/bench_generate.json, written by the benchmark
itself through benchmarks/results.py): a provenance line (date, machine, commit, command line, wall
time), its tables, each followed by the lines that conclude it, and any lines of its own. Without
a result file it becomes "not yet measured" with the command to run. Every result file must
appear in the template. The page is written atomically (a temporary file, then a rename), so a
reader never sees half of it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "benchmarks.md.in"
RESULTS = HERE / "results"
OUT = HERE.parent / "docs" / "benchmarks.md"
DIRECTIVE = re.compile(r"^\{\{\s*result\s+(?P<name>[A-Za-z0-9_.-]+)\s*\|\s*(?P<command>[^}]+?)\s*\}\}\s*$")
HEADER = ("<!-- Rendered by `python benchmarks/render.py` from benchmarks/benchmarks.md.in and the result files\n"
          "     in benchmarks/results/: edit those (or rerun a benchmark), never this page. -->\n\n")


def duration(seconds: float) -> str:
    """Wall time as people say it: 42 s, 9 min 12 s, 1 h 5 min."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s} s" if s else f"{minutes} min"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m} min" if m else f"{hours} h"


def machine_text(machine: dict | None) -> str:
    """'AMD EPYC, 2 cores, 23.5 GB RAM, Debian ..., Python 3.11.7' from a result's machine."""
    machine = machine or {}
    parts = [machine.get("cpu") or "an unknown CPU"]
    if machine.get("cores"):
        parts.append(f"{machine['cores']} cores")
    if machine.get("ram_gb"):
        parts.append(f"{machine['ram_gb']:g} GB RAM")
    if machine.get("os"):
        parts.append(machine["os"])
    if machine.get("python"):
        parts.append(f"Python {machine['python']}")
    return ", ".join(parts)


def provenance(result: dict) -> str:
    """The line that says where a result's figures come from."""
    commit = result.get("commit") or {}
    where = (f"commit {commit['hash']}" + (" with uncommitted changes" if commit.get("dirty") else "")
             if commit.get("hash") else "outside a git checkout")
    return (f"Measured {result['date_utc'][:10]} on {machine_text(result.get('machine'))}; {where}; "
            f"`{result['command']}`; {duration(result['wall_seconds'])}.")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _notes(notes: list[str]) -> list[str]:
    return ["\n".join(f"- {' '.join(str(n).split())}" for n in notes)] if notes else []


def markdown_table(table: dict) -> str:
    """A result's table as markdown: its title in bold, the columns aligned as recorded, its notes."""
    align = table.get("align") or "l" * len(table["columns"])
    lines = [f"**{table['title']}**", "", "| " + " | ".join(_cell(c) for c in table["columns"]) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table["rows"]]
    return "\n\n".join(["\n".join(lines), *_notes(table.get("notes", []))])


def render_result(result: dict | None, command: str) -> str:
    """One benchmark's block: provenance, tables, the result's own notes; or how to measure it."""
    if result is None:
        return f"Not yet measured: run `{command}`."
    blocks = [provenance(result), *(markdown_table(t) for t in result.get("tables", [])),
              *_notes(result.get("notes", []))]
    return "\n\n".join(blocks)


def load_results(results: Path) -> dict[str, dict]:
    """Every result file in the folder, by benchmark name (the file's stem)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


def render(template: str, results: dict[str, dict]) -> str:
    """The page: the template with every result directive replaced by that result's block."""
    used, out = set(), []
    for number, line in enumerate(template.splitlines(), 1):
        if line.lstrip().startswith("{{"):
            match = DIRECTIVE.match(line.strip())
            if match is None:
                raise ValueError(f"template line {number}: expected '{{{{ result NAME | COMMAND }}}}', got {line!r}")
            used.add(match["name"])
            out.append(render_result(results.get(match["name"]), match["command"]))
        else:
            out.append(line)
    unused = sorted(set(results) - used)
    if unused:
        raise ValueError(f"result files the template does not show: {', '.join(unused)}")
    return HEADER + "\n".join(out).rstrip("\n") + "\n"


def write(path: Path, text: str) -> Path:
    """Writes the page atomically: a temporary file beside it, then a rename."""
    from nextbest.io import atomic_write

    def _write(tmp: str) -> None:
        Path(tmp).write_text(text)
        Path(tmp).chmod(0o644)

    return atomic_write(path, _write)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--template", type=Path, default=TEMPLATE)
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of <benchmark>.json result files")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--check", action="store_true", help="only compare: exit 1 if --out differs from the rendering")
    args = ap.parse_args(argv)
    text = render(args.template.read_text(), load_results(args.results))
    if args.check:
        same = args.out.exists() and args.out.read_text() == text
        print(f"{args.out}: {'up to date' if same else 'differs from its rendering; run python benchmarks/render.py'}")
        return 0 if same else 1
    write(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
