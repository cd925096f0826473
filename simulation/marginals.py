"""Marginals of a bank's holdings, and the public Santander figures to hold them against.

The synthetic bank is calibrated to look like the public Santander product-recommendation data
(Kaggle, 2016: `train_ver2.csv`, about 950,000 customers, 24 products, monthly snapshots from
January 2015 to May 2016). `marginals` computes the same few numbers from any canonical
`holdings` table (ours or a real bank's) and `markdown_table` prints them beside Santander's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nextbest.constants import CUSTOMER_ID, PRODUCT_ID, SNAPSHOT_DATE

# Santander reference figures. The product shares are APPROXIMATE: the share of all rows
# (customer-months) of train_ver2.csv with the product flag set, as widely reported in public
# analyses of the file; the denominator there includes customers who hold nothing that month,
# ours (`marginals`) counts clients holding at least one product, so our shares read a little
# higher for the same bank. `ind_cno_fin_ult1` (payroll account, ~8%) is from the same public
# analyses of the file.
SANTANDER: dict = {
    "source": "Santander product recommendation (Kaggle 2016), train_ver2.csv, 24 products, 2015-01..2016-05",
    "product_share": {  # Santander column: (label, approximate share)
        "ind_cco_fin_ult1": ("current account", 0.656),
        "ind_ctop_fin_ult1": ("particular account", 0.129),
        "ind_recibo_ult1": ("direct debit", 0.128),
        "ind_ecue_fin_ult1": ("e-account", 0.083),
        "ind_cno_fin_ult1": ("payroll account", 0.081),
        "ind_nom_pens_ult1": ("pension direct deposit", 0.060),
        "ind_nomina_ult1": ("payroll direct deposit", 0.055),
        "ind_reca_fin_ult1": ("taxes", 0.052),
        "ind_tjcr_fin_ult1": ("credit card", 0.044),
        "ind_dela_fin_ult1": ("long-term deposit", 0.043),
    },
    # "Most customers hold 1 or 2 products": a lower bound, not a measured share.
    "one_or_two_share_min": 0.5,
    "monthly_add_rate": 0.035,  # share of customers who add a product in a given month
}

# Our product -> the Santander product it stands for (only the close equivalents).
SANTANDER_EQUIVALENT: dict[str, str] = {
    "current_account": "ind_cco_fin_ult1",
    "direct_debit": "ind_recibo_ult1",
    "e_account": "ind_ecue_fin_ult1",
    "payroll_account": "ind_cno_fin_ult1",
    "salary_project": "ind_nomina_ult1",
    "credit_card": "ind_tjcr_fin_ult1",
    "term_deposit": "ind_dela_fin_ult1",
}


def marginals(holdings: pd.DataFrame, *, customer_col: str = CUSTOMER_ID, date_col: str = SNAPSHOT_DATE,
              product_col: str = PRODUCT_ID, products: list[str] | None = None) -> dict:
    """The calibration marginals of a holdings table (one row per product held per snapshot).

    A client at a snapshot is a customer with at least one row there.

    Args:
        holdings: canonical holdings rows; string or categorical id columns.
        customer_col, date_col, product_col: its column names.
        products: every product id, so that products nobody holds show a share of 0.

    Returns:
        `snapshots` (count), `clients` (at the last snapshot), `product_share` (share of those
        clients holding each product, highest first), `products_per_client` (share of clients
        holding 1, 2, ... products at the last snapshot), `one_or_two_share`, and the means over
        consecutive snapshot pairs of `monthly_add_rate` (share of clients who hold a product at
        the next snapshot that they did not hold at this one) and `monthly_churn_rate` (share of
        clients who hold nothing at the next snapshot). Rates are NaN with a single snapshot.
    """
    if holdings.empty:
        raise ValueError("marginals: the holdings table is empty")
    cust, _ = pd.factorize(holdings[customer_col])
    prod, prod_names = pd.factorize(holdings[product_col])
    dates = pd.to_datetime(holdings[date_col]).to_numpy()
    snaps, snap = np.unique(dates, return_inverse=True)
    n_prod = len(prod_names)
    key = cust.astype(np.int64) * n_prod + prod  # one int per (customer, product)

    last = snap == len(snaps) - 1
    clients = np.unique(cust[last])
    counts = np.bincount(prod[last], minlength=n_prod) / len(clients)
    share = {str(p): float(c) for p, c in zip(prod_names, counts)}
    for p in products or ():
        share.setdefault(p, 0.0)
    per_client = np.bincount(np.bincount(cust[last])[clients])  # index: products held
    dist = {int(k): float(v / len(clients)) for k, v in enumerate(per_client) if k > 0 and v > 0}

    add, churn = [], []
    order = np.argsort(snap, kind="stable")
    bounds = np.searchsorted(snap[order], np.arange(len(snaps) + 1))
    parts = [order[bounds[i]:bounds[i + 1]] for i in range(len(snaps))]
    for before, after in zip(parts[:-1], parts[1:]):
        was_client = np.unique(cust[before])
        new = after[~np.isin(key[after], key[before])]
        adders = np.intersect1d(cust[new], was_client)
        stayed = np.intersect1d(cust[after], was_client)
        add.append(len(adders) / len(was_client))
        churn.append(1 - len(stayed) / len(was_client))
    return {
        "snapshots": len(snaps),
        "clients": len(clients),
        "product_share": dict(sorted(share.items(), key=lambda kv: -kv[1])),
        "products_per_client": dist,
        "one_or_two_share": dist.get(1, 0.0) + dist.get(2, 0.0),
        "monthly_add_rate": float(np.mean(add)) if add else float("nan"),
        "monthly_churn_rate": float(np.mean(churn)) if churn else float("nan"),
    }


def _pct(x: float | None) -> str:
    return "" if x is None or x != x else f"{100 * x:.1f}%"


def markdown_table(ours: dict, reference: dict = SANTANDER,
                   equivalent: dict[str, str] = SANTANDER_EQUIVALENT) -> str:
    """Our marginals (from `marginals`) beside the reference's, as a markdown table."""
    ref_share = reference["product_share"]
    lines = ["| marginal | ours | Santander (approx.) |", "|---|---|---|"]
    lines.append(f"| clients holding 1 or 2 products | {_pct(ours['one_or_two_share'])} "
                 f"| most (> {_pct(reference['one_or_two_share_min'])}) |")
    lines.append(f"| monthly add rate (clients adding >= 1 product) | {_pct(ours['monthly_add_rate'])} "
                 f"| ~{_pct(reference['monthly_add_rate'])} |")
    lines.append(f"| monthly churn rate (clients holding nothing next month) | {_pct(ours['monthly_churn_rate'])} | |")
    for k, v in sorted(ours["products_per_client"].items()):
        lines.append(f"| clients holding {k} product{'s' if k > 1 else ''} | {_pct(v)} | |")
    lines.append("| **share of clients holding (last snapshot)** | | |")
    matched = set()
    for product, share in ours["product_share"].items():
        code = equivalent.get(product)
        ref = ""
        if code in ref_share:
            label, value = ref_share[code]
            ref = f"{_pct(value)} ({label}, `{code}`)"
            matched.add(code)
        lines.append(f"| `{product}` | {_pct(share)} | {ref} |")
    for code, (label, value) in ref_share.items():
        if code not in matched:
            lines.append(f"| (no one-to-one equivalent) | | {_pct(value)} ({label}, `{code}`) |")
    return "\n".join(lines)
