"""The `nextbest` command: one thin Typer command per pipeline stage.

Heavy libraries (Feast, MLflow, Evidently, torch) are imported inside the commands that need
them, so `nextbest --help` and light commands stay fast.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from nextbest.cli_simulate import simulate as simulate_command
from nextbest.constants import DEFAULT_PORT, DEFAULT_SEED, WORKDIR_ENV
from nextbest.settings import Paths

app = typer.Typer(help="nextbest: next-best-offer platform for retail banks.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
features_app = typer.Typer(help="Feature tables and the Feast feature store.", no_args_is_help=True)
app.add_typer(features_app, name="features")
console = Console(stderr=True)

WorkdirOpt = typer.Option(None, "--workdir", "-w", help=f"Work directory (env {WORKDIR_ENV}; default: the project's "
                          "work/, else ./.nextbest; `nextbest info` shows which).")


class StageError(Exception):
    """A stage failed with a message meant for the user (no stack trace)."""


@contextmanager
def stage(name: str):
    """Prints a status line while a stage runs and its timing when it ends."""
    started = time.perf_counter()
    with console.status(f"[bold]{name}[/]…"):
        yield
    console.print(f"[green]✓[/] {name} [dim]({time.perf_counter() - started:.1f}s)[/]")


def _paths(workdir: Optional[Path]) -> Paths:
    """The work directory's paths (created), once every config in force is known to be valid: a bad
    one names its file, field and value, and the command exits 2 before any work."""
    return _run(_open_workdir, workdir)


def _open_workdir(workdir: Optional[Path]) -> Paths:
    from nextbest.config import validate_all

    paths = Paths.from_workdir(workdir)
    # --workdir is NEXTBEST_HOME for this command and what it starts (the service, torchrun), so that a
    # work directory inside a project folder finds that project's configs from anywhere.
    os.environ[WORKDIR_ENV] = str(paths.root)
    validate_all()
    return paths.ensure()


def _error(message, label: str = "error:") -> None:
    """One error line on stderr, never cut or wrapped (paths stay whole) nor read as markup."""
    from rich.markup import escape

    console.print(f"[red]{label}[/] {escape(str(message))}", soft_wrap=True, highlight=False)


def _user_errors():
    from nextbest.config import ConfigError
    from nextbest.features.schema import SchemaError

    return (SchemaError, ConfigError, FileNotFoundError, LookupError, StageError, ValueError)


def _run(fn, *args, **kwargs):
    """Runs a stage, turning expected failures into a one-line error and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except _user_errors() as exc:
        _error(exc)
        raise typer.Exit(2) from None


# -- stages ------------------------------------------------------------------------------------

def do_generate(paths: Paths, customers: int, months: int, seed: int, end: Optional[str],
                drift: Optional[str] = None, drift_from: Optional[str] = None) -> dict[str, int]:
    import pandas as pd

    from nextbest.config import load_catalogue
    from nextbest.simulation.bank import BankSpec, last_month_end
    from nextbest.simulation.drift import DRIFT_KINDS, DriftSpec
    from nextbest.simulation.write import generate_to

    if customers < 10:
        raise StageError(f"--customers must be at least 10, got {customers}")
    if months < 4:
        raise StageError(f"--months must be at least 4 (train, validation and test months need history), got {months}")
    spec = BankSpec(n_customers=customers, n_months=months, seed=seed,
                    end=pd.Timestamp(end) if end else last_month_end())
    what = ""
    if drift is not None:
        if drift not in DRIFT_KINDS:
            raise StageError(f"--drift must be one of {', '.join(DRIFT_KINDS)}, got {drift!r}")
        month_ends = spec.month_ends()
        start = len(month_ends) - 1
        if drift_from is not None:
            try:
                wanted = pd.Period(drift_from, freq="M")
            except ValueError:
                raise StageError(f"--drift-from must be a month YYYY-MM, got {drift_from!r}") from None
            found = [i for i, m in enumerate(month_ends) if pd.Period(m, freq="M") == wanted]
            if not found or found[0] < 1:
                raise StageError(f"--drift-from {drift_from}: must be one of the simulated months after the first "
                                 f"({month_ends[1]:%Y-%m} .. {month_ends[-1]:%Y-%m})")
            start = found[0]
        spec = BankSpec(n_customers=customers, n_months=months, seed=seed, end=spec.end,
                        drift=DriftSpec(drift, start))
        what = f", {drift} drift from {month_ends[start]:%Y-%m}"
    elif drift_from is not None:
        raise StageError("--drift-from needs --drift")
    with stage(f"generate a synthetic bank ({customers:,} customers x {months} months, seed {seed}{what})"):
        rows = generate_to(paths, load_catalogue(), spec)
    return rows


