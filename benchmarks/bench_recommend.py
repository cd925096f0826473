"""`POST /recommend` end to end over HTTP beside stock `feast serve` returning bare features, in one run.

    python benchmarks/bench_recommend.py [--workdir DIR] [--customers 20000] [--duration 20] [--rates 100,300]
                                         [--concurrency 8] [--workers 1] [--feast-request features]

What is compared, on one machine, in one run:
- ours: `bentoml serve serving.service:NextBest` (what `nextbest serve` runs) answering
  `POST /recommend {"customer_id", "channel": "mobile_app", "k": 3}`: online features, both models,
  rules, bandit, and the decision committed to the event log before the answer.
- Feast: stock `feast -c <workdir>/feast serve` answering `POST /get-online-features` for the same
  customer: the next-best-product feature service's features (245 today) over the same registry and
  online-store file, bare features and nothing else. By default the request names the features
  (`{"features": ["customer_profile:age", ...], "entities": {"customer_id": [id]}}`), Feast's faster
  path: with `--feast-request feature_service` it names the service instead, which Feast 0.67
  rebuilds from its proto on every request (~18 ms of CPU here; our service keeps it).
- floor: a trivial HTTP server (fixed 20-byte JSON answer) in its own process: the load generator's
  own latency and ceiling on this machine.

Both servers run `--workers` worker processes (default 1): BentoML's through
`BENTOML_CONFIG_OVERRIDES`, Feast's with `--workers`. Feast gets its fastest stock flags
(`--no-access-log`, `--max-requests 0`: no worker recycling every 1,000 requests); ours runs as
`nextbest serve` runs it, its access and decision log lines going to a file like Feast's output
(`<workdir>/bench_logs/`).

1. The work directory is reused if it holds a quickstart (features, Feast store, MLflow models),
   otherwise `nextbest quickstart --customers N --months M` builds it (default
   `.nextbest/bench-recommend-N`). Customer ids are the latest snapshot of
   `features/customer_profile.parquet`; every phase draws random customers from them, the same
   draws for every target. After start, each server gets `--warmup-server` seconds of traffic.
2. Open loop, per rate (default 100 and 300 requests/s) and target: requests are scheduled at fixed
   times (constant arrival rate) for `--duration` seconds whatever the answers, and latency is
   measured from the scheduled time to the last byte of the answer, so queueing in the server and in
   the client counts (no coordinated omission). Each phase starts with `--warmup` seconds at the same
   rate that are not counted. Reported: requests sent, share answered 200 with a valid body
   (`offers` for ours, `results` for Feast), achieved throughput (valid answers / time from the first
   scheduled send to the last answer), client-side p50/p90/p99/max over every request sent (one that
   failed or timed out after `--timeout` seconds counts at the time it failed), and for ours the
   server-reported `latency_ms` p50/p99 and how many answers said `degraded`.
3. Closed loop, per target: `--concurrency` clients (default 8) each send the next request as soon as
   the previous answer arrives, for `--duration` seconds: the most answers per second.
4. CPU over each phase (its warm-up included), from /proc: the server's process tree, the load
   generator, and everything else on the machine ("other": on a shared machine, other people's work),
   and the server's CPU milliseconds per request, which depends less on that load than latency does.
   Before each phase the benchmark waits until both servers are idle (an overloaded phase leaves
   requests the client gave up on still being served).

The load generator is one asyncio process (aiohttp on uvloop, keep-alive pool of `--connections`);
it shares the cores with the servers, as a client on the same host would, and its CPU is reported per phase.
Results: a markdown table on stdout and JSON in `--out` (default `<workdir>/bench_recommend.json`).
The work directory's event log (`events.db`) is restored afterwards, so re-runs start from the same
contact history (the rules' frequency caps read it). Issue targets: ours p99 under 15 ms at 100 and
300 requests/s, and more full recommendations per second than Feast returns bare features.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

from nextbest.cli.server import free_port, serve_command, serve_env, stop_server, wait_ready
from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP, NBP_FEATURE_SERVICE
from nextbest.settings import Paths

from loadgen import feast_body, floor_server, run_load

REPO_ROOT = Path(__file__).resolve().parents[1]

PROFILE_TABLE = "customer_profile.parquet"
SERVICE_NAME = "nextbest"  # @bentoml.service(name=...) in serving/service.py


# -- servers --------------------------------------------------------------------------------------

class Target:
    """A server under test: its process, URL and what the load generator sends it."""

    def __init__(self, kind: str, label: str, url: str, proc, log_path: Path | None = None):
        self.kind, self.label, self.url, self.proc, self.log_path = kind, label, url, proc, log_path

    def pids(self) -> list[int]:
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid, *(c.pid for c in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []


def _wait_http(url: str, proc, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited before it was ready")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url}: not ready within {timeout:.0f}s")


def start_ours(paths: Paths, workers: int, logs: Path) -> Target:
    port = free_port()
    env = serve_env(paths)
    env["BENTOML_CONFIG_OVERRIDES"] = json.dumps({"services": {SERVICE_NAME: {"workers": workers}}})
    log_path = logs / "nextbest_serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(serve_command(paths, port), env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=REPO_ROOT)
    try:
        wait_ready(port, proc)
    except Exception:
        stop_server(proc)
        raise RuntimeError(f"our service did not start; its log: {log_path}\n"
                           f"{log_path.read_text(errors='replace')[-2000:]}") from None
    return Target("ours", "ours: /recommend", f"http://127.0.0.1:{port}/recommend", proc, log_path)


def start_feast(paths: Paths, workers: int, logs: Path) -> Target:
    port = free_port()
    feast = Path(sys.executable).with_name("feast")
    cmd = [str(feast if feast.exists() else "feast"), "-c", str(paths.feast), "serve", "-h", "127.0.0.1",
           "-p", str(port), "--workers", str(workers), "--no-access-log", "--max-requests", "0"]
    log_path = logs / "feast_serve.log"
    with log_path.open("wb") as log:
        # serve_env puts the repository on PYTHONPATH: the store's online-store class lives there.
        proc = subprocess.Popen(cmd, env=serve_env(paths), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=REPO_ROOT)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
    except Exception:
        stop_server(proc)
        raise RuntimeError(f"feast serve did not start; its log: {log_path}\n"
                           f"{log_path.read_text(errors='replace')[-2000:]}") from None
    return Target("feast", "Feast: /get-online-features", f"http://127.0.0.1:{port}/get-online-features",
                  proc, log_path)


def start_floor() -> tuple[Target, BaseProcess]:
    port = free_port()
    proc = multiprocessing.get_context("spawn").Process(target=floor_server, args=(port,), daemon=True)
    proc.start()
    import httpx

    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.post(url, content=b"{}", timeout=2)
            return Target("null", "floor: trivial server", url, proc), proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("the floor server did not start")


def check_answers(ours: Target, feast: Target, customer: str, features: list[str] | None) -> dict:
    """One request to each server: both must answer a known customer with real values."""
    import httpx

    mine = httpx.post(ours.url, json={"customer_id": customer, "channel": "mobile_app", "k": 3}, timeout=30)
    if mine.status_code != 200 or not isinstance(mine.json().get("offers"), list):
        raise RuntimeError(f"/recommend answered {mine.status_code}: {mine.text[:500]}")
    theirs = httpx.post(feast.url, json=feast_body(customer, features), timeout=30)
    if theirs.status_code != 200:
        raise RuntimeError(f"/get-online-features answered {theirs.status_code}: {theirs.text[:500]}")
    body = theirs.json()
    statuses = [s for result in body["results"] for s in result.get("statuses", [])]
    present = sum(s == "PRESENT" for s in statuses)
    if not present:
        raise RuntimeError(f"Feast found no features for {customer}: statuses {sorted(set(statuses))}")
    return {"ours_offers": len(mine.json()["offers"]), "ours_degraded": mine.json().get("degraded"),
            "ours_bytes": len(mine.content), "feast_features": len(body["metadata"]["feature_names"]),
            "feast_present": present, "feast_bytes": len(theirs.content)}


# -- CPU accounting -------------------------------------------------------------------------------

def _proc_cpu(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _machine_busy() -> float:
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


def settle(targets: list[Target], quiet_cores: float = 0.05, window: float = 0.5, timeout: float = 60.0) -> float:
    """Waits until no server is still working off an earlier phase (requests the client gave up on
    are still served); returns the seconds waited."""
    started = time.monotonic()
    pids = [pid for tg in targets for pid in tg.pids()]
    before = _proc_cpu(pids)
    while time.monotonic() - started < timeout:
        time.sleep(window)
        now = _proc_cpu(pids)
        if (now - before) / window < quiet_cores:
            break
        before = now
    return time.monotonic() - started


def measured(pool: concurrent.futures.Executor, target: Target, spec: dict, servers: list[Target]) -> dict:
    """Runs one load phase against a target once the servers are idle; adds the server's and the
    machine's CPU over the phase."""
    settled = settle(servers)
    pids = target.pids()
    server0, busy0, t0 = _proc_cpu(pids), _machine_busy(), time.monotonic()
    result = pool.submit(run_load, {**spec, "kind": target.kind, "url": target.url}).result()
    server1, busy1, wall = _proc_cpu(pids), _machine_busy(), time.monotonic() - t0
    server_cpu, busy = server1 - server0, busy1 - busy0
    result.update({
        "target": target.kind, "mode": spec["mode"], "rate": spec.get("rate"), "concurrency": spec.get("concurrency"),
        "duration_s": spec["duration"], "phase_wall_s": round(wall, 2), "settle_s": round(settled, 2),
        # CPU over the whole phase (warm-up included), in cores: 1.0 = one core busy throughout.
        "server_cores": round(server_cpu / wall, 3), "client_cores": round(result["client_cpu_s"] / wall, 3),
        "other_cores": round(max(busy - server_cpu - result["client_cpu_s"], 0.0) / wall, 3),
        "server_cpu_ms_per_request": (round(server_cpu * 1000 / result["with_warmup"], 3)
                                      if result["with_warmup"] else None),
    })
    return result


