"""Uplift models: how much a treatment (an offer, a contact) changes each customer's outcome, learned
from randomised data (a control group, exploration) or from logged propensities; and the Qini and
uplift curves that measure how well a score ranks customers by that change.

Learners, each cross-fitted (K folds: a row's uplift comes from models that never saw it, so curves
drawn on those scores are honest):

- T-learner: one outcome model per arm; uplift = mu_arm(x) - mu_control(x).
- X-learner (Kunzel et al. 2019): each arm's imputed effects, treated Y - mu_c(x) and control
  mu_t(x) - Y, regressed on x within the arm, blended by the arms' propensities. It borrows the
  other arm's outcome model for each row, so the effect is fitted as a function in its own right
  rather than as the difference of two noisy fits; on a randomised campaign it ranks best.
- DR-learner (Kennedy 2023): per fold, outcome models mu_a(x) and propensities e_a(x) from the
  other folds give each row the doubly robust pseudo-outcome
      phi = mu_t - mu_c + [T] (Y - mu_t) / e_t - [C] (Y - mu_c) / e_c,
  whose conditional mean is the uplift whenever either the outcome models or the propensities are
  right; a second, cross-fitted regression of phi on x is the uplift. In a randomised test the
  propensities are known (the arm shares, or the logged ones), so the outcome models' errors are
  corrected rather than inherited, which is where it beats the T-learner.

The base learner is LightGBM (regression, or binary for a 0/1 outcome), small and regularised.

Curves, on rows sorted by decreasing score, after the top k rows (n_t(k), n_c(k) treated and control
rows, Y_t(k), Y_c(k) their summed outcomes):
    Qini(k)   = Y_t(k) - Y_c(k) n_t(k) / n_c(k)                        (incremental outcomes)
    uplift(k) = (Y_t(k) / n_t(k) - Y_c(k) / n_c(k)) (n_t(k) + n_c(k))
Both divided by the number of rows N, on x = k / N in [0, 1]. The Qini coefficient is the area
between the Qini curve and the straight line of random targeting, in incremental outcomes per
customer (0 for a score that ranks no better than chance, negative for one that ranks backwards);
AUUC is the area under the uplift curve. They compare scores on the same rows only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nextbest.artifact import Preprocessor
from nextbest.constants import DEFAULT_SEED
from nextbest.trees import tree_matrix

FOLDS = 3
MIN_PROPENSITY = 0.01  # estimated propensities are clipped here, so no row weighs over 100
CURVE_POINTS = 101
LEARNERS = ("t_learner", "x_learner", "dr_learner")


@dataclass(frozen=True)
class Design:
    """The feature matrix of a table: numeric columns as they are, text columns as codes.

    Attributes:
        x: (n, p) float32, LightGBM's input (NaN: missing).
        names: the p columns used; categorical: indices of the coded ones.
        dropped: column -> why it was left out (an identifier, a date, a constant).
    """

    x: np.ndarray
    names: list[str]
    categorical: list[int]
    dropped: dict[str, str]
    preprocessor: Preprocessor  # turns new rows into the same matrix (`UpliftModel.score`)


def design(frame: pd.DataFrame, columns: list[str], max_levels: int = 200) -> Design:
    """Features from `columns` of `frame`. A text column with more than `max_levels` values, or
    one value per row, is an identifier and is left out; so are dates and constant columns."""
    numeric, categorical, dropped = [], [], {}
    for c in columns:
        s = frame[c]
        if pd.api.types.is_datetime64_any_dtype(s):
            dropped[c] = "a date"
        elif s.nunique(dropna=True) <= 1:
            dropped[c] = "constant"
        elif pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
            numeric.append(c)
        else:
            levels = s.astype(str).nunique()
            if levels > max_levels or levels >= 0.5 * len(s):
                dropped[c] = f"an identifier ({levels:,} distinct values)"
            else:
                categorical.append(c)
    pre = Preprocessor(numeric, categorical,
                       vocabs={c: sorted(frame[c].astype(str).unique().tolist()) for c in categorical})
    view = frame[numeric + categorical].copy()
    for c in numeric:
        view[c] = pd.to_numeric(view[c], errors="coerce").astype("float64")
    x = tree_matrix(pre, view) if len(pre.numeric) + len(pre.categorical) else np.zeros((len(frame), 0), np.float32)
    return Design(x, numeric + categorical, list(range(len(numeric), len(numeric) + len(categorical))), dropped,
                  pre)


def folds(n: int, k: int = FOLDS, seed: int = DEFAULT_SEED) -> np.ndarray:
    """A fold index per row, (n,), balanced and random (seeded)."""
    return np.random.default_rng(seed).permutation(np.arange(n) % k)


def _params(binary: bool, seed: int, final: bool = False, rows: int = 10**9) -> dict:
    # Leaves of at least a tenth of the rows on small data (a few hundred customers), so a tree can
    # still split; the caps rule from a few thousand rows on.
    leaf = min(200 if final else 50, max(20, rows // 10))
    return {"objective": "binary" if binary else "regression", "learning_rate": 0.05,
            "num_leaves": 7 if final else 15, "min_data_in_leaf": leaf, "lambda_l2": 10.0,
            "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "verbose": -1, "seed": seed,
            "num_threads": 2, "deterministic": True, "force_row_wise": True}


def fit_booster(x: np.ndarray, y: np.ndarray, rows: np.ndarray, categorical: list[int], binary: bool, seed: int,
                final: bool = False, rounds: int = 150):
    """A LightGBM fitted on `rows`, or the training mean (a float) where too few rows vary."""
    import lightgbm as lgb

    yr = y[rows]
    if x.shape[1] == 0 or len(rows) < 100 or np.ptp(yr) == 0 or (binary and min(yr.sum(), len(yr) - yr.sum()) < 5):
        return float(yr.mean()) if len(yr) else 0.0
    data = lgb.Dataset(x[rows], yr, categorical_feature=categorical, free_raw_data=True)
    return lgb.train(_params(binary, seed, final, len(rows)), data, num_boost_round=rounds)


def _fit_predict(x: np.ndarray, y: np.ndarray, rows: np.ndarray, out_rows: np.ndarray, categorical: list[int],
                 binary: bool, seed: int, final: bool = False, rounds: int = 150) -> np.ndarray:
    """A LightGBM fitted on `rows`, predicting `out_rows` (the training mean where too few rows vary)."""
    model = fit_booster(x, y, rows, categorical, binary, seed, final, rounds)
    return np.full(len(out_rows), model) if isinstance(model, float) else model.predict(x[out_rows])


def outcome_models(x: np.ndarray, y: np.ndarray, arm: np.ndarray, arms: int, fold: np.ndarray,
                   categorical: list[int], binary: bool, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Cross-fitted mu_a(x) for every row and arm, (n, arms): fitted on the arm's rows of the other folds."""
    mu = np.zeros((len(y), arms))
    for f in np.unique(fold):
        held = np.flatnonzero(fold == f)
        for a in range(arms):
            rows = np.flatnonzero((fold != f) & (arm == a))
            mu[held, a] = _fit_predict(x, y, rows, held, categorical, binary, seed + a)
    return mu