def do_features_build(paths: Paths) -> None:
    from nextbest.config import load_catalogue
    from nextbest.features.pipeline import build_features_to

    with stage("build feature tables"):
        build_features_to(paths, load_catalogue())


def do_features_apply(paths: Paths, online_store: Optional[str] = None, redis_url: Optional[str] = None) -> list[str]:
    from nextbest.feature_repo.store import apply, current_online_store, resolve_online_store

    # Flags, else the environment, else the work dir's current store: re-applying never switches silently.
    choice = resolve_online_store(online_store, redis_url, os.environ, lambda: current_online_store(paths))
    with stage(f"feast apply (registry in feast/registry.db, {choice.describe()})"):
        return apply(paths, choice)


def do_features_materialize(paths: Paths) -> int:
    from nextbest.feature_repo.store import OnlineStoreUnavailable, current_online_store, materialize

    current = current_online_store(paths)
    with stage(f"feast materialize ({current.describe() if current else 'online store'})"):
        try:
            return materialize(paths)
        except OnlineStoreUnavailable as exc:
            raise StageError(f"{exc}; start it, or choose another with `nextbest features apply --online-store "
                             "sqlite|redis [--redis-url URL]`") from None


def _metrics_table(title: str, metrics: dict[str, float]) -> Table:
    """Model, baselines and oracle side by side: one row per metric, one column per ranker."""
    rankers = ["test", "popularity", "lightgbm", "oracle"]
    names = {"test": "model (PyTorch)", "popularity": "popularity", "lightgbm": "LightGBM", "oracle": "oracle"}
    present = [r for r in rankers if any(k.startswith(f"{r}_") for k in metrics)]
    suffixes = sorted({k[len(r) + 1:] for r in present for k in metrics if k.startswith(f"{r}_")},
                      key=lambda s: (not s.startswith(("map", "roc")), s))
    table = Table(title=title)
    table.add_column("metric")
    for r in present:
        table.add_column(names[r], justify="right")
    for s in suffixes:
        if all(f"{r}_{s}" not in metrics for r in present[1:]) and s not in ("map_at_7", "roc_auc", "brier"):
            continue
        table.add_row(s, *[f"{metrics[f'{r}_{s}']:.4f}" if f"{r}_{s}" in metrics else "" for r in present])
    return table


def do_train(paths: Paths, task: str, config: Optional[Path]):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from nextbest.config import load_train_config
    from nextbest.training.pipeline import train_model

    cfg = load_train_config(task, config)
    started = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        # At most max_epochs per network; early stopping ends a network sooner.
        bar = progress.add_task(f"train {task}", total=cfg.max_epochs * cfg.ensemble, info="")

        def on_epoch(epoch: int, m: dict[str, float]) -> None:
            net = f"network {int(m['member']) + 1}/{cfg.ensemble} " if "member" in m else ""
            progress.update(bar, completed=epoch + 1,
                            info=f"{net}epoch {epoch + 1} loss {m['train_loss']:.4f} val {m['val_metric']:.4f}")

        result = train_model(paths, task, cfg, on_epoch=on_epoch,
                             on_stage=lambda s: progress.update(bar, info=s))
    alias = "champion" if result.promoted else "challenger"
    console.print(f"[green]✓[/] train {task}: version {result.version} registered as {alias} "
                  f"[dim]({time.perf_counter() - started:.1f}s; {result.promotion_reason})[/]")
    console.print(_metrics_table(f"{task}: test month {', '.join(result.months['test'])}", result.metrics))
    return result


def do_evaluate(paths: Paths, task: str, version: Optional[str], config: Optional[Path]):
    from nextbest.config import load_train_config
    from nextbest.training.pipeline import evaluate_registered

    cfg = load_train_config(task, config)
    with stage(f"evaluate {task}"):
        version, evaluation = evaluate_registered(paths, task, cfg, version)
    console.print(_metrics_table(f"{task} v{version}", evaluation.metrics))
    return evaluation


