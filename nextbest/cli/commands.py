"""The `nextbest` command: one thin Typer command per pipeline stage.

Heavy libraries (Feast, MLflow, Evidently, torch) are imported inside the commands that need
them, so `nextbest --help` and light commands stay fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from nextbest.cli.common import (WorkdirOpt, check_task, console, print_error, run_stage, stage,
                                 workdir_paths)
from nextbest.cli.registry import registry_app
from nextbest.cli.render import command_path, metrics_table
from nextbest.cli.server import demo_request, free_port, preflight, serve_command, serve_env
from nextbest.cli.console import console_command
from nextbest.cli.plan import plan as plan_command
from nextbest.cli.simulate import simulate as simulate_command
from nextbest.cli.uplift import uplift as uplift_command
from nextbest.cli.warm_start import warm_start as warm_start_command
from nextbest.cli.stages import (do_campaign, do_evaluate, do_features_apply, do_features_build, do_features_import,
                                 do_features_materialize, do_generate, do_ingest, do_monitor, do_ope, do_ope_file,
                                 do_train, do_tune)
from nextbest.constants import DEFAULT_PORT, DEFAULT_SEED, WAIT_FOR_MODELS_ENV, WORKDIR_ENV
from nextbest.settings import Paths

app = typer.Typer(help="nextbest: next-best-offer platform for retail banks.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
features_app = typer.Typer(help="Feature tables and the Feast feature store.", no_args_is_help=True)
app.add_typer(features_app, name="features")
app.add_typer(registry_app, name="registry")


@app.command()
def init(
    directory: Path = typer.Argument(..., help="The project folder to create."),
    name: Optional[str] = typer.Option(None, help="The project's name (default: the folder's name)."),
    force: bool = typer.Option(False, "--force", help="Write into a folder that is not empty, replacing "
                               "nextbest.yaml and the configs there (the work directory is kept)."),
):
    """Create a project folder: nextbest.yaml, configs/ (copies of the defaults, yours to edit), work/."""
    from nextbest.project import init_project

    written = run_stage(init_project, directory, name, force)
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
        print_error(exc)
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
        print_error(exc, "configs: invalid:")
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
    signal: str = typer.Option("observable", help="How much of intent the data shows: observable (needs drive "
                               "intent and show in the data) or reference (a taste nobody observes dominates); "
                               "docs/simulator.md."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Generate a synthetic bank into raw/ (and its truth into truth/)."""
    paths = workdir_paths(workdir)
    rows = run_stage(do_generate, paths, customers, months, seed, end, drift, drift_from, signal)
    for name, n in sorted(rows.items()):
        console.print(f"  {name}.parquet: {n:,} rows")
    import pandas as pd

    from nextbest.simulation.marginals import marginals, markdown_table

    holdings = pd.read_parquet(paths.raw / "holdings.parquet", columns=["customer_id", "snapshot_date", "product_id"])
    console.print("\nCalibration beside the Santander product-recommendation data:\n")
    console.print(markdown_table(marginals(holdings)), markup=False)


