"""Drift the simulated bank on purpose, so that monitoring can be shown to catch it.

Three kinds, each what a real bank's data would show after a real event, starting at one
snapshot month (`start`, a month index; earlier months are exactly the undrifted bank's, since
no random number is drawn differently before it):

- `income_shift`: salaries and other incomes fall by 25% (a recession, a large employer's
  layoffs). The KYC `income` attribute is a current-state field that the feature tables read
  as of today for every month, so it cannot drift between snapshots; the money flows derived
  from incomes do: inflows, salaries, spending by category, transfers out (30-day windows at
  once, 90/180-day windows gradually).
- `new_product`: the catalogue is the business's config, so no product id is invented. The
  bank relaunches the cash-back card with a new rewards programme: in the launch month a fifth
  of eligible clients open it and its product page is viewed five times as often. This shows in
  `held_cashback_card`, `months_since_acq_cashback_card`, `views_cashback_card_30d` and the
  product counts, exactly as a launch campaign shows in a real bank's holdings.
- `behaviour_change`: digital migration and a new spend mix (a branch closure programme, a new
  app): app logins x1.6, web logins x0.5, calls to the contact centre x0.5; groceries spend x0.7,
  shopping x1.6 and travel x1.4.

`nextbest.simulation.bank` calls the three hooks below; with no drift it calls none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DRIFT_KINDS = ("income_shift", "new_product", "behaviour_change")


@dataclass(frozen=True)
class DriftSpec:
    """One injected drift.

    Attributes:
        kind: one of `DRIFT_KINDS`.
        start: month index (0 = first snapshot) from which the drift shows in the snapshots.
    """

    kind: str
    start: int
    income_factor: float = 0.75
    product: str = "cashback_card"
    launch_share: float = 0.20
    launch_views: float = 5.0
    activity: dict[str, float] = field(default_factory=lambda: {"login_app": 1.6, "login_web": 0.5, "call": 0.5})
    spend: dict[str, float] = field(default_factory=lambda: {"groceries": 0.7, "shopping": 1.6, "travel": 1.4})

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise ValueError(f"drift must be one of {', '.join(DRIFT_KINDS)}, got {self.kind!r}")
        if self.start < 1:
            raise ValueError(f"drift start must be month index 1 or later (month 0 has no history), got {self.start}")

    def __hash__(self) -> int:  # dict fields: hash by identity of the kind and start only
        return hash((self.kind, self.start))

    # -- hooks called by simulation.bank._Bank.step ------------------------------------------

    def start_month(self, bank, t: int) -> None:
        """Before month t is simulated: a once-only change of state (the income shift)."""
        if self.kind == "income_shift" and t == self.start:
            bank.income = bank.income * self.income_factor

    def rates(self, t: int, spend_categories: tuple[str, ...]) -> tuple[dict[str, float], np.ndarray]:
        """Multipliers for this month's interaction rates (by event kind) and spend categories."""
        spend = np.ones(len(spend_categories))
        if self.kind != "behaviour_change" or t < self.start:
            return {}, spend
        for i, cat in enumerate(spend_categories):
            spend[i] = self.spend.get(cat, 1.0)
        return dict(self.activity), spend

    def views(self, bank, t: int, view_rate: np.ndarray) -> None:
        """Page-view rates (customers x products), in place: the launched product's page in launch month."""
        if self.kind == "new_product" and t == self.start and self.product in bank.pidx:
            view_rate[:, bank.pidx[self.product]] *= self.launch_views

    def acquisitions(self, bank, t: int, acquire: np.ndarray, eligible: np.ndarray, is_client: np.ndarray) -> None:
        """Transition from month t to t+1, in place: the launch shows in the holdings of snapshot `start`."""
        if self.kind != "new_product" or t + 1 != self.start or self.product not in bank.pidx:
            return
        j = bank.pidx[self.product]
        takers = is_client & eligible[:, j] & ~bank.held[:, j] & (bank.rng.random(bank.n) < self.launch_share)
        acquire[:, j] |= takers
