"""The stage runners behind the commands: each takes the work directory's paths and its options,
runs one stage with its progress line, and returns what the command prints."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from rich.table import Table

from nextbest.cli.common import StageError, console, stage
from nextbest.cli.render import metrics_table
from nextbest.settings import Paths


def do_generate(paths: Paths, customers: int, months: int, seed: int, end: Optional[str],
                drift: Optional[str] = None, drift_from: Optional[str] = None,
                signal: str = "observable") -> dict[str, int]:
    import dataclasses

    import pandas as pd

    from nextbest.config import load_catalogue
    from nextbest.simulation.bank import SIGNALS, BankSpec, last_month_end
    from nextbest.simulation.drift import DRIFT_KINDS, DriftSpec
    from nextbest.simulation.write import generate_to

    if customers < 10:
        raise StageError(f"--customers must be at least 10, got {customers}")
    if months < 4:
        raise StageError(f"--months must be at least 4 (train, validation and test months need history), got {months}")
    if signal not in SIGNALS:
        raise StageError(f"--signal must be one of {', '.join(SIGNALS)}, got {signal!r}")
    spec = BankSpec(n_customers=customers, n_months=months, seed=seed,
                    end=pd.Timestamp(end) if end else last_month_end(), **SIGNALS[signal])
    what = "" if signal == "observable" else f", {signal} signal"
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
        spec = dataclasses.replace(spec, drift=DriftSpec(drift, start))
        what += f", {drift} drift from {month_ends[start]:%Y-%m}"
    elif drift_from is not None:
        raise StageError("--drift-from needs --drift")
    with stage(f"generate a synthetic bank ({customers:,} customers x {months} months, seed {seed}{what})"):
        rows = generate_to(paths, load_catalogue(), spec)
    return rows


def do_features_build(paths: Paths, memory_limit: Optional[str] = None, parts: Optional[int] = None,
                      workers: Optional[int] = None, engine: str = "local", spark_master: Optional[str] = None) -> None:
    from nextbest.config import load_catalogue
    from nextbest.features.partitioned import BuildOptions, parse_bytes
    from nextbest.features.pipeline import build_features_to

    try:
        limit = parse_bytes(memory_limit) if memory_limit else None
    except ValueError as exc:
        raise StageError(f"--memory-limit: {exc}") from None
    options = BuildOptions(memory_limit=limit, parts=parts, workers=workers)
    runner = None
    if engine == "spark":
        from nextbest.features.spark import SparkEngine

        runner = SparkEngine(spark_master, workers)
    elif engine != "local":
        raise StageError(f"--engine {engine!r}: expected local or spark")
    elif spark_master:
        raise StageError("--spark-master needs --engine spark")
    with stage("build feature tables"):
        build_features_to(paths, load_catalogue(), options=options, engine=runner,
                          progress=lambda message: console.print(f"  [dim]{message}[/]", soft_wrap=True))
    do_features_import(paths)


def do_features_import(paths: Paths) -> list:
    """Imports the bank's own feature tables of `configs/features.yaml` into features/ (all or none)."""
    from nextbest.config import load_features_config
    from nextbest.features.bank_tables import import_bank_tables
    from nextbest.settings import config_file

    path = config_file("features.yaml")
    cfg = load_features_config(path)
    if not cfg.tables:
        console.print(f"  no feature table of the bank's own in {path}")
        return []
    with stage(f"import the bank's feature tables ({', '.join(t.name for t in cfg.tables)})"):
        from nextbest.feature_repo.versions import read_columns, read_record

        reports = import_bank_tables(cfg, paths.raw, paths.features, path, earlier=read_columns(read_record(paths)))
    for report in reports:
        for line in report.lines():
            console.print(f"  {line}", soft_wrap=True)
    return reports


