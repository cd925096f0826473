"""Send-time personalisation on the simulated bank: acceptance at the learned send hour against one
fixed hour for everyone and against the truth's best hour.

    python benchmarks/bench_sendtime.py [--customers 20000] [--months 12] [--seed 1]
                                        [--slots 8,10,12,14,16,18,20] [--speed-customers 1000000]

A bank of `--customers` x `--months` (`nextbest.simulation`, the default time preference) is
written to a temporary work directory. The learner (`nextbest.serving.outbound.sendtime`) picks
each customer's send slot among `--slots` from the times of day of their interactions over the
whole window (logins carry one), shrunk toward their age band's (18-24, 25-34, ..., 65+ at the last
snapshot). For every client of the last snapshot (a product held), the true P(accept) of an
email and of a push (`monitoring.replay.world.Truth.acceptance_grid`, on a Tuesday) is averaged
over the products they could still acquire (true p_next > 0), at:
- fixed: the one slot with the highest mean acceptance over everyone, chosen with the truth (the
  best a campaign with one send hour can do);
- learned: each customer's slot from their activity alone;
- learned x channel: the same scores weighed by the channel's mean acceptance at each slot
  (`slot_weights`), the very curve the fixed slot is chosen from;
- best: each customer's best slot under the truth (the ceiling).

Reported: mean acceptance of each, and the share of the best slot's gain over the fixed one that
each learned slot captures. Target: at least 0.5 on each channel, from activity alone. Then the
learner's time on the bank's interactions and on `--speed-customers` synthetic customers x 24
timed events (ids as a categorical column, as `pd.read_parquet` reads a dictionary-encoded one);
target: a few seconds at 1,000,000 customers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from nextbest.config import load_catalogue
from nextbest.constants import CUSTOMER_ID
from nextbest.monitoring.replay.world import Truth
from nextbest.serving.outbound.sendtime import best_slots, slot_scores
from nextbest.settings import Paths
from nextbest.simulation.bank import BankSpec
from nextbest.simulation.write import generate_to

CHANNELS = ("email", "push")
TUESDAY = 1
AGE_BANDS = [18, 25, 35, 45, 55, 65, 200]
TARGET_SHARE = 0.5


def age_bands(customers: pd.DataFrame, ids: list[str], at: pd.Timestamp) -> np.ndarray:
    """Each customer's age band at `at` (a label; NaN where the birth date is unknown)."""
    birth = pd.to_datetime(customers.set_index(CUSTOMER_ID)["birth_date"]).reindex(ids)
    age = (at - birth).dt.days / 365.25
    return pd.cut(age, AGE_BANDS, right=False).astype(str).where(age.notna()).to_numpy()


def mean_acceptance(truth: Truth, customers: np.ndarray, channel: str, slots: np.ndarray) -> np.ndarray:
    """True P(accept) per customer and slot, averaged over the products each could still acquire, (n, S)."""
    p = truth.p_next[customers]  # (n, P)
    open_ = p > 0
    grid = truth.acceptance_grid(customers, truth.products, channel, np.tile(slots, (len(customers), 1)), TUESDAY)
    return (grid * open_[:, :, None]).sum(1) / open_.sum(1, keepdims=True)


