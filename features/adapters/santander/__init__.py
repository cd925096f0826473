"""Kaggle "Santander Product Recommendation" (`train_ver2.csv`) -> the canonical raw tables.

The file has one row per customer (`ncodpers`) and month (`fecha_dato`, e.g. 2015-01-28) with
the customer's profile and 24 product flags: 13.6M rows, 2.3 GB, 2015-01 to 2016-05. It is
streamed in chunks, so memory is set by the chunk size plus a few values per customer (never by
the number of rows): ~770 MB peak for a synthetic file of the real size (13.2M rows, 911,000
customers) at the default chunk size (benchmarks/bench_santander_ingest.py).

What is written (each table validated with `nextbest.schema.validate`):

- `holdings.parquet`: one row per customer, month-end snapshot and product held (flag == 1),
  the 24 flags mapped onto our catalogue by `configs/adapters/santander_products.yaml`; flags
  that map to the same product give one row. `balance` is missing: the data set has none.
- `customers.parquet`: one row per customer with the latest value seen of each attribute (the
  latest non-missing one: `renta` is empty in some months only):
  `birth_date` from `age` (midpoint estimate, see `approx_birth_date`), `gender` from `sexo`
  through the mapping file (codes kept as recorded by default: their meaning is not documented),
  `region` from `nomprov`, `income` from `renta`, `join_date` from `fecha_alta`, `status` from
  the latest snapshot (see `derive_status`). The data set records no consent, so
  `marketing_opt_out` is False and every `consent_*` is False: the privacy-safe default, which
  leaves only our own channels (app, web, branch) open until a bank supplies its consents.
- `transactions`, `interactions`, `offers`: empty tables with the right columns; the data set has
  none, and an empty table replaces any left over from an earlier run.

Rows are rejected, and counted under the first reason that applies, when `ncodpers` is missing
or not an integer, `fecha_dato` is not a date, a product flag is neither 0, 1 nor missing, no
product flag is given at all (a truncated line reads that way: pandas pads short lines with empty
fields), or the same customer and month appeared earlier in the file (the first row wins). A
line with too many fields stops the ingest with its line number: its columns cannot be trusted.
A missing flag (the real file has some for `ind_nomina_ult1`, `ind_nom_pens_ult1`) is read as
"not held": holdings only record what is known to be held. Unusable profile values (age not a number or outside
[0, 120], unparseable `renta` or `fecha_alta`, negative income) keep the row and become missing;
they are counted in `IngestReport.values_nulled`. Months missing for a customer are not filled
in: that customer held nothing known that month.

The package: `mapping` (the file's columns, the flag -> product mapping), `parse` (one chunk's
dirty strings into typed arrays and reject reasons), `customers` (the per-customer state across
chunks and the customers table) and `ingest` (the I/O edge, `ingest_santander`).
"""

from nextbest.features.adapters.santander.customers import UNKNOWN_GENDER, derive_status
from nextbest.features.adapters.santander.ingest import DEFAULT_CHUNKSIZE, ingest_santander
from nextbest.features.adapters.santander.mapping import (DEFAULT_MAPPING, FLAGS, PROFILE_COLUMNS, REQUIRED_COLUMNS,
                                                          SantanderMapping, load_santander_mapping)
from nextbest.features.adapters.santander.parse import (FLAG_INVALID, FLAG_MISSING, ID_INVALID, ID_MISSING, MAX_AGE,
                                                        REJECT_REASONS, ParsedChunk, clean_text, month_end,
                                                        month_number, parse_chunk, parse_customer_number, parse_date,
                                                        parse_flag, parse_number)

__all__ = [
    "DEFAULT_CHUNKSIZE", "DEFAULT_MAPPING", "FLAGS", "FLAG_INVALID", "FLAG_MISSING", "ID_INVALID", "ID_MISSING",
    "MAX_AGE", "PROFILE_COLUMNS", "REJECT_REASONS", "REQUIRED_COLUMNS", "UNKNOWN_GENDER", "ParsedChunk",
    "SantanderMapping", "clean_text", "derive_status", "ingest_santander", "load_santander_mapping", "month_end",
    "month_number", "parse_chunk", "parse_customer_number", "parse_date", "parse_flag", "parse_number",
]
