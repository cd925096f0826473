"""`nextbest ingest` through the CLI: report, files, stale derived data, clear errors."""

from __future__ import annotations

from typer.testing import CliRunner

from nextbest.cli import app
from tests.conftest import UCI_SAMPLE


def test_ingest_uci_reports_and_clears_stale_derived_tables(tmp_path):
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "customer_profile.parquet").write_bytes(b"stale")
    result = CliRunner().invoke(app, ["ingest", "uci-bank-marketing", "--path", str(UCI_SAMPLE),
                                      "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "4,119" in result.output and "removed 1 stale file" in result.output
    assert (tmp_path / "raw" / "offers.parquet").exists() and (tmp_path / "raw" / "uci_contacts.parquet").exists()
    assert not (tmp_path / "features" / "customer_profile.parquet").exists()
    # Contact-level data has no monthly holdings: building features says so instead of crashing.
    result = CliRunner().invoke(app, ["features", "build", "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and "no monthly snapshots" in result.output and "Traceback" not in result.output


def test_ingest_errors_are_one_clear_line(tmp_path):
    result = CliRunner().invoke(app, ["ingest", "santander", "--path", str(tmp_path / "train_ver2.csv"),
                                      "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and "train_ver2.csv" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["ingest", "kaggle", "--path", "x", "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and "SOURCE must be" in result.output