@app.command()
def ingest(
    source: str = typer.Argument(..., help="canonical, santander or uci-bank-marketing"),
    path: Optional[Path] = typer.Option(None, "--path", help="santander / uci-bank-marketing: the source file "
                                        "(train_ver2.csv[.zip] or bank-additional-full.csv)."),
    from_: Optional[str] = typer.Option(None, "--from", help="canonical: a folder of <table>.parquet|.csv files, "
                                        "or a database URL (postgresql://user@host:5432/bank; the password in "
                                        "PGPASSWORD or ~/.pgpass rather than the URL)."),
    table: Optional[list[str]] = typer.Option(None, "--table", help="canonical: TABLE=NAME, the source's name "
                                              "for a canonical table (a file stem, or [schema.]table); repeatable."),
    encoding: str = typer.Option("utf-8", help="canonical: the CSV files' text encoding."),
    chunksize: int = typer.Option(500_000, min=1000, help="Rows read at a time (bounds memory)."),
    mapping: Optional[Path] = typer.Option(None, help="Santander: flag -> product mapping (default "
                                                      "configs/adapters/santander_products.yaml)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Load a bank's canonical tables, or map a real data set onto them, in raw/ (streamed, validated, atomic)."""
    if source not in ("canonical", "santander", "uci-bank-marketing"):
        console.print(f"[red]error:[/] SOURCE must be 'canonical', 'santander' or 'uci-bank-marketing', got {source!r}")
        raise typer.Exit(2)
    if source == "canonical" and not from_:
        console.print("[red]error:[/] ingest canonical needs --from FOLDER or --from DATABASE_URL")
        raise typer.Exit(2)
    if source != "canonical" and path is None:
        console.print(f"[red]error:[/] ingest {source} needs --path FILE")
        raise typer.Exit(2)
    report = run_stage(do_ingest, workdir_paths(workdir), source, path, chunksize, mapping,
                       from_=from_, tables=table, encoding=encoding)
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
    for note in report.notes:
        console.print(f"  note: {note}")
    for f in report.files:
        console.print(f"  wrote {f}")
    if source == "canonical":
        from nextbest.config import load_train_config
        from nextbest.features.adapters.canonical import what_the_data_supports

        churn = load_train_config("churn")
        console.print("  what the data supports:")
        for line in what_the_data_supports(report.snapshots, churn.horizon_months, churn.val_months,
                                           churn.test_months):
            console.print(f"    {line}")


@features_app.command("build")
def features_build(
    workdir: Optional[Path] = WorkdirOpt,
    memory_limit: Optional[str] = typer.Option(
        None, "--memory-limit", help="Memory the build may use, all workers together, e.g. 6GB (default: a quarter "
        "of the machine's, at most 4 GiB). A bank too large for it is built in more parts by customer."),
    parts: Optional[int] = typer.Option(None, "--parts", min=1, help="Build in exactly N parts by customer "
                                        "(default: as many as --memory-limit needs)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Parts built at once (default: 2, or 1 on "
                                          "a one-core machine; with --engine spark, the cores of local mode)."),
    engine: str = typer.Option("local", "--engine", help="local (processes on this machine) or spark."),
    spark_master: Optional[str] = typer.Option(None, "--spark-master", help="With --engine spark: the cluster, "
                                               "e.g. spark://host:7077 (default local[N], N = --workers)."),
):
    """Validate raw/ and build the feature tables in features/, in parts by customer within a memory limit;
    then import the bank's own tables of configs/features.yaml."""
    run_stage(do_features_build, workdir_paths(workdir), memory_limit, parts, workers, engine, spark_master)


@features_app.command("import")
def features_import(workdir: Optional[Path] = WorkdirOpt):
    """Import the bank's own feature tables (configs/features.yaml) into features/, beside the built ones."""
    run_stage(do_features_import, workdir_paths(workdir))


@features_app.command("apply")
def features_apply(
    workdir: Optional[Path] = WorkdirOpt,
    online_store: Optional[str] = typer.Option(
        None, "--online-store", help="Online store: sqlite or redis (env NEXTBEST_ONLINE_STORE; default: the work "
        "dir's current one, else sqlite). Recorded in feast/feature_store.yaml for every later stage."),
    redis_url: Optional[str] = typer.Option(
        None, "--redis-url", help="Redis for --online-store redis: redis://HOST:PORT/DB (env NEXTBEST_REDIS_URL; "
        "default redis://localhost:6379/0). A password goes in env NEXTBEST_REDIS_PASSWORD, never in the URL."),
    offline_store: Optional[str] = typer.Option(
        None, "--offline-store", help="Offline store for training sets: duckdb or spark (Feast's Spark store over "
        "the same files; default: the work dir's current one, else duckdb)."),
    spark_master: Optional[str] = typer.Option(
        None, "--spark-master", help="Spark master for --offline-store spark (default local[2])."),
):
    """Register entities, feature views and feature services in the Feast registry, and choose the stores."""
    names = run_stage(do_features_apply, workdir_paths(workdir), online_store, redis_url, offline_store, spark_master)
    console.print("  applied: " + ", ".join(names))


@features_app.command("materialize")
def features_materialize(workdir: Optional[Path] = WorkdirOpt):
    """Load the latest snapshot into the Feast online store."""
    rows = run_stage(do_features_materialize, workdir_paths(workdir))
    console.print(f"  {rows:,} rows materialised")


@app.command()
def train(
    task: str = typer.Argument(..., help="nbp, churn or uplift"),
    config: Optional[Path] = typer.Option(None, help="Config file (default configs/<task>.yaml)."),
    processes: int = typer.Option(1, min=1, help="Train with DistributedDataParallel on N processes (torchrun, gloo)."),
    campaign: str = typer.Option("all", help="uplift: the control group learnt from: all (the global one) or a "
                                 "campaign of holdout.campaigns in bandit.yaml."),
    window_days: float = typer.Option(30.0, min=1.0, help="uplift: days after exposure an acquisition counts."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Train a model, evaluate it beside the baselines, log it to MLflow, register it as challenger
    and promote it to champion if it beats the current one (margin in the config). `uplift` learns
    from the decision log's control groups which customers the offers change (T- and X-learner,
    Qini and AUUC cross-fitted), registered as `uplift` (or `uplift_<campaign>`)."""
    paths = workdir_paths(workdir)
    if task == "uplift":
        from nextbest.monitoring.uplift_model import train_uplift

        with stage(f"train the uplift model of {campaign!r} from the decision log"):
            result = run_stage(train_uplift, paths, campaign, window_days)
        m = result["metrics"]
        console.print(f"{result['units']['treatment']:,} treated and {result['units']['control']:,} control "
                      f"customers, observed uplift {100 * result['observed_uplift']:+.2f} pp; Qini: X-learner "
                      f"{m['x_learner']['qini_coefficient']:.5f}, T-learner {m['t_learner']['qini_coefficient']:.5f}")
        console.print(f"{result['name']} version {result['version']} "
                      f"({'champion' if result['promoted'] else 'challenger'}): {result['reason']}")
        return
    check_task(task)
    if processes == 1:
        run_stage(do_train, paths, task, config)
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
    console.print(metrics_table(f"{task} (DDP x{processes})", result["metrics"]))


@app.command()
def evaluate(
    task: str = typer.Argument(..., help="nbp or churn"),
    version: Optional[str] = typer.Option(None, help="Registered version (default: the champion)."),
    config: Optional[Path] = typer.Option(None, help="Config file (default configs/<task>.yaml)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Evaluate a registered model beside popularity, LightGBM and the oracle on the test month."""
    check_task(task)
    run_stage(do_evaluate, workdir_paths(workdir), task, version, config)


@app.command()
def tune(
    task: str = typer.Argument(..., help="nbp or churn"),
    trials: int = typer.Option(20, min=1, help="Trials to run in this call (the study resumes across calls)."),
    config: Optional[Path] = typer.Option(None, help="Base config (default configs/<task>.yaml)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Optuna search (TPE, median pruning); writes the best config to <workdir>/configs/<task>.tuned.yaml."""
    check_task(task)
    run_stage(do_tune, workdir_paths(workdir), task, trials, config)


@app.command()
def campaign(
    path: Optional[Path] = typer.Option(None, help="bank-additional-full.csv (UCI bank marketing), or its parquet; "
                                        "without it, the bank's own responses (response: in configs/campaign.yaml)."),
    rolling: bool = typer.Option(False, help="With --path: also run Moro et al.'s rolling-window test."),
    config: Optional[Path] = typer.Option(None, help="Config file (default configs/campaign.yaml)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Campaign-response model, PyTorch beside LightGBM split by time: on the bank's own offers or contact table
    with its Feast features, or on the UCI telemarketing file (--path)."""
    run_stage(do_campaign, workdir_paths(workdir), path, rolling, config)


@app.command()
def monitor(
    config: Optional[Path] = typer.Option(None, help="Monitoring config (default configs/monitoring.yaml)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Drift reports (Evidently HTML and JSON) and summary.json under reports/<date>/; exits 1 when the
    gate of configs/monitoring.yaml fails, 2 on a user error."""
    result = run_stage(do_monitor, workdir_paths(workdir), config)
    if result["exit_code"]:
        raise typer.Exit(result["exit_code"])


@app.command()
def ope(
    explore_share: float = typer.Option(0.0, min=0.0, max=1.0, help="Exploration share of the candidate policy."),
    model: Optional[str] = typer.Option(None, help="Score with this nbp model instead of the logged champion "
                                        "scores: an alias (challenger) or a version number."),
    source: Optional[Path] = typer.Option(None, "--from", help="A logged-bandit file (CSV or parquet) instead of "
                                          "the decision log: one row per action shown."),
    action: str = typer.Option("action", help="With --from: the column of the action shown."),
    propensity: str = typer.Option("propensity", help="With --from: the column of the logging policy's "
                                   "probability of that action, in (0, 1]."),
    reward: str = typer.Option("reward", help="With --from: the column of the reward."),
    decision: Optional[str] = typer.Option(None, help="With --from: the column of the decision id (several rows, "
                                           "one per position; default: each row is a decision)."),
    position: Optional[str] = typer.Option(None, help="With --from: the column of the action's position."),
    context: Optional[str] = typer.Option(None, help="With --from: comma-separated context columns for the DR "
                                          "reward model (default: every other column)."),
    policy: Optional[Path] = typer.Option(None, help="With --from: a policy to value, as a file of `action`, "
                                          "`probability` (and the decision and position columns, for "
                                          "probabilities per decision or slot)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Off-policy evaluation (IPS, SNIPS, doubly robust, DR with shrunk weights, direct method): of the
    current bandit posterior on the decision log; or, with --from, of the uniform policy, the logged
    one and a policy file on any logged-bandit file."""
    paths = workdir_paths(workdir)
    if source is None:
        run_stage(do_ope, paths, explore_share, model)
        return
    cols = [c.strip() for c in context.split(",") if c.strip()] if context else None
    run_stage(do_ope_file, paths, source, action, propensity, reward, decision, position, cols, policy)


app.command("simulate")(simulate_command)
app.command("plan")(plan_command)
app.command("uplift")(uplift_command)
app.command("console")(console_command)
app.command("warm-start")(warm_start_command)


@app.command()
def build(
    nbp_version: Optional[str] = typer.Option(None, "--nbp-version", help="Pin this nbp version (default: the "
                                              "champion)."),
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
            built = build_bento(workdir_paths(workdir), versions, version)
    except BuildError as exc:
        print_error(exc)
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
    wait_for_models: bool = typer.Option(False, "--wait-for-models", help="Start without champion models and "
                                         "load them once registered (/readyz answers 503 until then)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Serve the champion models over HTTP with BentoML (POST /recommend, /feedback, /events).

    Before BentoML starts, the configs are validated, the port must be free, the work directory
    writable, and both champion models registered (or --wait-for-models given): otherwise one line
    says what is wrong and the command exits 2."""
    paths = workdir_paths(workdir)
    run_stage(preflight, paths, host, port, wait_for_models)
    cmd = serve_command(paths, port, host)
    env = serve_env(paths)
    if wait_for_models:
        env[WAIT_FOR_MODELS_ENV] = "1"
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
    paths = workdir_paths(workdir)
    console.print(f"[bold]nextbest quickstart[/] in {paths.root}")
    run_stage(do_generate, paths, customers, months, seed, end)
    run_stage(do_features_build, paths)
    run_stage(do_features_apply, paths)
    run_stage(do_features_materialize, paths)
    run_stage(do_train, paths, "nbp", None)
    run_stage(do_train, paths, "churn", None)
    report = run_stage(do_monitor, paths)
    answer = run_stage(demo_request, paths, port or free_port())
    console.print_json(json.dumps(answer))
    console.print(f"\n[bold]done in {time.perf_counter() - started:.0f}s.[/] Next:", highlight=False)
    console.print(f"  serve:     {command_path('nextbest')} serve --workdir {paths.root} --port {DEFAULT_PORT}",
                  highlight=False, soft_wrap=True)
    from nextbest.training.registry import is_remote

    ui = (paths.mlflow_uri if is_remote(paths.mlflow_uri)
          else f"{command_path('mlflow')} ui --backend-store-uri {paths.mlflow_uri} --port 5000")
    console.print(f"  MLflow UI: {ui}", highlight=False, soft_wrap=True)
    console.print(f"  report:    {report['files']['html']}", highlight=False, soft_wrap=True)
