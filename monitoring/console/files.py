"""What the console reads besides the event log: monitor reports, outbound plans, the model
registry and a customer's rows of the raw and feature tables. Every reader returns plain values
and None (or an empty list) where the work directory does not have the thing yet.
"""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

DAY_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}")
PLAN_DIR = re.compile(r"^(?P<campaign>.+)-(?P<day>\d{4}-\d{2}-\d{2})$")
MODELS = ("nbp", "churn")


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def latest_report(root: Path) -> Path | None:
    """The newest monitor report folder (`reports/<date...>/` holding summary.json), or None."""
    reports = root / "reports"
    if not reports.is_dir():
        return None
    found = [p for p in reports.iterdir() if p.is_dir() and DAY_DIR.match(p.name) and (p / "summary.json").is_file()]
    return max(found, key=lambda p: (p.name, p.stat().st_mtime)) if found else None


def report_json(folder: Path | None, name: str) -> dict | None:
    return None if folder is None else _read_json(folder / name)


def plans(root: Path) -> list[dict]:
    """Outbound plans under `plans/`, newest day first: {campaign, day, folder, summary (plan.json)}."""
    folder = root / "plans"
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        m = PLAN_DIR.match(p.name)
        if not (p.is_dir() and m):
            continue
        try:
            day = date.fromisoformat(m["day"])
        except ValueError:
            continue
        summary = _read_json(p / "plan.json")
        if summary is not None:
            out.append({"campaign": m["campaign"], "day": day, "folder": p, "summary": summary})
    return sorted(out, key=lambda x: (x["day"], x["campaign"]), reverse=True)


# ------------------------------------------------------------------------------------------------ registry
def registry_client(mlflow_uri: str):
    """An MLflow client of the work directory's registry (a local SQLite file), or None when there is
    no such file yet (a client would create one) or the registry is a server."""
    if not mlflow_uri.startswith("sqlite:///") or not Path(mlflow_uri[len("sqlite:///"):]).is_file():
        return None
    from mlflow.tracking import MlflowClient  # slow to import: only for the models page (or its warm-up)

    return MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)


def registry(client, names: tuple[str, ...] = MODELS) -> dict:
    """Each model's versions with their aliases and tags (test metrics for the aliased ones, else the
    newest) and its champion history (the `champion_history` tag, oldest first).

    Returns:
        {name: {"versions": [{version, created_ms, run_id, aliases, tags, metrics}], "history": [...]}},
        versions newest first; a model not registered is left out.
    """
    out = {}
    for name in names:
        found = client.search_registered_models(filter_string=f"name = '{name}'")
        if not found:
            continue
        model = found[0]
        try:
            history = json.loads((model.tags or {}).get("champion_history", "[]"))
        except ValueError:
            history = []
        versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: -int(v.version))
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        rows = [{"version": str(v.version), "created_ms": v.creation_timestamp, "run_id": v.run_id,
                 "aliases": sorted(aliases.get(str(v.version), [])),
                 "tags": {k: t for k, t in (v.tags or {}).items() if k != "sha256"}, "metrics": {}} for v in versions]
        for row in [r for r in rows if r["aliases"]] or rows[:1]:
            if row["run_id"]:
                metrics = client.get_run(row["run_id"]).data.metrics
                row["metrics"] = {k[len("test_"):]: v for k, v in metrics.items() if k.startswith("test_")}
        out[name] = {"versions": rows, "history": [h for h in history if isinstance(h, dict)] if isinstance(
            history, list) else []}
    return out


# ------------------------------------------------------------------------------------------------ customers
def pseudonym_key(root: Path) -> bytes | None:
    """The key the service pseudonymises ids with, read without creating one (None: none yet)."""
    from nextbest.serving.privacy import read_key

    return read_key(root)


def customer_rows(path: Path, customer_id: str, columns: list[str] | None = None):
    """The rows of one customer in a parquet table (a DataFrame, empty if none), or None if the table is missing."""
    if not path.is_file():
        return None
    import pandas as pd

    try:
        return pd.read_parquet(path, columns=columns, filters=[("customer_id", "==", customer_id)])
    except (OSError, ValueError, KeyError):
        return None


def latest_features(features_dir: Path, customer_id: str) -> dict | None:
    """The customer's newest row of every feature table in `features_dir` (the built views and the bank's
    own tables, as `nextbest features materialize` loads them into the online store), merged into
    {feature: value}; None when no table has the customer."""
    out: dict = {}
    for path in sorted(features_dir.glob("*.parquet")):
        rows = customer_rows(path, customer_id)
        if rows is None or rows.empty:
            continue
        if "event_timestamp" in rows.columns:
            rows = rows.sort_values("event_timestamp")
        latest = rows.iloc[-1]
        out.update({k: (None if _missing(v) else v) for k, v in latest.items()
                    if k not in ("customer_id", "event_timestamp", "created")})
    return out or None


def _missing(value) -> bool:
    """NaN, NaT, None and pandas' NA (a list or array value is not missing)."""
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