def t_learner(mu: np.ndarray, treated: int, control: int = 0) -> np.ndarray:
    """T-learner uplift of arm `treated` over `control`, from `outcome_models`' predictions."""
    return mu[:, treated] - mu[:, control]


def x_learner(x: np.ndarray, y: np.ndarray, arm: np.ndarray, mu: np.ndarray, propensity: np.ndarray,
              fold: np.ndarray, categorical: list[int], treated: int, control: int = 0,
              seed: int = DEFAULT_SEED) -> np.ndarray:
    """X-learner uplift of arm `treated` over `control`, (n,), cross-fitted on `fold`: each arm's
    imputed effects (treated: Y - mu_c(x); control: mu_t(x) - Y) regressed on x within that arm, the
    two blended by the arms' propensities, g tau_c + (1 - g) tau_t with g = e_t / (e_t + e_c)."""
    imputed_t, imputed_c = y - mu[:, control], mu[:, treated] - y
    tau_t, tau_c = np.zeros(len(y)), np.zeros(len(y))
    for f in np.unique(fold):
        held = np.flatnonzero(fold == f)
        on_t = np.flatnonzero((fold != f) & (arm == treated))
        on_c = np.flatnonzero((fold != f) & (arm == control))
        tau_t[held] = _fit_predict(x, imputed_t, on_t, held, categorical, binary=False, seed=seed, final=True)
        tau_c[held] = _fit_predict(x, imputed_c, on_c, held, categorical, binary=False, seed=seed + 1, final=True)
    e_t, e_c = propensity[:, treated], propensity[:, control]
    g = e_t / np.maximum(e_t + e_c, 1e-12)
    return g * tau_c + (1 - g) * tau_t


