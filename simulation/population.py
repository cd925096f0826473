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
from nextbest.simulation.params import CATEGORY_BEHAVIOUR, NEEDS, PRODUCT_BEHAVIOUR

if TYPE_CHECKING:
    from nextbest.simulation.bank import BankSpec

REGIONS = ("north", "south", "east", "west", "capital", "islands")


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_(z: np.ndarray) -> np.ndarray:
    """Sigmoid in place (no temporaries: the (customers, products) arrays are the big ones)."""
    np.negative(z, out=z)
    np.exp(z, out=z)
    z += 1
    return np.reciprocal(z, out=z)


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

        # Demographics.
        age0 = np.clip(rng.normal(44, 15, n), 18, 88)
        self.birth_month = rng.integers(1, 13, n)
        start = self.dates[0]
        self.birth_year = (start.year - age0).astype(int)
        self.gender = rng.choice(np.array(["F", "M"]), n)
        self.region = rng.choice(np.array(REGIONS), n, p=[0.18, 0.2, 0.15, 0.17, 0.22, 0.08])
        life_curve = -((age0 - 50) / 25) ** 2
        self.income = np.exp(rng.normal(10.2 + 0.35 * life_curve, 0.5, n))
        income_z = (np.log(self.income) - 10.1) / 0.55
        self.digital = np.clip(sigmoid(1.8 - 0.07 * (age0 - 40) + rng.normal(0, 0.8, n)), 0.02, 0.98)

        # Latent needs in [0, 1], driven by demographics plus individual noise.
        needs = np.empty((n, len(NEEDS)), dtype=np.float32)
        needs[:, 0] = sigmoid(0.9 * income_z + rng.normal(0, 1, n))  # saving
        needs[:, 1] = sigmoid(2.0 * (age0 < 66) - 1.0 + 0.5 * income_z + rng.normal(0, 1, n))  # income
        needs[:, 2] = sigmoid((age0 - 52) / 9 + 0.5 * income_z + rng.normal(0, 1, n))  # preservation
        needs[:, 3] = sigmoid(-(age0 - 36) / 11 + 0.3 * income_z + rng.normal(0, 1, n))  # credit
        needs[:, 4] = rng.beta(5, 2, n)  # everyday
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
        self.weights = weights
        # Unobserved taste per customer and product: the part no feature can fully recover.
        self.taste = rng.standard_normal((n, n_prod), dtype=np.float32)
        self.taste *= 0.5

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
        z0 = needs @ weights
        z0 *= 1.2
        z0 += init_logit + self.taste
        z0 -= needs.mean(1, keepdims=True) @ weights.sum(0, keepdims=True) * 0.6
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
        self.complaints_hist = [np.zeros(n)] * 3
        self.opt_out = rng.random(n) < 0.07
        self.consent = {c: rng.random(n) < p for c, p in
                        (("email", 0.7), ("push", 0.55), ("sms", 0.5), ("call", 0.35))}
        self.offer_seq = 0
        self.txn_seq = 0

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