# -- the run --------------------------------------------------------------------------------------

def prepare(paths: Paths, customers: int, months: int, seed: int) -> bool:
    """Builds the work directory with `nextbest quickstart` unless it already holds one; True if built."""
    needed = [paths.feast / "feature_store.yaml", paths.feast / "registry.db", paths.features / PROFILE_TABLE,
              paths.mlflow / "mlflow.db"]
    if all(p.exists() for p in needed):
        return False
    cmd = [sys.executable, "-m", "nextbest.cli", "quickstart", "--customers", str(customers), "--months",
           str(months), "--seed", str(seed), "--workdir", str(paths.root)]
    print(f"work directory: building with {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=REPO_ROOT, check=True)
    return True


def feature_refs(paths: Paths) -> list[str]:
    """The next-best-product feature service's features as `view:feature` references."""
    from nextbest.feature_repo.store import open_store

    service = open_store(paths).get_feature_service(NBP_FEATURE_SERVICE)
    return [f"{p.name_to_use()}:{f.name}" for p in service.feature_view_projections for f in p.features]


def online_store_description(paths: Paths) -> str:
    from nextbest.feature_repo.store import current_online_store

    choice = current_online_store(paths)
    return choice.describe() if choice else "another online store (not one of nextbest's)"


def customer_ids(paths: Paths) -> list[str]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(paths.features / PROFILE_TABLE, columns=[CUSTOMER_ID, EVENT_TIMESTAMP])
    latest = table.filter(pc.equal(table[EVENT_TIMESTAMP], pc.max(table[EVENT_TIMESTAMP])))
    return sorted(set(latest[CUSTOMER_ID].to_pylist()))


def _fmt(v, digits: int = 1) -> str:
    return "" if v is None else f"{v:,.{digits}f}"


TABLE_COLUMNS = ["target", "load", "sent", "ok", "answers/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
                 "server p50 / p99 ms", "server CPU ms/req", "CPU cores: server / client / other"]
TABLE_ALIGN = "llrrrrrrrrrl"


def table_rows(phases: list[dict], labels: dict[str, str]) -> list[list[str]]:
    """One row of cells per phase, in TABLE_COLUMNS order."""
    rows = []
    for r in phases:
        load = f"open {r['rate']:g}/s" if r["mode"] == "open" else f"closed x{r['concurrency']}"
        server = (f"{_fmt(r['server_p50_ms'], 2)} / {_fmt(r['server_p99_ms'], 2)}"
                  if r["server_p50_ms"] is not None else "")
        degraded = r["degraded"]
        rows.append([labels[r["target"]], load, f"{r['sent']:,}",
                     f"{100 * r['ok_share']:.1f}%" + (f" ({degraded:,} degraded)" if degraded else ""),
                     _fmt(r["throughput"]), _fmt(r["p50_ms"], 2), _fmt(r["p90_ms"], 2), _fmt(r["p99_ms"], 2),
                     _fmt(r["max_ms"], 1), server,
                     _fmt(r["server_cpu_ms_per_request"], 2) if r["target"] != "null" else "",
                     f"{r['server_cores']:.2f} / {r['client_cores']:.2f} / {r['other_cores']:.2f}"])
    return rows


def table(phases: list[dict], labels: dict[str, str]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in TABLE_ALIGN) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(phases, labels)]
    return "\n".join(lines)


