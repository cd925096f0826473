"""Writes a simulated bank into a work directory (`raw/` and `truth/`), streaming month by month."""

from __future__ import annotations

from collections.abc import Callable

from nextbest.config import Catalogue
from nextbest.io import StreamingParquetWriter
from nextbest.settings import Paths
from simulation.bank import BankSpec, simulate


def generate_to(paths: Paths, catalogue: Catalogue, spec: BankSpec,
                on_month: Callable[[int], None] | None = None) -> dict[str, int]:
    """Simulates and writes every table; files appear only once all months succeeded.

    Returns:
        Rows written per table (`raw/holdings`, `truth/acquisition`, ...).
    """
    writer = StreamingParquetWriter(paths.root)
    rows: dict[str, int] = {}
    try:
        for batch in simulate(catalogue, spec):
            for name, table in batch.tables.items():
                writer.write(name, table)
                rows[name] = rows.get(name, 0) + table.num_rows
            if on_month:
                on_month(batch.month)
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    return rows
