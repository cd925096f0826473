"""The simulated bank's customers as the window opens: demographics, latent needs, unobserved
taste, lifecycle, starting holdings, balances and consents, and what each may hold.

`Population` holds this state; `nextbest.simulation.bank` moves it month by month and
`nextbest.simulation.tables` writes it out. Customer x product state is float32 and updated in
place: at a million customers those arrays are the big ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from nextbest.config import Catalogue
from nextbest.simulation.columns import fixed_width_take, label_array, running_ids
from nextbest.simulation.params import (CATEGORY_BEHAVIOUR, NEEDS, PREFERRED_HOUR_MODES, PREFERRED_HOUR_SHARES,
                                        PRODUCT_BEHAVIOUR)

if TYPE_CHECKING:
    from nextbest.simulation.bank import BankSpec

REGIONS = ("north", "south", "east", "west", "capital", "islands")
# The reference bank, whose marginals are calibrated beside Santander's: needs loaded once, taste sd 0.5.
REFERENCE_TASTE_SD = 0.5
CALIBRATION_SEED, CALIBRATION_CUSTOMERS = 20_240_101, 40_000
# The key of the time-of-day stream (`Population.time_rng`), beside the bank's seed: the preferred
# hours and the logins' times of day are drawn from it, so switching the time preference on or off
# leaves every draw of the main stream where it was.
TIME_STREAM = 2_400


def sigmoid(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-z) overflowing to inf gives the right limit, 0
        return 1.0 / (1.0 + np.exp(-z))


def sigmoid_(z: np.ndarray) -> np.ndarray:
    """Sigmoid in place (no temporaries: the (customers, products) arrays are the big ones)."""
    np.negative(z, out=z)
    with np.errstate(over="ignore"):
        np.exp(z, out=z)
    z += 1
    return np.reciprocal(z, out=z)


def draw_people(rng: np.random.Generator, n: int, need_noise: float = 1.0) -> dict[str, np.ndarray]:
    """Demographics, digital affinity and latent needs of `n` customers, in the bank's draw order;
    `need_noise` is the sd of the individual part of the needs that demographics do not explain."""
    age = np.clip(rng.normal(44, 15, n), 18, 88)
    out = {"age": age, "birth_month": rng.integers(1, 13, n), "gender": rng.choice(np.array(["F", "M"]), n),
           "region": rng.choice(np.array(REGIONS), n, p=[0.18, 0.2, 0.15, 0.17, 0.22, 0.08])}
    life_curve = -((age - 50) / 25) ** 2
    income = np.exp(rng.normal(10.2 + 0.35 * life_curve, 0.5, n))
    income_z = (np.log(income) - 10.1) / 0.55
    out["income"] = income
    out["digital"] = np.clip(sigmoid(1.8 - 0.07 * (age - 40) + rng.normal(0, 0.8, n)), 0.02, 0.98)
    # Latent needs in [0, 1], driven by demographics plus individual noise.
    needs = np.empty((n, len(NEEDS)), dtype=np.float32)
    needs[:, 0] = sigmoid(0.9 * income_z + need_noise * rng.normal(0, 1, n))  # saving
    needs[:, 1] = sigmoid(2.0 * (age < 66) - 1.0 + 0.5 * income_z + need_noise * rng.normal(0, 1, n))  # income
    needs[:, 2] = sigmoid((age - 52) / 9 + 0.5 * income_z + need_noise * rng.normal(0, 1, n))  # preservation
    needs[:, 3] = sigmoid(-(age - 36) / 11 + 0.3 * income_z + need_noise * rng.normal(0, 1, n))  # credit
    needs[:, 4] = rng.beta(5, 2, n)  # everyday
    out["needs"] = needs
    return out


def draw_preferred_hours(rng: np.random.Generator, age: np.ndarray) -> np.ndarray:
    """Each customer's preferred contact hour in [0, 24), from the mixture of `PREFERRED_HOUR_MODES`
    with the shares of the customer's age band (`PREFERRED_HOUR_SHARES`), shape (n,)."""
    means, sds = np.array(list(PREFERRED_HOUR_MODES.values()), dtype=float).T
    bands = np.array(list(PREFERRED_HOUR_SHARES))
    shares = np.array(list(PREFERRED_HOUR_SHARES.values()), dtype=float)
    cumulative = np.cumsum(shares / shares.sum(1, keepdims=True), axis=1)[np.searchsorted(bands, age, side="right")]
    mode = np.minimum((rng.random(len(age))[:, None] >= cumulative).sum(1), len(means) - 1)
    return (means[mode] + sds[mode] * rng.standard_normal(len(age))) % 24


def initial_logit(needs: np.ndarray, weights: np.ndarray, init_logit: np.ndarray, taste: np.ndarray) -> np.ndarray:
    """Logit of holding each product as the window opens, (customers, products), float32."""
    z0 = needs @ weights
    z0 *= 1.2
    z0 += init_logit + taste
    z0 -= needs.mean(1, keepdims=True) @ weights.sum(0, keepdims=True) * 0.6
    return z0