def do_ope(paths: Paths, explore_share: float, model: Optional[str] = None) -> dict:
    from nextbest.monitoring.ope import evaluate

    what = "the current posterior" + (f" scoring with nbp@{model}" if model else "")
    with stage(f"off-policy evaluation of {what} at explore share {explore_share:g}"):
        try:
            result = evaluate(paths, explore_share, model)
        except (FileNotFoundError, LookupError) as exc:
            raise StageError(str(exc).strip("'\"")) from None
        from nextbest.io import write_json

        # One file per candidate, beside the monitor's ope.json (same UTC date as the monitor's folder).
        name = f"ope-{model or 'champion'}-explore{explore_share:g}.json"
        out = write_json(paths.reports / time.strftime("%Y-%m-%d", time.gmtime()) / name, result)
    table = Table(title=f"value per decision, {result['decisions']} logged decisions")
    for col in ("estimator", "value", "95% CI"):
        table.add_column(col)
    table.add_row("logged policy (observed)", f"{result['logged_value']:.4f}", "")
    labels = {"ips": "IPS", "snips": "SNIPS", "dr": "DR", "dr_os": "DR, shrunk weights (interval omits its bias)",
              "dm": "direct method (interval omits the model's error)"}
    for name, label in labels.items():
        est = result[name]
        table.add_row(label, f"{est['value']:.4f}", f"[{est['ci95'][0]:.4f}, {est['ci95'][1]:.4f}]")
    console.print(table)
    diag = result["diagnostics"]
    console.print(f"importance weights: effective sample size {diag['effective_sample_size']:,.0f} of "
                  f"{diag['slots']:,} offers ({diag['ess_share']:.1%}), largest weight {diag['max_weight']:,.1f}"
                  + (" -- the candidate strays far from the logged policy: trust the intervals less"
                     if diag["ess_share"] < 0.1 else ""))
    console.print(f"written: {out}")
    return result


def monitor_sections(paths: Paths) -> list:
    """The decision log's sections of the monitor report: business KPIs, control-group uplift, off-policy values."""
    if not paths.events_db.exists():
        return []
    from nextbest.monitoring.charts import kpi_section, uplift_section
    from nextbest.monitoring.ope import ope_section

    return [kpi_section, uplift_section, ope_section]