def do_features_apply(paths: Paths, online_store: Optional[str] = None, redis_url: Optional[str] = None,
                      offline_store: Optional[str] = None, spark_master: Optional[str] = None) -> list[str]:
    from nextbest.feature_repo.offline import current_offline_store, resolve_offline_store
    from nextbest.feature_repo.store import apply, current_online_store, resolve_online_store

    # Flags, else the environment, else the work dir's current store: re-applying never switches silently.
    choice = resolve_online_store(online_store, redis_url, os.environ, lambda: current_online_store(paths))
    offline = resolve_offline_store(offline_store, spark_master, current_offline_store(paths))
    if offline.kind == "spark":
        from nextbest.features.spark import check_master, require_pyspark

        require_pyspark("--offline-store spark")
        check_master(offline.spark_master)
    with stage(f"feast apply (registry in feast/registry.db, {choice.describe()}, {offline.describe()})"):
        names = apply(paths, choice, offline)
    from nextbest.feature_repo.versions import read_record

    for name, why in read_record(paths).unavailable:
        console.print(f"  [yellow]WARNING: feature service {name} is no longer applied ({why}): a model trained on "
                      "it cannot serve or be evaluated until it is retrained[/]", highlight=False, soft_wrap=True)
    return names


def do_features_materialize(paths: Paths) -> int:
    from nextbest.feature_repo.store import OnlineStoreUnavailable, current_online_store, materialize

    current = current_online_store(paths)
    with stage(f"feast materialize ({current.describe() if current else 'online store'})"):
        try:
            return materialize(paths)
        except OnlineStoreUnavailable as exc:
            raise StageError(f"{exc}; start it, or choose another with `nextbest features apply --online-store "
                             "sqlite|redis [--redis-url URL]`") from None


def do_ingest(paths: Paths, source: str, path: Optional[Path], chunksize: int, mapping: Optional[Path] = None,
              from_: Optional[str] = None, tables: Optional[list[str]] = None, encoding: str = "utf-8"):
    from nextbest.config import load_catalogue

    catalogue = load_catalogue()
    with stage(f"ingest {source} from {_shown(from_) if source == 'canonical' else path}"):
        if source == "canonical":
            from nextbest.features.adapters.canonical import ingest_canonical, parse_table_names

            report = ingest_canonical(from_, paths.raw, catalogue, parse_table_names(tables), encoding=encoding,
                                      chunksize=chunksize)
        elif source == "santander":
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


def _shown(source: Optional[str]) -> str:
    """A source for the screen: a database URL without its password."""
    if source and "://" in source:
        import sqlalchemy as sa

        try:
            return sa.engine.make_url(source).render_as_string(hide_password=True)
        except sa.exc.ArgumentError:
            return source
    return str(source)


def do_train(paths: Paths, task: str, config: Optional[Path]):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from nextbest.config import load_catalogue, load_train_config
    from nextbest.training.pipeline import train_model

    cfg = load_train_config(task, config, catalogue=load_catalogue())
    started = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        # At most max_epochs per network; early stopping ends a network sooner.
        bar = progress.add_task(f"train {task}", total=cfg.max_epochs * cfg.ensemble, info="")

        def on_epoch(epoch: int, m: dict[str, float]) -> None:
            net = f"network {int(m['member']) + 1}/{cfg.ensemble} " if "member" in m else ""
            progress.update(bar, completed=epoch + 1,
                            info=f"{net}epoch {epoch + 1} loss {m['train_loss']:.4f} val {m['val_metric']:.4f}")

        def on_stage(message: str) -> None:
            if message.startswith("WARNING:"):  # stays on screen, above the progress bar
                progress.console.print(f"[yellow]{message}[/]", highlight=False)
            else:
                progress.update(bar, info=message)

        result = train_model(paths, task, cfg, on_epoch=on_epoch, on_stage=on_stage)
    alias = "champion" if result.promoted else "challenger"
    console.print(f"[green]✓[/] train {task}: {result.family} version {result.version} registered as {alias} "
                  f"[dim]({time.perf_counter() - started:.1f}s; {result.promotion_reason})[/]")
    seconds = dict(result.stage_seconds)
    baseline = seconds.pop("LightGBM baseline", None)
    shown = [f"{k} {v:.1f}" + (f" (LightGBM baseline {baseline:.1f})" if k == "evaluation" and baseline is not None
                               else "") for k, v in seconds.items()]
    console.print("  [dim]seconds: " + ", ".join(shown) + "[/]", highlight=False)
    console.print(metrics_table(f"{task}: test month {', '.join(result.months['test'])}", result.metrics))
    return result