def dr_learner(x: np.ndarray, y: np.ndarray, arm: np.ndarray, mu: np.ndarray, propensity: np.ndarray,
               fold: np.ndarray, categorical: list[int], treated: int, control: int = 0,
               seed: int = DEFAULT_SEED) -> np.ndarray:
    """DR-learner uplift of arm `treated` over `control`, (n,), cross-fitted on `fold`.

    Args:
        mu: (n, arms) cross-fitted outcome predictions (`outcome_models`).
        propensity: (n, arms) each row's probability of each arm (known, or cross-fitted estimates).
    """
    e_t = np.clip(propensity[:, treated], MIN_PROPENSITY, 1.0)
    e_c = np.clip(propensity[:, control], MIN_PROPENSITY, 1.0)
    phi = (mu[:, treated] - mu[:, control] + (arm == treated) * (y - mu[:, treated]) / e_t
           - (arm == control) * (y - mu[:, control]) / e_c)
    out = np.zeros(len(y))
    pair = (arm == treated) | (arm == control)
    for f in np.unique(fold):
        held = np.flatnonzero(fold == f)
        rows = np.flatnonzero((fold != f) & pair)
        out[held] = _fit_predict(x, phi, rows, held, categorical, binary=False, seed=seed, final=True)
    return out


def arm_shares(arm: np.ndarray, arms: int, fold: np.ndarray) -> np.ndarray:
    """Each row's propensity of each arm, (n, arms), as the arm's share in the other folds: the
    randomised assignment's probabilities, estimated without the row itself."""
    out = np.zeros((len(arm), arms))
    for f in np.unique(fold):
        other = arm[fold != f]
        out[fold == f] = np.bincount(other, minlength=arms) / max(len(other), 1)
    return out


