"""Uplift of any campaign history: a table with one row per customer, the arm they were assigned
(control or one of several treatments), their outcome and, optionally, a value and a segment,
from nextbest or from another system.

Per treatment arm against the control: the conversion and value uplift with intervals, overall
and per segment (the estimators of the monitor's uplift, `nextbest.monitoring.uplift.compare`);
uplift models fitted on the table's other columns (T-, X- and DR-learner, cross-fitted: see
`nextbest.training.uplift`) with their Qini and uplift curves; the observed uplift within each
fifth of the customers ranked by predicted uplift, which is who to target next; and a check that
the arms look randomised (standardised differences of the features between arm and control).

An outcome is 0/1 (also yes/no, true/false) or a number (revenue, balance change); for a number,
"converted" means above zero and the value is the outcome itself unless a value column is given.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.constants import DEFAULT_SEED
from nextbest.monitoring.uplift import compare
from nextbest.schema import SchemaError

BINARY_WORDS = {"1": 1, "0": 0, "yes": 1, "no": 0, "true": 1, "false": 0, "y": 1, "n": 0}
CONTROL_WORDS = ("control", "holdout", "0", "no", "false", "none", "ctrl", "c")
MIN_ROWS_PER_ARM = 200  # below this, uplift models are not fitted (the comparison still is)
MAX_SEGMENTS = 30
BALANCE_SMD = 0.1  # a standardised mean difference above this flags an arm as not like its control
QUANTILES = 5


def plain(value):
    """A cell as a user wrote it: numpy scalars as Python numbers, for messages."""
    return value.item() if isinstance(value, np.generic) else value


def read_table(path: Path) -> pd.DataFrame:
    """A CSV (any of , ; tab | as separator, found from the header) or parquet file."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"{path}: no such file")
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow's errors for a file that is not parquet
            raise SchemaError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    if not path.name.endswith((".csv", ".csv.gz", ".txt", ".tsv")):
        raise SchemaError(f"{path}: expected a .csv, .csv.gz, .tsv or .parquet file")
    import gzip

    try:
        with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path, newline="")) as f:
            header = f.readline()
        sep = csv.Sniffer().sniff(header, delimiters=",;\t|").delimiter if header.strip() else ","
    except csv.Error:
        sep = ","
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{path}: not UTF-8 text ({exc.reason})") from None
    try:
        return pd.read_csv(path, sep=sep, low_memory=False)
    except pd.errors.EmptyDataError:
        raise SchemaError(f"{path}: empty file, expected a header row") from None
    except pd.errors.ParserError as exc:
        raise SchemaError(f"{path}: malformed CSV ({str(exc).strip()})") from None
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _column(frame: pd.DataFrame, name: str | None, option: str, path: Path) -> None:
    if name is not None and name not in frame.columns:
        raise SchemaError(f"{path}: no column {name!r} ({option}); the file has {list(frame.columns)[:30]}")


def _empty_rows(frame: pd.DataFrame, name: str, path: Path) -> None:
    empty = frame[name].isna()
    if empty.any():
        rows = (np.flatnonzero(empty)[:5] + 2).tolist()  # file lines, after the header
        raise SchemaError(f"{path}: column {name!r} has {int(empty.sum()):,} empty values (lines {rows})")


def outcome_values(column: pd.Series, name: str, path: Path) -> tuple[np.ndarray, bool]:
    """(outcome as floats, whether it is 0/1)."""
    if pd.api.types.is_bool_dtype(column):
        return column.to_numpy(float), True
    if pd.api.types.is_numeric_dtype(column):
        y = column.to_numpy(float)
        if not np.isfinite(y).all():
            bad = column[~np.isfinite(y)].iloc[0]
            raise SchemaError(f"{path}: column {name!r} (outcome) has the value {plain(bad)!r}; expected finite "
                              "numbers")
        return y, bool(np.isin(y, (0.0, 1.0)).all())
    words = column.astype(str).str.strip().str.lower()
    known = words.isin(list(BINARY_WORDS))
    if known.all():
        return words.map(BINARY_WORDS).to_numpy(float), True
    numbers = pd.to_numeric(column, errors="coerce")
    if numbers.notna().all():
        return outcome_values(numbers, name, path)
    i = int(np.flatnonzero((~known & numbers.isna()).to_numpy())[0])
    raise SchemaError(f"{path}: column {name!r} (outcome) has the value {plain(column.iloc[i])!r} (line {i + 2}); an "
                      "outcome is 0/1, yes/no, true/false or a number")


def choose_control(arms: list[str], control: str | None, name: str, path: Path) -> str:
    if control is not None:
        if control not in arms:
            raise SchemaError(f"{path}: column {name!r} has no value {control!r} (--control); its values are {arms}")
        return control
    found = [a for a in arms if a.strip().lower() in CONTROL_WORDS]
    if len(found) != 1:
        raise SchemaError(f"{path}: which value of column {name!r} is the control group? Its values are {arms}; "
                          "pass --control VALUE")
    return found[0]


