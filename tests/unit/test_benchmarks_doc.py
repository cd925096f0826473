"""docs/benchmarks.md is rendered from the benchmarks' result files: the renderer shows every table
with its provenance, and the committed page is exactly its rendering (never edited by hand)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"


def _load(name: str):
    """A module of benchmarks/ (a folder of scripts, not a package), loaded from its file."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load("render")
results = _load("results")

MACHINE = {"cpu": "Test CPU 9000", "cores": 4, "ram_gb": 8.0, "os": "TestOS 1", "python": "3.11.7"}
TEMPLATE = """# Figures

Prose about the first benchmark.

{{ result bench_a | python benchmarks/bench_a.py }}

## Second

{{ result bench_b | python benchmarks/bench_b.py }}

{{ result bench_c | python benchmarks/bench_c.py --train-seeds 1,2 }}
"""


def _result(name: str, **changes) -> dict:
    result = {"benchmark": name, "command": f"python benchmarks/{name}.py --rows 10",
              "date_utc": "2026-01-02T03:04:05Z", "wall_seconds": 65.4, "machine": MACHINE,
              "commit": {"hash": "abc1234", "dirty": False},
              "figures": {"rows_per_s": 1234.5},
              "tables": [{"title": "Throughput", "columns": ["path", "rows", "rows/s"], "align": "lrr",
                          "rows": [["stock", "1,000", "100"], ["ours | fast", "1,000", "1,234"]]}],
              "notes": ["speed-up: 12.3x (target >= 10x)"]}
    return {**result, **changes}


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "bench_a.json").write_text(json.dumps(_result("bench_a")))
    (tmp_path / "results" / "bench_b.json").write_text(json.dumps(_result(
        "bench_b", commit={"hash": "def5678", "dirty": True}, wall_seconds=12.0, notes=[],
        tables=[{"title": "Latency", "columns": ["store", "p50"], "align": "lr", "rows": [["ours", "0.42"]],
                 "notes": ["p50 under 1 ms | target met"]}])))
    (tmp_path / "page.md.in").write_text(TEMPLATE)
    return tmp_path


def test_each_result_renders_its_tables_and_provenance(folder):
    out = folder / "docs" / "page.md"
    assert render.main(["--template", str(folder / "page.md.in"), "--results", str(folder / "results"),
                        "--out", str(out)]) == 0
    page = out.read_text()
    assert "Prose about the first benchmark." in page and "## Second" in page
    assert ("Measured 2026-01-02 on Test CPU 9000, 4 cores, 8 GB RAM, TestOS 1, Python 3.11.7; commit abc1234; "
            "`python benchmarks/bench_a.py --rows 10`; 1 min 5 s.") in page
    assert "commit def5678 with uncommitted changes; `python benchmarks/bench_b.py --rows 10`; 12 s." in page
    assert ("**Throughput**\n\n| path | rows | rows/s |\n|---|---:|---:|\n| stock | 1,000 | 100 |\n"
            "| ours \\| fast | 1,000 | 1,234 |") in page
    assert "- speed-up: 12.3x (target >= 10x)" in page
    assert "| store | p50 |\n|---|---:|\n| ours | 0.42 |\n\n- p50 under 1 ms | target met" in page
    assert "Not yet measured: run `python benchmarks/bench_c.py --train-seeds 1,2`." in page
    assert "{{" not in page
    assert render.main(["--template", str(folder / "page.md.in"), "--results", str(folder / "results"),
                        "--out", str(out), "--check"]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["page.md"]  # no temporary file left beside it


def test_a_result_the_template_does_not_show_is_an_error(folder):
    (folder / "results" / "bench_new.json").write_text(json.dumps(_result("bench_new")))
    with pytest.raises(ValueError, match="bench_new"):
        render.render(TEMPLATE, render.load_results(folder / "results"))


def test_a_benchmark_run_writes_a_result_the_renderer_shows(tmp_path):
    run = results.Run("bench_a", argv=[str(BENCHMARKS / "bench_a.py"), "--rows", "10"])
    run.figures["rows_per_s"] = 1234.5
    run.table("Throughput", ["path", "rows/s", "target"], [["ours", "1,234", "at least 10x"], ["stock", "100", None]])
    run.note("speed-up: 12.3x")
    written = json.loads(run.write(tmp_path).read_text())
    assert written["command"] == "python benchmarks/bench_a.py --rows 10"
    assert written["date_utc"].endswith("Z") and written["wall_seconds"] >= 0
    assert set(written["machine"]) == {"cpu", "cores", "ram_gb", "os", "python"}
    table = written["tables"][0]
    assert table["align"] == "lrl" and table["rows"][1] == ["stock", "100", ""]
    assert table["notes"] == ["speed-up: 12.3x"] and written["notes"] == []
    page = render.render(TEMPLATE, {"bench_a": written})
    assert "`python benchmarks/bench_a.py --rows 10`" in page
    assert "| ours | 1,234 | at least 10x |\n| stock | 100 |  |\n\n- speed-up: 12.3x" in page


def test_the_committed_page_is_its_rendering():
    expected = render.render(render.TEMPLATE.read_text(), render.load_results(render.RESULTS))
    assert render.OUT.read_text() == expected, "docs/benchmarks.md is rendered: run python benchmarks/render.py"