def _matching_shift(reference: np.ndarray, logit: np.ndarray, reference_weight: np.ndarray | None = None,
                    weight: np.ndarray | None = None) -> np.ndarray:
    """Per column, the shift d with the weighted mean of sigmoid(logit + d) equal to that of
    sigmoid(reference); no weights: plain means. Bisection: the mean rises with d."""
    def mean(values: np.ndarray, w: np.ndarray | None) -> np.ndarray:
        return values.mean(0) if w is None else (values * w).sum(0) / w.sum(0)

    target = mean(sigmoid(reference), reference_weight)
    lo, hi = np.full(logit.shape[1], -30.0), np.full(logit.shape[1], 30.0)
    for _ in range(40):
        mid = (lo + hi) / 2
        low = mean(sigmoid(logit + mid), weight) < target
        lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
    return ((lo + hi) / 2).astype(np.float32)


def calibrate(base: np.ndarray, init_logit: np.ndarray, weights: np.ndarray, need_weight: float,
              taste_sd: float, need_noise: float) -> tuple[np.ndarray, np.ndarray]:
    """`base` and `init_logit` for needs loaded `need_weight` times and a taste of sd `taste_sd`,
    shifted per product so that the share holding each product as the window opens, and the mean
    monthly hazard of those who do not hold it, stay those of the reference bank (loadings x 1,
    taste sd 0.5), whose marginals are calibrated beside Santander's. Stronger needs put the
    products with those who need them from the start, so the customers still without a product
    need it less: the hazard is matched among them, not over everyone. The shifts are computed on
    a fixed reference population, so they do not depend on the bank's size or seed."""
    if need_weight == 1.0 and taste_sd == REFERENCE_TASTE_SD and need_noise == 1.0:
        return base, init_logit
    reference_needs = draw_people(np.random.default_rng(CALIBRATION_SEED), CALIBRATION_CUSTOMERS)["needs"]
    needs = draw_people(np.random.default_rng(CALIBRATION_SEED), CALIBRATION_CUSTOMERS, need_noise)["needs"]
    reference_needs, needs = reference_needs.astype(np.float64), needs.astype(np.float64)
    noise = np.random.default_rng(CALIBRATION_SEED + 1).standard_normal((CALIBRATION_CUSTOMERS, len(base)))
    weights = weights.astype(np.float64)
    strong = weights * need_weight
    reference_init = initial_logit(reference_needs, weights, init_logit, REFERENCE_TASTE_SD * noise)
    init_logit = init_logit + _matching_shift(reference_init,
                                              initial_logit(needs, strong, init_logit, taste_sd * noise))
    # (floored: a product nearly everyone holds, such as the current account, still gets a hazard)
    not_held_reference = np.maximum(1 - sigmoid(reference_init), 1e-3)
    not_held = np.maximum(1 - sigmoid(initial_logit(needs, strong, init_logit, taste_sd * noise)), 1e-3)
    shift = _matching_shift(base + reference_needs @ weights + REFERENCE_TASTE_SD * noise,
                            base + needs @ strong + taste_sd * noise,
                            not_held_reference, not_held)
    return (base + shift).astype(np.float32), init_logit.astype(np.float32)