def balance(frame: pd.DataFrame, numeric: list[str], arm: np.ndarray, treated: int, control: int) -> list[dict]:
    """Standardised mean differences of the numeric features, arm against control, largest first."""
    out = []
    for c in numeric:
        x = pd.to_numeric(frame[c], errors="coerce").to_numpy(float)
        a, b = x[arm == treated], x[arm == control]
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if len(a) < 2 or len(b) < 2:
            continue
        sd = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
        if sd > 0:
            out.append({"column": c, "smd": float((a.mean() - b.mean()) / sd)})
    return sorted(out, key=lambda r: -abs(r["smd"]))


def campaign_uplift(path: Path, treatment: str, outcome: str, value: str | None = None, segment: str | None = None,
                    control: str | None = None, features: list[str] | None = None, id_column: str | None = None,
                    confidence: float = 0.95, n_boot: int = 1000, seed: int = DEFAULT_SEED,
                    frame: pd.DataFrame | None = None) -> tuple[dict, pd.DataFrame]:
    """The uplift report of a campaign file, and each row's predicted uplift per treatment arm.

    Args:
        features: the uplift models' inputs (default: every other column; identifiers, dates and
            constant columns are left out and listed).
        id_column: the customers' identifier: never a model input, and the key of the scores (else
            the scores carry each row's line in the file).
        frame: the table already read (else read from `path`).

    Raises:
        SchemaError: a missing column, one arm only, an outcome or value that is not a number, an
            unknown control value, empty treatment or outcome cells.
    """
    from statistics import NormalDist

    from nextbest.training import uplift as learn

    started = time.perf_counter()
    path = Path(path)
    frame = read_table(path) if frame is None else frame
    for name, option in ((treatment, "--treatment"), (outcome, "--outcome"), (value, "--value"),
                         (segment, "--segment"), (id_column, "--id"), *((c, "--features") for c in features or [])):
        _column(frame, name, option, path)
    if not len(frame):
        raise SchemaError(f"{path}: no rows")
    _empty_rows(frame, treatment, path)
    _empty_rows(frame, outcome, path)
    arms_of = frame[treatment].astype(str).str.strip()
    arms = sorted(arms_of.unique().tolist())
    if len(arms) < 2:
        raise SchemaError(f"{path}: column {treatment!r} (treatment) has one arm only: {arms[0]!r}; uplift needs a "
                          "control group and at least one treatment")
    control = choose_control(arms, None if control is None else str(control).strip(), treatment, path)
    treated_arms = [a for a in arms if a != control]
    order = [control, *treated_arms]
    arm = arms_of.map({a: i for i, a in enumerate(order)}).to_numpy(int)
    y, binary = outcome_values(frame[outcome], outcome, path)
    if value is not None:
        v = pd.to_numeric(frame[value], errors="coerce")
        if v.isna().any():
            i = int(np.flatnonzero(v.isna())[0])
            raw = frame[value].iloc[i]
            what = "an empty value" if pd.isna(raw) else f"the value {plain(raw)!r}"
            raise SchemaError(f"{path}: column {value!r} (value) has {what} (line {i + 2}); expected a number")
        v = v.to_numpy(float)
    else:
        v = y.copy()
    converted = y > 0
    seg = (frame[segment].astype(str).fillna("(none)").to_numpy(object) if segment else None)
    if seg is not None:
        top = pd.Series(seg).value_counts().index[:MAX_SEGMENTS]
        seg = np.where(pd.Series(seg).isin(top), seg, "other")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    rng = np.random.default_rng(seed)
    units = pd.DataFrame({"group": np.where(arm == 0, "control", "treatment"), "converted": converted, "value": v})

    used = [c for c in (features or frame.columns) if c not in {treatment, outcome, value, id_column}]
    design = learn.design(frame, used)
    fold = learn.folds(len(frame), seed=seed)
    counts = np.bincount(arm, minlength=len(order))
    fit = design.x.shape[1] > 0 and counts.min() >= MIN_ROWS_PER_ARM
    mu = learn.outcome_models(design.x, y, arm, len(order), fold, design.categorical, binary, seed) if fit else None
    shares = learn.arm_shares(arm, len(order), fold)
    numeric = [design.names[j] for j in range(len(design.names)) if j not in set(design.categorical)]
    scores = (frame[[id_column]].reset_index(drop=True) if id_column
              else pd.DataFrame({"line": np.arange(len(frame)) + 2}))
    comparisons, warnings = {}, []
    for a, name in enumerate(order[1:], start=1):
        pair = (arm == a) | (arm == 0)
        part = units[pair]
        out = {"overall": compare(part, z, n_boot, rng),
               "rows": {"control": int(counts[0]), "treatment": int(counts[a])}}
        if seg is not None:
            out["by_segment"] = {str(s): compare(part[seg[pair] == s], z, n_boot, rng)
                                 for s in sorted(set(seg[pair]), key=str)}
        out["balance"] = balance(frame, numeric, arm, a, 0)[:10]
        unbalanced = [b for b in out["balance"] if abs(b["smd"]) > BALANCE_SMD]
        if unbalanced:
            warnings.append(f"arm {name!r} differs from the control on " + ", ".join(
                f"{b['column']} (standardised difference {b['smd']:+.2f})" for b in unbalanced[:5])
                + ": the assignment does not look random, so the uplift mixes the offer's effect with who got it")
        if fit:
            learned = {"t_learner": learn.t_learner(mu, a),
                       "x_learner": learn.x_learner(design.x, y, arm, mu, shares, fold, design.categorical, a,
                                                    seed=seed),
                       "dr_learner": learn.dr_learner(design.x, y, arm, mu, shares, fold, design.categorical, a,
                                                      seed=seed)}
            models = {k: learn.curves(score[pair], y[pair], arm[pair] == a).as_dict() for k, score in learned.items()}
            best = max(models, key=lambda k: models[k]["qini_coefficient"])
            chosen = learned[best]
            out["models"] = models
            out["targeting_model"] = best
            out["by_predicted_uplift"] = _by_quantile(part, chosen[pair], z, n_boot, rng)
            scores[f"uplift_{name}"] = chosen
        comparisons[name] = out
    if not fit:
        warnings.append("no uplift model: " + ("no usable feature columns" if design.x.shape[1] == 0 else
                                                f"an arm has fewer than {MIN_ROWS_PER_ARM} rows"))
    result = {
        "source": str(path), "rows": int(len(frame)), "treatment": treatment, "outcome": outcome,
        "outcome_kind": "binary" if binary else "numeric", "value": value, "segment": segment, "control": control,
        "arms": treated_arms, "confidence": confidence, "features": design.names, "dropped": design.dropped,
        "folds": int(fold.max() + 1) if len(fold) else 0, "comparisons": comparisons, "warnings": warnings,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return result, scores


def _by_quantile(units: pd.DataFrame, score: np.ndarray, z: float, n_boot: int, rng) -> list[dict]:
    """Observed uplift within each fifth of the rows ranked by predicted uplift, highest first."""
    order = np.argsort(-score, kind="stable")
    out = []
    for q, rows in enumerate(np.array_split(order, QUANTILES)):
        if not len(rows):
            continue
        out.append({"quantile": q + 1, "predicted_uplift": float(score[rows].mean()),
                    **compare(units.iloc[rows], z, n_boot, rng)})
    return out


# ------------------------------------------------------------------------------------------------ report
def curve_chart(title: str, curves: dict[str, dict], width: int = 480, height: int = 260) -> str:
    """Qini curves (inline SVG) of each model, with the random-targeting line."""
    from html import escape

    colours = {"t_learner": "#4a7bb7", "x_learner": "#2e7d32", "dr_learner": "#8e44ad"}
    ys = [v for c in curves.values() for v in c["curve"]["qini"]] + [0.0]
    lo, hi = min(ys), max(ys)
    span = (hi - lo) or 1.0
    pad, top = 40, 24

    def xy(x: float, y: float) -> str:
        return f"{pad + x * (width - pad - 10):.1f},{top + (hi - y) / span * (height - top - 24):.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}" font-size="11">',
             f'<text x="0" y="13" font-weight="bold">{escape(title)}</text>']
    last = next(iter(curves.values()))["curve"]["qini"][-1] if curves else 0.0
    parts.append(f'<polyline points="{xy(0, 0)} {xy(1, last)}" fill="none" stroke="#999" stroke-dasharray="4,3"/>')
    for i, (name, c) in enumerate(curves.items()):
        points = " ".join(xy(x, y) for x, y in zip(c["curve"]["share"], c["curve"]["qini"]))
        colour = colours.get(name, "#a40")
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>'
                     f'<text x="{width - 150}" y="{top + 14 * i + 8}" fill="{colour}">{escape(name.replace("_", "-"))}'
                     "</text>")
    parts.append(f'<text x="{width - 150}" y="{top + 14 * len(curves) + 8}" fill="#999">random</text>'
                 f'<text x="{pad}" y="{height - 6}">share of customers targeted, by predicted uplift (0 to 100%)</text>'
                 "</svg>")
    return "".join(parts)