def do_evaluate(paths: Paths, task: str, version: Optional[str], config: Optional[Path]):
    from nextbest.config import load_train_config
    from nextbest.training.pipeline import evaluate_registered

    cfg = load_train_config(task, config)
    with stage(f"evaluate {task}"):
        version, evaluation = evaluate_registered(paths, task, cfg, version)
    console.print(metrics_table(f"{task} v{version}", evaluation.metrics))
    return evaluation


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


def do_campaign(paths: Paths, path: Optional[Path], rolling: bool, config: Optional[Path]) -> dict:
    from nextbest.config import load_train_config
    from nextbest.training import registry
    from nextbest.training.campaign import load_contacts, rolling_window, train_campaign

    cfg = load_train_config("campaign", config)
    if path is None:
        if rolling:
            raise StageError("--rolling goes with --path (the UCI file)")
        return _campaign_on_own_data(paths, cfg)
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
    title = f"term-deposit response, test = {result.rows['test']:,} most recent contacts"
    console.print(metrics_table(title, metrics))
    for k in ("rolling_test_roc_auc", "rolling_lightgbm_roc_auc"):
        if k in metrics:
            console.print(f"  {k}: {metrics[k]:.4f}")
    return metrics


def _campaign_on_own_data(paths: Paths, cfg) -> dict:
    from nextbest.training import registry
    from nextbest.training.response import train_response

    def on_stage(message: str) -> None:
        console.print(f"  [yellow]{message}[/]" if message.startswith("WARNING:") else f"  [dim]{message}[/]",
                      highlight=False, soft_wrap=True)

    what = "offers (raw/offers.parquet)" if cfg.response.definition == "offers" else "contact table"
    with stage(f"campaign-response model on the bank's {what}"):
        result = train_response(paths, cfg, on_stage)
    mlflow = registry.tracking(paths)
    with mlflow.start_run(experiment_id=registry.experiment_id(paths, "campaign"), run_name="bank-responses"):
        mlflow.log_params({**cfg.model_dump(exclude={"hidden", "label", "response"}),
                           "hidden": ",".join(map(str, cfg.hidden)), "source": result.source, "split": result.split,
                           "response": cfg.response.definition})
        mlflow.set_tags({"split": result.split, "test_month": ",".join(result.months["test"])})
        mlflow.log_metrics({k: float(v) for k, v in result.metrics.items() if v == v})
    console.print(metrics_table(f"offer response, test = {result.rows['test']:,} contacts of "
                                f"{', '.join(result.months['test'])} ({result.split} split)", result.metrics))
    return result.metrics


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


def do_ope_file(paths: Paths, source: Path, action: str, propensity: str, reward: str, decision: Optional[str],
                position: Optional[str], context: Optional[list[str]], policy: Optional[Path]) -> dict:
    from nextbest.io import write_json
    from nextbest.monitoring.ope_file import evaluate_file

    with stage(f"off-policy evaluation of {source.name}"):
        result = evaluate_file(source, action, propensity, reward, decision, position, context, policy)
        out = write_json(paths.reports / "ope" / source.name.split(".")[0] / "ope.json", result)
    table = Table(title=f"value per decision, {result['decisions']:,} logged decisions, {len(result['actions'])} "
                        "actions")
    for col in ("policy", "estimator", "value", "95% CI", "effective sample size"):
        table.add_column(col)
    v = result["logged_value"]
    table.add_row("logged (observed)", "mean", f"{v['value']:.4f}", f"[{v['ci95'][0]:.4f}, {v['ci95'][1]:.4f}]", "")
    for name, est in result["policies"].items():
        diag = est["diagnostics"]
        for key, label in (("ips", "IPS"), ("snips", "SNIPS"), ("dr", "DR")):
            if key not in est:  # the logged policy has no DR: its other actions' probabilities are unknown
                continue
            e = est[key]
            table.add_row(name if key == "ips" else "", label, f"{e['value']:.4f}",
                          f"[{e['ci95'][0]:.4f}, {e['ci95'][1]:.4f}]",
                          f"{diag['ess_share']:.1%}" if key == "ips" else "")
    console.print(table)
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

    from nextbest.config import load_monitoring
    from nextbest.monitoring.monitor import run_monitor

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