class Population:
    """The customers' state and the catalogue's product structure, drawn from `spec.seed`; the
    order of the draws is part of the bank (same seed, same bank)."""

    def __init__(self, catalogue: Catalogue, spec: BankSpec):
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.products = catalogue.ids
        self.pidx = {p: i for i, p in enumerate(self.products)}
        self.product_labels = label_array(self.products)
        self.dates = spec.month_ends()
        self.month_start = self.dates.values.astype("datetime64[M]").astype("datetime64[ns]")
        n, n_prod, rng = spec.n_customers, len(self.products), self.rng
        self.n, self.P = n, n_prod

        # Customer ids C0000001.. all have the same width, so taking them for millions of rows is a
        # byte gather (`customer_ids`) rather than a string take.
        width = max(7, len(str(n)))
        self.ids = running_ids("C", 1, n, width)
        self._id_bytes = np.frombuffer(self.ids.buffers()[2], dtype=f"S{width + 1}", count=n)

        start = self.dates[0]
        people = draw_people(rng, n, spec.need_noise)
        age0, self.income, self.digital, needs = people["age"], people["income"], people["digital"], people["needs"]
        self.birth_month, self.gender, self.region = people["birth_month"], people["gender"], people["region"]
        self.birth_year = (start.year - age0).astype(int)
        self.needs = needs

        weights = np.zeros((len(NEEDS), n_prod), dtype=np.float32)
        self.base = np.zeros(n_prod, dtype=np.float32)
        init_logit = np.zeros(n_prod, dtype=np.float32)
        self.close_rate = np.zeros(n_prod, dtype=np.float32)
        category = catalogue.categories()
        for j, p in enumerate(self.products):
            # A product the simulator has no behaviour for behaves like its category's representative.
            base, init, loadings, close = PRODUCT_BEHAVIOUR.get(p) or CATEGORY_BEHAVIOUR[category[p]]
            self.base[j], init_logit[j], self.close_rate[j] = base, init, close
            for need, w in loadings.items():
                weights[NEEDS.index(need), j] = w
        # How strongly needs drive intent, against the taste nobody observes: the calibration
        # shifts every product's logits so that its mean hazards stay those of the reference bank.
        self.base, init_logit = calibrate(self.base, init_logit, weights, spec.need_weight, spec.taste_sd,
                                          spec.need_noise)
        weights *= spec.need_weight
        self.weights = weights
        # Unobserved taste per customer and product: the part no feature can fully recover.
        self.taste = rng.standard_normal((n, n_prod), dtype=np.float32)
        self.taste *= spec.taste_sd

        self.min_age = np.array([catalogue.by_id()[p].eligibility.min_age for p in self.products])
        self.max_age = np.array([catalogue.by_id()[p].eligibility.max_age for p in self.products])
        self.requires = [[self.pidx[r] for r in catalogue.by_id()[p].eligibility.requires] for p in self.products]
        self.categories = np.array([category[p] for p in self.products])
        self.loan_cols = np.flatnonzero(self.categories == "loan").tolist()  # the credit cooldown's products

        # Lifecycle at the start of the window.
        u = rng.random(n)
        self.is_prospect = u < spec.prospect_share
        former = (u >= spec.prospect_share) & (u < spec.prospect_share + spec.former_share)
        self.silent = rng.random(n) < spec.silent_share
        tenure_months = rng.integers(1, 240, n)
        self.join_month = np.where(self.is_prospect, 10_000, -tenure_months)  # month index of joining

        # Initial holdings: needs-driven, with the entry account first and prerequisites respected.
        z0 = initial_logit(needs, weights, init_logit, self.taste)
        held = rng.random((n, n_prod), dtype=np.float32) < sigmoid_(z0)
        del z0
        self.held = self.respect_requirements(held)
        none_held = ~self.held.any(1) & ~self.is_prospect & ~former
        self.held[none_held, self.pidx.get("current_account", 0)] = True
        self.held[self.is_prospect | former] = False
        self._age_mask(age0)
        self.ever_client = ~self.is_prospect

        self.boost = np.zeros((n, n_prod), dtype=np.float32)
        self.months_since_loan = np.full(n, 99)
        self.engagement = np.clip(rng.beta(6, 2, n), 0, 1)
        self.engagement[self.silent] = 0.0
        self.eng_hist = [self.engagement.copy()] * 3
        self.dissat = rng.beta(1, 12, n)
        self.balance = self.income / 12 * rng.gamma(2, 0.8, n) * (0.5 + needs[:, 0])
        self.deposit_balance = self.income * needs[:, 0] * rng.gamma(2, 0.5, n)
        if spec.need_traces:  # the preserving keep more of their wealth in deposits and funds
            self.deposit_balance *= 0.4 + 1.5 * needs[:, 2]
        self.complaints_hist = [np.zeros(n)] * 3
        self.opt_out = rng.random(n) < 0.07
        self.consent = {c: rng.random(n) < p for c, p in
                        (("email", 0.7), ("push", 0.55), ("sms", 0.5), ("call", 0.35))}
        self.offer_seq = 0
        self.txn_seq = 0
        # The time preference comes last and from its own stream (TIME_STREAM), so that every other
        # draw is the same with it or without it. NaN: no preferred hour.
        self.time_rng = np.random.default_rng([spec.seed, TIME_STREAM])
        self.preferred_hour = (draw_preferred_hours(self.time_rng, age0) if spec.time_preference
                               else np.full(n, np.nan))

    def cols(self, products: tuple[str, ...]) -> list[int]:
        """Column indices of those of `products` that are in the catalogue."""
        return [self.pidx[p] for p in products if p in self.pidx]

    def _product_mask(self, products: tuple[str, ...]) -> np.ndarray:
        mask = np.zeros(self.P, dtype=bool)
        mask[self.cols(products)] = True
        return mask

    def customer_ids(self, idx: np.ndarray) -> pa.Array | pa.ChunkedArray:
        """`self.ids.take(idx)`, as a gather of fixed-width byte strings (several times faster)."""
        return fixed_width_take(self._id_bytes, idx)

    def respect_requirements(self, held: np.ndarray) -> np.ndarray:
        """`held` (customers x products) in place, less the products whose prerequisites are not held."""
        for j, reqs in enumerate(self.requires):
            if reqs:
                held[:, j] &= held[:, reqs].any(1)
        return held

    def age_at(self, month: int) -> np.ndarray:
        date = self.dates[month]
        return date.year - self.birth_year - (date.month < self.birth_month)

    def _age_mask(self, age: np.ndarray) -> None:
        ok = (age[:, None] >= self.min_age) & (age[:, None] <= self.max_age)
        self.held &= ok | ~ok.any(0)  # never drop a product nobody could hold

    def eligible(self, month: int) -> np.ndarray:
        age = self.age_at(month)
        ok = (age[:, None] >= self.min_age) & (age[:, None] <= self.max_age)
        for j, reqs in enumerate(self.requires):
            if reqs:
                ok[:, j] &= self.held[:, reqs].any(1)
        return ok