def uplift_file_html(result: dict) -> str:
    """The report a marketer reads: which customers the campaign changed, and who to target next.
    No row identifiers: counts, rates and curves only."""
    from html import escape

    from nextbest.monitoring.charts import UPLIFT_HEADERS, ci_chart, html_table, num, page, pct, uplift_row

    conf = f"{100 * result['confidence']:g}%"
    kind = ("conversion: a 0/1 outcome" if result["outcome_kind"] == "binary"
            else "converted: outcome above zero; value: the outcome" if result["value"] is None else
            "converted: outcome above zero")
    parts = [f'<p class="muted">{escape(result["source"])}: {num(result["rows"])} rows; treatment column '
             f'{escape(result["treatment"])} (control: {escape(result["control"])}), outcome '
             f'{escape(result["outcome"])} ({kind}); {conf} intervals (conversion: Newcombe score; value: '
             "bootstrap).</p>"]
    for w in result["warnings"]:
        parts.append(f'<p style="color:#a40;font-weight:600">{escape(w)}</p>')
    for arm, c in result["comparisons"].items():
        o = c["overall"]
        parts.append(f"<h2>{escape(arm)} against {escape(result['control'])}</h2>")
        if o["uplift"] is not None:
            verdict = ("changed behaviour" if o["significant"] else "no change distinguishable from chance")
            parts.append(f"<p>{pct(o['rate_treatment'], 2)} converted with {escape(arm)} against "
                         f"{pct(o['rate_control'], 2)} in the control: {100 * o['uplift']:+.2f} points "
                         f"[{100 * o['uplift_ci'][0]:+.2f}, {100 * o['uplift_ci'][1]:+.2f}] ({verdict}); value per "
                         f"customer {num(o['value_uplift'], 2)} [{num(o['value_uplift_ci'][0], 2)}, "
                         f"{num(o['value_uplift_ci'][1], 2)}].</p>")
        rows = [("overall", o), *c.get("by_segment", {}).items()]
        parts.append(html_table(UPLIFT_HEADERS, [uplift_row(k, s) for k, s in rows]))
        if len(rows) > 1:
            parts.append('<div class="charts">' + ci_chart(
                "Uplift in conversion (pp)", [(k, None if s["uplift"] is None else 100 * s["uplift"],
                                               None if not s["uplift_ci"] else [100 * v for v in s["uplift_ci"]])
                                              for k, s in rows], lambda v: num(v, 2)) + "</div>")
        if "models" in c:
            m = c["models"]
            parts.append("<h3>Who changed: uplift models</h3>")
            parts.append(html_table(["model (cross-fitted)", "Qini coefficient", "AUUC"],
                                    [[k.replace("_", "-"), num(v["qini_coefficient"], 5), num(v["auuc"], 5)]
                                     for k, v in m.items()]))
            parts.append('<div class="charts">' + curve_chart(f"Qini curves, {arm}", m) + "</div>")
            parts.append(f"<h3>Who to target next (ranked by the {c['targeting_model'].replace('_', '-')})</h3>")
            parts.append(html_table(
                ["fifth by predicted uplift", "predicted uplift", *UPLIFT_HEADERS[1:]],
                [[f"{q['quantile']} of {QUANTILES}", num(100 * q["predicted_uplift"], 2) + " pp",
                  *uplift_row("", q)[1:]] for q in c["by_predicted_uplift"]]))
        if c["balance"]:
            parts.append('<p class="muted">Largest feature differences from the control (standardised): '
                         + ", ".join(f"{escape(b['column'])} {b['smd']:+.2f}" for b in c["balance"][:5]) + ".</p>")
    if result["dropped"]:
        parts.append('<p class="muted">Not used by the models: ' + ", ".join(
            f"{escape(k)} ({escape(v)})" for k, v in result["dropped"].items()) + ".</p>")
    return page(f"Uplift of {Path(result['source']).name}", "".join(parts))


def write_report(result: dict, scores: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """uplift.json, uplift.html, qini_<arm>.csv and scores.parquet in `out_dir`, each written whole or not at all."""
    from nextbest.io import atomic_write_parquet, write_json
    from nextbest.monitoring.charts import write_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"figures": write_json(out_dir / "uplift.json", result)}
    write_atomic(out_dir / "uplift.html", uplift_file_html(result))
    files["report"] = out_dir / "uplift.html"
    for arm, c in result["comparisons"].items():
        if "models" in c:
            curve = pd.DataFrame({"share": c["models"]["t_learner"]["curve"]["share"],
                                  **{f"qini_{k}": v["curve"]["qini"] for k, v in c["models"].items()},
                                  **{f"uplift_{k}": v["curve"]["uplift"] for k, v in c["models"].items()}})
            path = out_dir / f"qini_{_safe(arm)}.csv"
            write_atomic(path, curve.to_csv(index=False))
            files[f"Qini curve {arm}"] = path
    if len(scores.columns) > 1:
        files["scores"] = atomic_write_parquet(scores, out_dir / "scores.parquet")
    return files


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:60] or "arm"