def do_monitor(paths: Paths, config: Optional[Path] = None) -> dict:
    """Runs `nextbest.monitoring.monitor.run_monitor`; the gate's verdict is in `passed` and `exit_code`."""
    from rich.markup import escape

    from nextbest.monitoring.monitor import load_monitoring, run_monitor

    cfg = load_monitoring(config)
    with console.status("[bold]monitoring[/]…") as status:
        started = time.perf_counter()
        result = run_monitor(paths, cfg, extra_sections=monitor_sections(paths),
                             on_stage=lambda s: status.update(f"[bold]monitoring: {s}[/]…"))
    summary = result.summary
    console.print(f"[green]✓[/] monitoring [dim]({time.perf_counter() - started:.1f}s)[/]")
    section = summary["sections"]["feature_drift"]
    names = ", ".join(summary["drifted_columns"][:12]) + (", ..." if len(summary["drifted_columns"]) > 12 else "")
    console.print(f"drifted feature columns: {len(summary['drifted_columns'])} of {section['n_tested']} "
                  f"(share {summary['share_drifted']:.3f}){': ' + names if names else ''}", highlight=False)
    for check in summary["gate"]["checks"]:
        mark = "[green]pass[/]" if check["passed"] else "[red]FAIL[/]"
        console.print(f"  {mark} " + escape(f"{check['check']}: {check['value']} (limit {check['limit']})"),
                      highlight=False)
    verdict = "[green]passed[/]" if result.passed else "[red]failed[/]"
    console.print(f"gate {verdict}; report: {result.files['html']}")
    return {"files": {k: str(v) for k, v in result.files.items()}, "passed": result.passed,
            "exit_code": result.exit_code, "drifted_columns": summary["drifted_columns"],
            "share_drifted": summary["share_drifted"], "columns": summary["columns"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(paths: Paths, port: int, host: str = "127.0.0.1") -> list[str]:
    bentoml = Path(sys.executable).with_name("bentoml")
    return [str(bentoml if bentoml.exists() else "bentoml"), "serve", "nextbest.serving.service:NextBest",
            "--working-dir", str(paths.root), "--host", host, "--port", str(port)]


def serve_env(paths: Paths) -> dict[str, str]:
    env = dict(os.environ)
    env[WORKDIR_ENV] = str(paths.root)
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    # One thread per BLAS/OpenMP pool: a decision is small matrix work, and extra threads only
    # spin against the API threads (measured: about half the CPU per decision with 1 thread).
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StageError(f"the service exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise StageError(f"the service was not ready on port {port} within {timeout:.0f}s")


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """Stops `bentoml serve` and its workers with SIGTERM (SIGKILL only if it hangs)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


# -- commands ----------------------------------------------------------------------------------

@app.command()
def init(
    directory: Path = typer.Argument(..., help="The project folder to create."),
    name: Optional[str] = typer.Option(None, help="The project's name (default: the folder's name)."),
    force: bool = typer.Option(False, "--force", help="Write into a folder that is not empty, replacing "
                               "nextbest.yaml and the configs there (the work directory is kept)."),
):
    """Create a project folder: nextbest.yaml, configs/ (copies of the defaults, yours to edit), work/."""
    from nextbest.project import init_project

    written = _run(init_project, directory, name, force)
    console.print(f"[green]✓[/] project {written.root}")
    for path in written.files:
        console.print(f"  wrote {path.relative_to(written.root)}")
    console.print(f"\nNext: cd {written.root} && nextbest quickstart   (or edit configs/ first; "
                  "README.md there says what each file holds)")


@app.command()
def info(workdir: Optional[Path] = WorkdirOpt):
    """Where this command finds its project, configs, work directory and MLflow, and whether the configs are valid."""
    from importlib.metadata import version

    import nextbest
    from nextbest.config import CONFIG_NAMES, ConfigError, validate_all
    from nextbest.settings import config_file, describe

    if workdir is not None:
        os.environ[WORKDIR_ENV] = str(Paths.from_workdir(workdir).root)
    try:
        where = describe()
    except ConfigError as exc:
        _error(exc)
        raise typer.Exit(2) from None
    out = Console(soft_wrap=True, highlight=False)  # plain lines: paths are never cut to the terminal's width
    out.print(f"nextbest {version('nextbest')} in {Path(nextbest.__file__).resolve().parent}")
    out.print(f"project:        {where['project']}  ({where['project_from']})")
    out.print(f"work directory: {where['workdir']}  ({where['workdir_from']})")
    out.print(f"MLflow:         {where['mlflow_uri']}  ({where['mlflow_uri_from']})")
    for name in CONFIG_NAMES:
        path = config_file(name)
        out.print(f"config {name}: {path}  "
                  f"({'package default' if path.is_relative_to(where['default_configs']) else 'project'})")
    out.print("\nRule: project = $NEXTBEST_PROJECT, else the nearest folder holding nextbest.yaml at or above "
                  "the current directory, then the work directory; each config is the project's configs/<name>, "
                  "else the package default; work directory = --workdir, else $NEXTBEST_HOME, else the "
                  "project's, else ./.nextbest; MLflow = $NEXTBEST_MLFLOW_URI, else the project's mlflow_uri, "
                  "else the work directory's SQLite file.")
    try:
        validate_all()
    except ConfigError as exc:
        _error(exc, "configs: invalid:")
        raise typer.Exit(2) from None
    console.print("[green]configs: valid[/]")


@app.command()
def generate(
    customers: int = typer.Option(2000, help="Number of customers."),
    months: int = typer.Option(12, help="Number of monthly snapshots."),
    seed: int = typer.Option(DEFAULT_SEED, help="Random seed (same seed, same bank)."),
    end: Optional[str] = typer.Option(None, help="Last snapshot (month end, YYYY-MM-DD); default: last month end."),
    drift: Optional[str] = typer.Option(None, help="Inject drift: income_shift, new_product or behaviour_change "
                                        "(see simulation/drift.py)."),
    drift_from: Optional[str] = typer.Option(None, "--drift-from", help="First drifted month, YYYY-MM (default: the "
                                             "last snapshot month)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Generate a synthetic bank into raw/ (and its truth into truth/)."""
    paths = _paths(workdir)
    rows = _run(do_generate, paths, customers, months, seed, end, drift, drift_from)
    for name, n in sorted(rows.items()):
        console.print(f"  {name}.parquet: {n:,} rows")
    import pandas as pd

    from nextbest.simulation.marginals import marginals, markdown_table

    holdings = pd.read_parquet(paths.raw / "holdings.parquet", columns=["customer_id", "snapshot_date", "product_id"])
    console.print("\nCalibration beside the Santander product-recommendation data:\n")
    console.print(markdown_table(marginals(holdings)), markup=False)


@app.command()
def ingest(
    source: str = typer.Argument(..., help="santander or uci-bank-marketing"),
    path: Path = typer.Option(..., "--path", help="The source file (train_ver2.csv[.zip] or bank-additional-full.csv)."),
    chunksize: int = typer.Option(500_000, min=1000, help="Santander: rows parsed at a time (bounds memory)."),
    mapping: Optional[Path] = typer.Option(None, help="Santander: flag -> product mapping (default "
                                                      "configs/adapters/santander_products.yaml)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Map a real data set onto the canonical raw tables in raw/ (streamed, validated, atomic)."""
    if source not in ("santander", "uci-bank-marketing"):
        console.print(f"[red]error:[/] SOURCE must be 'santander' or 'uci-bank-marketing', got {source!r}")
        raise typer.Exit(2)
    report = _run(do_ingest, _paths(workdir), source, path, chunksize, mapping)
    table = Table(title=f"ingest {source}: {report.source}")
    table.add_column("")
    table.add_column("rows", justify="right")
    table.add_row("read", f"{report.rows_read:,}")
    table.add_row("kept", f"{report.rows_kept:,}")
    table.add_row("rejected", f"{report.rows_rejected:,}")
    for reason, n in sorted(report.rejected_by_reason.items()):
        table.add_row(f"  rejected: {reason}", f"{n:,}")
    for column, n in sorted(report.values_nulled.items()):
        table.add_row(f"  values set missing: {column}", f"{n:,}")
    table.add_row("customers", f"{report.customers:,}")
    table.add_row("snapshots / months", f"{report.snapshots:,}")
    console.print(table)
    for f in report.files:
        console.print(f"  wrote {f}")


def do_ingest(paths: Paths, source: str, path: Path, chunksize: int, mapping: Optional[Path] = None):
    from nextbest.config import load_catalogue

    catalogue = load_catalogue()
    with stage(f"ingest {source} from {path}"):
        if source == "santander":
            from nextbest.features.adapters.santander import ingest_santander, load_santander_mapping

            flags = load_santander_mapping(catalogue, mapping) if mapping else None
            report = ingest_santander(path, paths.raw, catalogue, chunksize=chunksize, mapping=flags)
        else:
            from nextbest.features.adapters.uci_bank_marketing import ingest_uci

            report = ingest_uci(path, paths.raw, catalogue)
    # What was derived from the previous raw tables no longer describes them.
    stale = [p for d in (paths.truth, paths.features) for p in d.glob("*.parquet")]
    for p in stale:
        p.unlink()
    if stale:
        console.print(f"  removed {len(stale)} stale file(s) from truth/ and features/ (derived from the previous "
                      "raw tables); next: nextbest features build")
    return report


@features_app.command("build")
def features_build(workdir: Optional[Path] = WorkdirOpt):
    """Validate raw/ and build the feature tables in features/."""
    _run(do_features_build, _paths(workdir))


@features_app.command("apply")
def features_apply(
    workdir: Optional[Path] = WorkdirOpt,
    online_store: Optional[str] = typer.Option(
        None, "--online-store", help="Online store: sqlite or redis (env NEXTBEST_ONLINE_STORE; default: the work "
        "dir's current one, else sqlite). Recorded in feast/feature_store.yaml for every later stage."),
    redis_url: Optional[str] = typer.Option(
        None, "--redis-url", help="Redis for --online-store redis: redis://HOST:PORT/DB (env NEXTBEST_REDIS_URL; "
        "default redis://localhost:6379/0). A password goes in env NEXTBEST_REDIS_PASSWORD, never in the URL."),
):
    """Register entities, feature views and feature services in the Feast registry, and choose the online store."""
    names = _run(do_features_apply, _paths(workdir), online_store, redis_url)
    console.print("  applied: " + ", ".join(names))


@features_app.command("materialize")
def features_materialize(workdir: Optional[Path] = WorkdirOpt):
    """Load the latest snapshot into the Feast online store."""
    rows = _run(do_features_materialize, _paths(workdir))
    console.print(f"  {rows:,} rows materialised")


@app.command()
def train(
    task: str = typer.Argument(..., help="nbp or churn"),
    config: Optional[Path] = typer.Option(None, help="Config file (default configs/<task>.yaml)."),
    processes: int = typer.Option(1, min=1, help="Train with DistributedDataParallel on N processes (torchrun, gloo)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Train a model, evaluate it beside the baselines, log it to MLflow, register it as challenger
    and promote it to champion if it beats the current one (margin in the config)."""
    _check_task(task)
    paths = _paths(workdir)
    if processes == 1:
        _run(do_train, paths, task, config)
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
           "--master_port", str(free_port()), "-m", "nextbest.training.distributed", task, "--workdir", str(paths.root)]
    if config:
        cmd += ["--config", str(config)]
    with stage(f"train {task} on {processes} processes (torchrun, DDP/gloo)"):
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        console.print(f"[red]error:[/] distributed training failed:\n{proc.stderr[-3000:]}")
        raise typer.Exit(1)
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    console.print(f"version {result['version']} ({'champion' if result['promoted'] else 'challenger'})")
    console.print(_metrics_table(f"{task} (DDP x{processes})", result["metrics"]))


@app.command()
def evaluate(
    task: str = typer.Argument(..., help="nbp or churn"),
    version: Optional[str] = typer.Option(None, help="Registered version (default: the champion)."),
    config: Optional[Path] = typer.Option(None, help="Config file (default configs/<task>.yaml)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Evaluate a registered model beside popularity, LightGBM and the oracle on the test month."""
    _check_task(task)
    _run(do_evaluate, _paths(workdir), task, version, config)


@app.command()
def tune(
    task: str = typer.Argument(..., help="nbp or churn"),
    trials: int = typer.Option(20, min=1, help="Trials to run in this call (the study resumes across calls)."),
    config: Optional[Path] = typer.Option(None, help="Base config (default configs/<task>.yaml)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Optuna search (TPE, median pruning); writes the best config to <workdir>/configs/<task>.tuned.yaml."""
    _check_task(task)
    _run(do_tune, _paths(workdir), task, trials, config)


def do_tune(paths: Paths, task: str, trials: int, config: Optional[Path]):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from nextbest.config import load_train_config
    from nextbest.training.tune import tune as run_tune

    base = load_train_config(task, config)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        bar = progress.add_task(f"tune {task}", total=trials, info="")
        done = []

        def on_trial(number: int, value: float | None, state: str) -> None:
            done.append(number)
            progress.update(bar, completed=len(done),
                            info=f"trial {number}: {state.lower()} {'' if value is None else f'{value:.4f}'}")

        result = run_tune(paths, task, trials, base, on_trial=on_trial, on_stage=lambda s: progress.update(bar, info=s))
    console.print(f"[green]✓[/] tune {task}: {result.n_trials} trials in the study ({result.n_pruned} pruned), "
                  f"best validation metric {result.best_value:.4f}")
    console.print(f"  best parameters: {result.best_params}")
    console.print(f"  train with them: nextbest train {task} --config {result.config_path}")
    return result


@app.command()
def campaign(
    path: Path = typer.Option(..., help="bank-additional-full.csv (UCI bank marketing), or its parquet."),
    rolling: bool = typer.Option(False, help="Also run Moro et al.'s rolling-window test (10 retrainings)."),
    config: Optional[Path] = typer.Option(None, help="Config file (default configs/campaign.yaml)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Campaign-response model on real telemarketing data: PyTorch beside LightGBM, chronological split."""
    _run(do_campaign, _paths(workdir), path, rolling, config)


def do_campaign(paths: Paths, path: Path, rolling: bool, config: Optional[Path]) -> dict:
    from nextbest.config import load_train_config
    from nextbest.training import registry
    from nextbest.training.campaign import load_contacts, rolling_window, train_campaign

    cfg = load_train_config("campaign", config)
    contacts = load_contacts(path)
    with stage(f"campaign model on {len(contacts):,} real contacts (last 10% by date = test)"):
        result = train_campaign(contacts, cfg)
        metrics = dict(result.metrics)
        if rolling:
            metrics.update(rolling_window(contacts, cfg))
    mlflow = registry.tracking(paths)
    with mlflow.start_run(experiment_id=registry.experiment_id(paths, "campaign"), run_name="uci-bank-marketing"):
        mlflow.log_params({**cfg.model_dump(exclude={"hidden"}), "hidden": ",".join(map(str, cfg.hidden)),
                           "source": str(path), "split": "chronological 80/10/10 by contact order",
                           "dropped": "duration"})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    console.print(_metrics_table(f"term-deposit response, test = {result.rows['test']:,} most recent contacts", metrics))
    for k in ("rolling_test_roc_auc", "rolling_lightgbm_roc_auc"):
        if k in metrics:
            console.print(f"  {k}: {metrics[k]:.4f}")
    return metrics


registry_app = typer.Typer(help="Model registry: promote a version to champion, or roll back.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("promote")
def registry_promote(
    task: str = typer.Argument(..., help="nbp or churn"),
    version: str = typer.Option(..., help="Version to make champion."),
    reason: str = typer.Option("promoted by hand", help="Recorded with the promotion."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Make a registered version the champion (serving loads it at its next start)."""
    from nextbest.training.registry import promote

    _check_task(task)
    previous = _run(promote, _paths(workdir), task, version, reason)
    console.print(f"{task}: champion is now v{version} (was {f'v{previous}' if previous else 'none'})")


@registry_app.command("rollback")
def registry_rollback(task: str = typer.Argument(..., help="nbp or churn"), workdir: Optional[Path] = WorkdirOpt):
    """Restore the champion before the last promotion."""
    from nextbest.training.registry import rollback

    _check_task(task)
    restored = _run(rollback, _paths(workdir), task)
    console.print(f"{task}: champion rolled back to v{restored}")


def _check_task(task: str) -> None:
    if task not in ("nbp", "churn"):
        console.print(f"[red]error:[/] TASK must be 'nbp' or 'churn', got {task!r}")
        raise typer.Exit(2)


@app.command()
def monitor(
    config: Optional[Path] = typer.Option(None, help="Monitoring config (default configs/monitoring.yaml)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Drift reports (Evidently HTML and JSON) and summary.json under reports/<date>/; exits 1 when the
    gate of configs/monitoring.yaml fails, 2 on a user error."""
    result = _run(do_monitor, _paths(workdir), config)
    if result["exit_code"]:
        raise typer.Exit(result["exit_code"])


@app.command()
def ope(
    explore_share: float = typer.Option(0.0, min=0.0, max=1.0, help="Exploration share of the candidate policy."),
    model: Optional[str] = typer.Option(None, help="Score with this nbp model instead of the logged champion "
                                        "scores: an alias (challenger) or a version number."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Off-policy evaluation (IPS, SNIPS, doubly robust, DR with shrunk weights, direct method) of the current bandit posterior on the decision log."""
    _run(do_ope, _paths(workdir), explore_share, model)


app.command("simulate")(simulate_command)


@app.command()
def build(
    nbp_version: Optional[str] = typer.Option(None, "--nbp-version", help="Pin this nbp version (default: the champion)."),
    churn_version: Optional[str] = typer.Option(None, "--churn-version", help="Pin this churn version (default: the "
                                                "champion)."),
    version: Optional[str] = typer.Option(None, help="The Bento's version label (default: generated)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Build a BentoML Bento: the code, this project's configs and the champion models pinned by version.
    Serve it with `bentoml serve TAG` (NEXTBEST_HOME = the work directory), or make an OCI image with
    `bentoml containerize TAG`."""
    from nextbest.serving.bento import BuildError
    from nextbest.serving.bento import build as build_bento

    versions = {k: v for k, v in (("nbp", nbp_version), ("churn", churn_version)) if v}
    try:
        with stage("build the Bento"):
            built = build_bento(_paths(workdir), versions, version)
    except BuildError as exc:
        _error(exc)
        raise typer.Exit(2) from None
    console.print("  models: " + ", ".join(f"{name} v{v}" for name, v in built.models.items()))
    console.print(f"  path: {built.path}")
    console.print(f"  serve: NEXTBEST_HOME={Path(os.environ[WORKDIR_ENV])} bentoml serve {built.tag}")
    print(built.tag)  # the tag alone on stdout, for scripts


@app.command()
def serve(
    port: int = typer.Option(DEFAULT_PORT, help="HTTP port."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 for all)."),
    workers: int = typer.Option(1, min=1, max=64, help="Worker processes (each loads the models; all share "
                                "events.db and learn the same feedback)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Serve the champion models over HTTP with BentoML (POST /recommend, /feedback, /events)."""
    paths = _paths(workdir)
    cmd = serve_command(paths, port, host)
    env = serve_env(paths)
    if workers > 1:
        env["BENTOML_CONFIG_OVERRIDES"] = json.dumps({"services": {"nextbest": {"workers": workers}}})
    console.print(f"serving {paths.root} on http://{host}:{port} with {workers} worker(s) (Ctrl-C to stop)")
    os.execvpe(cmd[0], cmd, env)


@app.command()
def quickstart(
    customers: int = typer.Option(2000, help="Number of synthetic customers."),
    months: int = typer.Option(12, help="Number of monthly snapshots."),
    seed: int = typer.Option(DEFAULT_SEED, help="Random seed."),
    end: Optional[str] = typer.Option(None, help="Last snapshot (month end, YYYY-MM-DD); default: last month end. "
                                      "Same seed and end, same bank."),
    port: Optional[int] = typer.Option(None, help="Port for the demo service (default: a free port)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Synthetic bank -> features -> Feast -> models -> MLflow -> drift report -> served recommendation."""
    started = time.perf_counter()
    paths = _paths(workdir)
    console.print(f"[bold]nextbest quickstart[/] in {paths.root}")
    _run(do_generate, paths, customers, months, seed, end)
    _run(do_features_build, paths)
    _run(do_features_apply, paths)
    _run(do_features_materialize, paths)
    _run(do_train, paths, "nbp", None)
    _run(do_train, paths, "churn", None)
    report = _run(do_monitor, paths)
    answer = _run(_demo_request, paths, port or free_port())
    console.print_json(json.dumps(answer))
    console.print(f"\n[bold]done in {time.perf_counter() - started:.0f}s.[/] Next:", highlight=False)
    console.print(f"  serve:     {_command('nextbest')} serve --workdir {paths.root} --port {DEFAULT_PORT}",
                  highlight=False, soft_wrap=True)
    from nextbest.training.registry import is_remote

    ui = (paths.mlflow_uri if is_remote(paths.mlflow_uri)
          else f"{_command('mlflow')} ui --backend-store-uri {paths.mlflow_uri} --port 5000")
    console.print(f"  MLflow UI: {ui}", highlight=False, soft_wrap=True)
    console.print(f"  report:    {report['files']['html']}", highlight=False, soft_wrap=True)


def _command(name: str) -> str:
    """How the user reaches `name` of this installation: bare when it is on PATH, else its full path
    (for example .venv/bin/nextbest when the virtual environment is not activated)."""
    import shutil

    ours = Path(sys.executable).with_name(name)
    found = shutil.which(name)
    if not ours.exists() or (found and Path(found).resolve() == ours.resolve()):
        return name
    return str(ours)


def _demo_request(paths: Paths, port: int) -> dict:
    import httpx
    import pandas as pd

    from nextbest.features.build import HOLDINGS_VIEW

    holdings = pd.read_parquet(paths.features / f"{HOLDINGS_VIEW}.parquet", columns=["customer_id", "event_timestamp", "n_products"])
    latest = holdings[(holdings.event_timestamp == holdings.event_timestamp.max()) & (holdings.n_products > 0)]
    customer_id = str(latest.customer_id.iloc[0])
    with stage(f"start the BentoML service on port {port}"):
        proc = subprocess.Popen(serve_command(paths, port), env=serve_env(paths), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            wait_ready(port, proc)
        except StageError:
            stop_server(proc)
            raise StageError(f"service failed to start: {proc.stderr.read().decode()[-2000:]}") from None
    try:
        with stage(f"POST /recommend for {customer_id}"):
            resp = httpx.post(f"http://127.0.0.1:{port}/recommend",
                              json={"customer_id": customer_id, "channel": "mobile_app", "k": 3}, timeout=30)
            if resp.status_code != 200:
                raise StageError(f"/recommend answered {resp.status_code}: {resp.text}")
    finally:
        with stage("stop the service"):
            stop_server(proc)
    return resp.json()


def main() -> None:  # pragma: no cover - console entry point
    _quiet_third_party()
    app()


def _quiet_third_party() -> None:
    """Keeps the terminal to our own progress lines: libraries' warnings and INFO chatter are not for
    users. Set NEXTBEST_VERBOSE=1 to see them."""
    import logging
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    if os.environ.get("NEXTBEST_VERBOSE"):
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    warnings.simplefilter("ignore")
    # Some libraries reset the warning filters on import; routing warnings to a silenced logger holds.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)
    for name in ("mlflow", "feast", "alembic", "evidently", "lightgbm"):
        logging.getLogger(name).setLevel(logging.WARNING)


if __name__ == "__main__":  # pragma: no cover
    main()