def speed(n: int, per: int = 24, seed: int = 0) -> tuple[int, list[float]]:
    """Seconds the learner takes for `n` customers x `per` timed events (random preferred hours), on
    its first call in this process and on a second one (the first also pays for fresh memory)."""
    rng = np.random.default_rng(seed)
    ids = pd.Index([f"C{i:08d}" for i in range(n)])
    who = rng.integers(0, n, n * per)
    hours = (rng.uniform(0, 24, n)[who] + rng.normal(0, 1.5, len(who))) % 24
    when = (np.datetime64("2026-01-01", "ns") + rng.integers(0, 365, len(who)).astype("timedelta64[D]")
            + (hours * 3.6e12).astype("timedelta64[ns]"))
    events = pd.DataFrame({CUSTOMER_ID: pd.Categorical.from_codes(who, ids), "event_date": when})
    del who, hours, when
    segments = rng.integers(0, 7, n)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        best_slots(events, ids, list(range(8, 21)), segments)
        seconds.append(time.perf_counter() - start)
    return len(events), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--months", type=int, default=12)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--end", default="2026-06-30", help="last month end of the simulated window")
    ap.add_argument("--slots", default="8,10,12,14,16,18,20", help="the campaign's allowed send hours")
    ap.add_argument("--speed-customers", type=int, default=1_000_000, help="0: skip the speed measurement")
    args = ap.parse_args()
    from results import Run

    run = Run("bench_sendtime")
    slots = np.array([int(s) for s in args.slots.split(",")])
    catalogue = load_catalogue()
    spec = BankSpec(n_customers=args.customers, n_months=args.months, seed=args.seed, end=pd.Timestamp(args.end))
    print(f"sendtime: {args.customers:,} customers x {args.months} months, seed {args.seed}, slots {slots.tolist()}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = Paths.from_workdir(Path(tmp)).ensure()
        start = time.perf_counter()
        generate_to(paths, catalogue, spec)
        print(f"  bank generated in {time.perf_counter() - start:.1f} s", flush=True)
        truth = Truth.load(paths.root / "truth", catalogue.ids, categories=catalogue.categories())
        interactions = pq.read_table(paths.raw / "interactions.parquet", columns=[CUSTOMER_ID, "event_date"],
                                     read_dictionary=[CUSTOMER_ID]).to_pandas()
        customers = pd.read_parquet(paths.raw / "customers.parquet", columns=[CUSTOMER_ID, "birth_date"])
        holdings = pd.read_parquet(paths.raw / "holdings.parquet", columns=[CUSTOMER_ID, "snapshot_date"])
        clients = holdings.loc[holdings["snapshot_date"] == holdings["snapshot_date"].max(), CUSTOMER_ID].unique()

    # The clients of the last snapshot: the customers an outbound campaign is sent to.
    rows = np.flatnonzero(np.isin(truth.customer_ids, clients) & (truth.p_next > 0).any(1))
    ids = [truth.customer_ids[i] for i in rows]
    segments = age_bands(customers, ids, pd.Timestamp(truth.snapshot.replace(tzinfo=None)))
    start = time.perf_counter()
    scores = slot_scores(interactions, ids, slots.tolist(), segments)  # (n, S)
    learn_s = time.perf_counter() - start
    timed = (pd.to_datetime(interactions["event_date"]) != pd.to_datetime(interactions["event_date"]).dt.normalize())
    with_history = np.isin(ids, interactions.loc[timed.to_numpy(), CUSTOMER_ID].astype(str).unique())
    print(f"  {len(rows):,} clients, {with_history.mean():.1%} with timed events; learned in {learn_s:.2f} s")

    table, figures, shares = [], {}, []
    for channel in CHANNELS:
        acc = mean_acceptance(truth, rows, channel, slots)  # (n, S)
        by_slot = acc.mean(0)
        fixed_slot = int(by_slot.argmax())
        fixed, best = acc[:, fixed_slot].mean(), acc.max(1).mean()
        mine = {"learned": scores.argmax(1), "learned_x_channel": (scores * by_slot).argmax(1)}
        figures[channel] = {"fixed_hour": int(slots[fixed_slot]), "fixed": fixed, "best": best}
        table.append([channel, f"fixed, {slots[fixed_slot]}:00 for everyone", f"{fixed:.3%}", "", ""])
        for name, label in (("learned", "learned from activity"), ("learned_x_channel", "learned x channel by hour")):
            value = acc[np.arange(len(rows)), mine[name]].mean()
            share = (value - fixed) / (best - fixed) if best > fixed else float("nan")
            figures[channel][name] = value
            figures[channel][f"{name}_share_of_best_gain"] = share
            table.append([channel, label, f"{value:.3%}", f"{value / fixed - 1:+.1%}", f"{share:.2f}"])
        shares.append(figures[channel]["learned_share_of_best_gain"])
        table.append([channel, "truth's best per customer", f"{best:.3%}", f"{best / fixed - 1:+.1%}", "1.00"])
        print(f"  {channel:6s} fixed {fixed:.3%} at {slots[fixed_slot]}:00, best {best:.3%}; share of the best gain: "
              f"learned {shares[-1]:.2f}, x channel {figures[channel]['learned_x_channel_share_of_best_gain']:.2f}")

    run.figures.update({"customers": args.customers, "months": args.months, "seed": args.seed,
                        "slots": slots.tolist(), "clients": len(rows), "with_timed_events": float(with_history.mean()),
                        "learn_seconds": learn_s, "interaction_rows": len(interactions), **figures})
    run.table(f"Mean true P(accept) by send slot, {len(rows):,} clients of a {args.customers:,} x {args.months} bank",
              ["channel", "send slot", "mean P(accept)", "vs fixed", "share of best gain"], table, align="llrrr")
    met = min(shares) >= TARGET_SHARE
    run.note(f"share of the truth's gain captured from activity alone: "
             f"{', '.join(f'{c} {s:.2f}' for c, s in zip(CHANNELS, shares))} (target >= {TARGET_SHARE}): "
             f"{'met' if met else 'not met'}")

    timing = [[f"{len(rows):,} clients of the bank", f"{len(interactions):,}", f"{learn_s:.2f} s"]]
    if args.speed_customers:
        n_events, seconds = speed(args.speed_customers)
        print(f"  {args.speed_customers:,} customers x 24 events: {seconds[0]:.2f} s, again {seconds[1]:.2f} s")
        run.figures["speed"] = {"customers": args.speed_customers, "events": n_events, "seconds": seconds}
        timing += [[f"{args.speed_customers:,} synthetic customers", f"{n_events:,}", f"{seconds[0]:.2f} s"],
                   [f"{args.speed_customers:,} synthetic customers, again", f"{n_events:,}", f"{seconds[1]:.2f} s"]]
    run.table(f"Learner time (one process, {os.cpu_count()} CPUs)", ["customers", "event rows", "time"], timing)
    run.finish()


if __name__ == "__main__":
    main()