@dataclass
class UpliftModel:
    """A fitted uplift learner that scores new customers: uplift(x) = sum of weight_i f_i(x).

    T-learner: mu_t(x) - mu_c(x) (the two outcome models). X-learner: g tau_c(x) + (1 - g) tau_t(x)
    (the two effect models, g the treated share). Stored as `model.json` (learner, inputs, their
    vocabularies, the terms) and each model in LightGBM's own text format (or a constant): it loads
    without unpickling anything.
    """

    preprocessor: Preprocessor
    terms: list[tuple[str, object, float]]  # (name, lightgbm.Booster or float, weight)
    info: dict

    @classmethod
    def fit(cls, learner: str, d: Design, y: np.ndarray, treated: np.ndarray, mu: np.ndarray,
            seed: int = DEFAULT_SEED, info: dict | None = None) -> "UpliftModel":
        """`learner` ("t_learner" or "x_learner") refitted on every row of the design `d`. The
        X-learner's imputed effects come from the cross-fitted outcome predictions `mu` (n, 2:
        control, treatment), so no row's effect comes from a model that saw it.

        Args:
            treated: bool per row (the others are control); y: 0/1 outcome per row.
        """
        t = np.asarray(treated, dtype=bool)
        on_t, on_c = np.flatnonzero(t), np.flatnonzero(~t)
        if learner == "t_learner":
            terms = [("mu_t", fit_booster(d.x, y, on_t, d.categorical, binary=True, seed=seed + 1), 1.0),
                     ("mu_c", fit_booster(d.x, y, on_c, d.categorical, binary=True, seed=seed), -1.0)]
        elif learner == "x_learner":
            g = float(t.mean())
            terms = [("tau_t", fit_booster(d.x, y - mu[:, 0], on_t, d.categorical, binary=False, seed=seed,
                                           final=True), 1.0 - g),
                     ("tau_c", fit_booster(d.x, mu[:, 1] - y, on_c, d.categorical, binary=False, seed=seed + 1,
                                           final=True), g)]
        else:
            raise ValueError(f"learner {learner!r}: expected t_learner or x_learner")
        return cls(d.preprocessor, terms, {"learner": learner, **(info or {})})

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Predicted uplift per row, (n,); a missing input column reads as missing values."""
        view = frame.reindex(columns=self.preprocessor.numeric + self.preprocessor.categorical).copy()
        for c in self.preprocessor.numeric:
            view[c] = pd.to_numeric(view[c], errors="coerce").astype("float64")
        x = tree_matrix(self.preprocessor, view)

        def predict(model) -> np.ndarray:
            return np.full(len(frame), float(model)) if isinstance(model, float) else model.predict(x)

        return np.sum([weight * predict(model) for _, model, weight in self.terms], axis=0)

    def save(self, directory) -> None:
        import json
        from pathlib import Path

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        terms = []
        for name, model, weight in self.terms:
            if isinstance(model, float):
                terms.append({"name": name, "weight": weight, "constant": model})
            else:
                (out / f"{name}.txt").write_text(model.model_to_string())
                terms.append({"name": name, "weight": weight, "file": f"{name}.txt"})
        (out / "model.json").write_text(json.dumps({
            "numeric": self.preprocessor.numeric, "categorical": self.preprocessor.categorical,
            "vocabs": self.preprocessor.vocabs, "terms": terms, "info": self.info}, indent=1))

    @classmethod
    def load(cls, directory) -> "UpliftModel":
        import json
        from pathlib import Path

        import lightgbm as lgb

        src = Path(directory)
        meta = json.loads((src / "model.json").read_text())
        terms = [(t["name"], float(t["constant"]) if "constant" in t else
                  lgb.Booster(model_str=(src / t["file"]).read_text()), float(t["weight"])) for t in meta["terms"]]
        pre = Preprocessor(meta["numeric"], meta["categorical"], vocabs=meta["vocabs"])
        return cls(pre, terms, meta["info"])


# ------------------------------------------------------------------------------------------------ curves
@dataclass(frozen=True)
class Curves:
    """Qini and uplift curves of one score: x = share of rows targeted, y per row of the whole."""

    share: np.ndarray
    qini: np.ndarray
    uplift: np.ndarray
    qini_coefficient: float
    auuc: float

    def as_dict(self) -> dict:
        return {"qini_coefficient": self.qini_coefficient, "auuc": self.auuc,
                "curve": {"share": self.share.round(4).tolist(), "qini": self.qini.round(6).tolist(),
                          "uplift": self.uplift.round(6).tolist()}}


def curves(score: np.ndarray, y: np.ndarray, treated: np.ndarray, points: int = CURVE_POINTS) -> Curves:
    """Qini and uplift curves of `score` on rows with outcome `y` and `treated` (bool; the others are
    control), at `points` evenly spaced shares; areas by the trapezoid rule on every row.

    Ties in the score are broken at random (seeded), so a constant score draws the random line.
    """
    n = len(y)
    if n == 0:
        zero = np.zeros(points)
        return Curves(np.linspace(0, 1, points), zero, zero, 0.0, 0.0)
    tie = np.random.default_rng(DEFAULT_SEED).random(n)
    order = np.lexsort((tie, -np.asarray(score, dtype=float)))
    t = np.asarray(treated, dtype=bool)[order]
    yy = np.asarray(y, dtype=float)[order]
    n_t, n_c = np.cumsum(t), np.cumsum(~t)
    y_t, y_c = np.cumsum(yy * t), np.cumsum(yy * ~t)
    with np.errstate(divide="ignore", invalid="ignore"):
        qini = np.where(n_c > 0, y_t - y_c * n_t / np.maximum(n_c, 1), y_t)
        lift = np.where((n_t > 0) & (n_c > 0), (y_t / np.maximum(n_t, 1) - y_c / np.maximum(n_c, 1)) * (n_t + n_c),
                        0.0)
    x = np.arange(0, n + 1) / n
    q = np.concatenate([[0.0], qini]) / n
    u = np.concatenate([[0.0], lift]) / n
    random_area = q[-1] / 2
    coefficient = float(np.trapezoid(q, x) - random_area)
    auuc = float(np.trapezoid(u, x))
    at = np.linspace(0, 1, points)
    return Curves(at, np.interp(at, x, q), np.interp(at, x, u), coefficient, auuc)