def snapshot_event_log(paths: Paths, keep: Path) -> Path | None:
    """Copies the event log aside (SQLite's backup API: consistent even in WAL mode)."""
    import sqlite3

    if not paths.events_db.exists():
        return None
    target = keep / "events.db.before"
    with sqlite3.connect(paths.events_db) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return target


def restore_event_log(paths: Paths, saved: Path | None) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{paths.events_db}{suffix}").unlink(missing_ok=True)
    if saved is not None:
        shutil.copyfile(saved, paths.events_db)


def run(args: argparse.Namespace) -> dict:
    paths = Paths.from_workdir(args.workdir or REPO_ROOT / ".nextbest" / f"bench-recommend-{args.customers}")
    paths.ensure()
    t = time.perf_counter()
    built = prepare(paths, args.customers, args.months, args.seed)
    customers = customer_ids(paths)
    print(f"work directory {paths.root} ({'built' if built else 'reused'} in {time.perf_counter() - t:.0f}s): "
          f"{len(customers):,} customers in the latest snapshot", flush=True)
    store = online_store_description(paths)
    print(f"online store: {store} (both servers read it through the same feast/feature_store.yaml)", flush=True)
    load0 = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f} at start; "
          f"{args.workers} worker process(es) per server", flush=True)

    refs = feature_refs(paths) if args.feast_request == "features" else None
    base = {"customers": customers, "connections": args.connections, "timeout": args.timeout, "feast_features": refs}
    phases: list[dict] = []
    scratch = Path(tempfile.mkdtemp(prefix="bench_recommend_"))
    logs = paths.root / "bench_logs"
    logs.mkdir(exist_ok=True)
    saved_log = snapshot_event_log(paths, scratch)
    procs = []
    floor_proc = None
    ctx = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            t = time.perf_counter()
            ours = start_ours(paths, args.workers, logs)
            procs.append(ours.proc)
            feast = start_feast(paths, args.workers, logs)
            procs.append(feast.proc)
            print(f"servers up in {time.perf_counter() - t:.0f}s: {ours.url}, {feast.url}", flush=True)
            sanity = check_answers(ours, feast, customers[0], refs)
            print(f"  one answer each: ours {sanity['ours_offers']} offers ({sanity['ours_bytes']:,} bytes); "
                  f"Feast {sanity['feast_features']} features, {sanity['feast_present']} present "
                  f"({sanity['feast_bytes']:,} bytes)", flush=True)
            targets = [ours, feast]
            if args.floor:
                floor, floor_proc = start_floor()
                targets.append(floor)
            labels = {tg.kind: tg.label for tg in targets}

            # Warm-up: a few seconds of closed-loop traffic per server, not counted.
            for tg in targets:
                pool.submit(run_load, {**base, "kind": tg.kind, "url": tg.url, "mode": "closed", "duration": 0.0,
                                       "concurrency": args.concurrency, "warmup": args.warmup_server,
                                       "seed": 1}).result()

            # Interleaved, so that a change in the machine's load hits both targets alike.
            for i, rate in enumerate(args.rates):
                for tg in targets:
                    duration = min(args.duration, args.floor_duration) if tg.kind == "null" else args.duration
                    spec = {**base, "mode": "open", "rate": rate, "duration": duration, "warmup": args.warmup,
                            "seed": 100 + i}
                    r = measured(pool, tg, spec, [ours, feast])
                    phases.append(r)
                    print(f"  {tg.label:30s} open {rate:g}/s: {r['throughput']:.1f}/s, ok {100 * r['ok_share']:.1f}%, "
                          f"p50 {_fmt(r['p50_ms'], 2)} ms, p99 {_fmt(r['p99_ms'], 2)} ms", flush=True)
            for tg in targets:
                duration = min(args.duration, args.floor_duration) if tg.kind == "null" else args.duration
                spec = {**base, "mode": "closed", "concurrency": args.concurrency, "duration": duration,
                        "warmup": 1.0, "seed": 200}
                r = measured(pool, tg, spec, [ours, feast])
                phases.append(r)
                print(f"  {tg.label:30s} closed x{args.concurrency}: {r['throughput']:.1f}/s, "
                      f"ok {100 * r['ok_share']:.1f}%, p50 {_fmt(r['p50_ms'], 2)} ms", flush=True)
    finally:
        for proc in procs:
            stop_server(proc)
        if floor_proc is not None:
            floor_proc.terminate()
            floor_proc.join(5)
        if not args.keep_event_log:
            restore_event_log(paths, saved_log)
        shutil.rmtree(scratch, ignore_errors=True)

    load1 = os.getloadavg()
    by = {(r["target"], r["mode"], r["rate"]): r for r in phases}
    ours_max, feast_max = by[("ours", "closed", None)]["throughput"], by[("feast", "closed", None)]["throughput"]
    targets_met = {f"p99_under_15ms_at_{rate:g}": (by[("ours", "open", rate)]["p99_ms"] or 1e9) < 15.0
                   and by[("ours", "open", rate)]["ok_share"] >= 0.999 for rate in args.rates}
    targets_met["more_recommendations_than_feast_features"] = ours_max > feast_max
    return {
        "benchmark": "bench_recommend", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_start": [round(x, 2) for x in load0],
                    "load_average_end": [round(x, 2) for x in load1]},
        "config": {"workdir": str(paths.root), "online_store": store,
                   "customers_in_snapshot": len(customers), "workers": args.workers,
                   "rates": args.rates, "duration_s": args.duration, "warmup_s": args.warmup,
                   "concurrency": args.concurrency, "connections": args.connections, "timeout_s": args.timeout,
                   "feast_flags": "--no-access-log --max-requests 0", "feast_request": args.feast_request,
                   "built_workdir": built},
        "sanity": sanity, "labels": labels, "phases": phases,
        "summary": {"ours_max_per_s": ours_max, "feast_max_per_s": feast_max,
                    "ratio": round(ours_max / feast_max, 3) if feast_max else None, "targets": targets_met},
        "logs": {"ours": str(ours.log_path), "feast": str(feast.log_path)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=None,
                    help="work directory to reuse or build (default .nextbest/bench-recommend-<customers>)")
    ap.add_argument("--customers", type=int, default=20_000, help="customers if the work directory is built")
    ap.add_argument("--months", type=int, default=12, help="monthly snapshots if the work directory is built")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds measured per phase")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds at the phase's rate before measuring")
    ap.add_argument("--warmup-server", type=float, default=3.0, help="closed-loop seconds per server after start")
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[100.0, 300.0],
                    help="open-loop arrival rates, requests/s, comma-separated")
    ap.add_argument("--concurrency", type=int, default=8, help="closed-loop clients")
    ap.add_argument("--connections", type=int, default=64, help="keep-alive connections the load generator may open")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before a request counts as failed")
    ap.add_argument("--workers", type=int, default=1, help="worker processes per server (both servers)")
    ap.add_argument("--feast-request", choices=["features", "feature_service"], default="features",
                    help="ask Feast by the service's feature references (default: its faster path) or by the "
                         "feature service's name (Feast 0.67 rebuilds the service from its proto on every request)")
    ap.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure a trivial server (the load generator's own floor)")
    ap.add_argument("--floor-duration", type=float, default=5.0, help="seconds per floor phase")
    ap.add_argument("--keep-event-log", action="store_true",
                    help="keep the decisions the run logged (default: restore events.db as it was)")
    ap.add_argument("--out", type=Path, default=None, help="JSON results (default <workdir>/bench_recommend.json)")
    args = ap.parse_args()
    from results import Run

    record = Run("bench_recommend")
    results = run(args)
    out = args.out or Path(results["config"]["workdir"]) / "bench_recommend.json"
    out.write_text(json.dumps(results, indent=2))
    s, m = results["summary"], results["machine"]
    title = (f"/recommend beside `feast serve`, {results['config']['workers']} worker process(es) each, "
             f"{results['config']['online_store']}, "
             f"{m['cpus']} CPUs shared with the load generator; {results['config']['duration_s']:g} s per phase; "
             f"load average {m['load_average_start'][0]:.2f} at start, {m['load_average_end'][0]:.2f} at the end")
    most = (f"most answers per second (closed loop x{results['config']['concurrency']}): "
            f"ours {s['ours_max_per_s']:,.1f} "
            f"full recommendations/s vs Feast {s['feast_max_per_s']:,.1f} bare feature vectors/s "
            f"-> ratio {s['ratio']:.2f}")
    targets = "targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in s["targets"].items())
    print(f"\n{title}\n")
    print(table(results["phases"], results["labels"]))
    print(f"\n{most}")
    print(targets)
    print(f"results: {out}")
    record.figures.update({k: results[k] for k in ("config", "sanity", "phases", "summary")})
    record.figures["config"] = {k: v for k, v in results["config"].items() if k != "workdir"}
    record.figures["load_average"] = {"start": m["load_average_start"], "end": m["load_average_end"]}
    record.table(title, TABLE_COLUMNS, table_rows(results["phases"], results["labels"]), align=TABLE_ALIGN)
    record.note(most)
    record.note(targets)
    record.write()


if __name__ == "__main__":
    main()
