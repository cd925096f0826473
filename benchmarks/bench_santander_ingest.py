"""Throughput and peak memory of the Santander adapter on synthetic `train_ver2.csv` files.

    python benchmarks/bench_santander_ingest.py [--rows 1000000 4000000] [--customers N] [--chunksize 500000]

For each size, a file in the real format (48 columns, one row per customer and month over the 17
months 2015-01..2016-05, with the real file's quirks: padded numbers and R-style NA, `indrel_1mes`
spelled 1 / 1.0 / P, empty `renta`, NA payroll flags, quoted provinces with commas, customers
missing months, plus a few broken rows) is written to a temp dir, then ingested in a fresh
process, so that the peak RSS reported (the high-water mark of that process, see `peak_rss_mb`)
is the ingest's own. Rows are streamed and only a few values per customer are kept, so memory
depends on the chunk size and the number of customers, not on the number of rows: with
`--customers` fixed, a bigger file (more months) should show the same peak. The real file has
~950,000 customers, ~14 rows each; `--rows 13600000` synthesises a file of that size (2 GiB).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.features.adapters.santander import FLAGS

REAL_MONTHS = 17  # 2015-01 .. 2016-05
PROVINCES = np.array(["MADRID", "BARCELONA", "VALENCIA", "SEVILLA", "CORUÑA, A", "MALAGA", "PALMAS, LAS",
                      "BALEARS, ILLES", "ZARAGOZA", "ALICANTE", "ASTURIAS", "MURCIA", ""], dtype=object)
# Share of customers holding each flag, roughly as in the real data (current account ~65%).
FLAG_RATES = np.array([1e-4, 3e-5, .65, 4e-4, .08, .01, .01, .13, .04, .002, .002, .04, .08, .02, .006, .009,
                       .003, .05, .04, .025, .004, .05, .06, .13])
HEADER = ["fecha_dato", "ncodpers", "ind_empleado", "pais_residencia", "sexo", "age", "fecha_alta", "ind_nuevo",
          "antiguedad", "indrel", "ult_fec_cli_1t", "indrel_1mes", "tiprel_1mes", "indresi", "indext", "conyuemp",
          "canal_entrada", "indfall", "tipodom", "cod_prov", "nomprov", "ind_actividad_cliente", "renta",
          "segmento", *FLAGS]


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory, MiB.

    Linux keeps `getrusage().ru_maxrss` across `exec`, so a child started from a big parent would
    report the parent's size; `VmHWM` belongs to the new address space. Elsewhere, `ru_maxrss`.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    scale = 2**20 if sys.platform == "darwin" else 2**10  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _padded(values: np.ndarray, width: int, na: np.ndarray) -> np.ndarray:
    out = np.char.rjust(values.astype(str), width).astype(object)
    out[na] = " " * (width - 2) + "NA"
    return out


def synthesise(path: Path, rows: int, customers: int | None = None, seed: int = 0) -> int:
    """Writes a dirty Santander-format CSV of about `rows` rows, month by month (bounded memory).

    By default customers scale with rows over the real file's 17 months; with `customers` fixed,
    more rows means more months, which isolates the cost of rows from the cost of customers.
    """
    rng = np.random.default_rng(seed)
    n = customers or int(rows / REAL_MONTHS * 1.15)
    n_months = REAL_MONTHS if customers is None else max(2, round(rows / (0.87 * n)))
    # The 28th of each month, as in the real file.
    months = pd.date_range("2015-01-28", periods=n_months, freq="MS") + pd.Timedelta(days=27)
    ids = rng.choice(np.arange(15_000, 15_000 + 3 * n), n, replace=False)
    first = np.where(rng.random(n) < 0.8, 0, rng.integers(0, n_months, n))  # later joiners
    last = np.where(rng.random(n) < 0.9, n_months - 1, rng.integers(0, n_months, n))  # leavers
    age = rng.integers(2, 105, n)
    sexo = rng.choice(np.array(["H", "V", ""], dtype=object), n, p=[.54, .455, .005])
    province = rng.choice(PROVINCES, n)
    renta = np.round(np.exp(rng.normal(11.4, 0.5, n)), 2).astype(str).astype(object)
    renta[rng.random(n) < 0.2] = ""
    alta = (np.datetime64("2015-01-01") - rng.integers(0, 7000, n).astype("timedelta64[D]")).astype(str)
    held = rng.random((n, len(FLAGS))) < FLAG_RATES
    written = 0
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(",".join(f'"{h}"' for h in HEADER) + "\n")
        for m, date in enumerate(months):
            present = (first <= m) & (m <= last) & (rng.random(n) > 0.02)  # ~2% of months missing
            idx = np.flatnonzero(present)
            k = len(idx)
            held[idx] ^= rng.random((k, len(FLAGS))) < FLAG_RATES * 0.02  # a little churn each month
            df = pd.DataFrame({
                "fecha_dato": date.strftime("%Y-%m-%d"), "ncodpers": ids[idx].astype(str).astype(object),
                "ind_empleado": "N",
                "pais_residencia": "ES", "sexo": sexo[idx],
                "age": _padded(age[idx] + m // 12, 3, rng.random(k) < 0.001),
                "fecha_alta": alta[idx], "ind_nuevo": " 0",
                "antiguedad": _padded(rng.integers(0, 250, k), 7, rng.random(k) < 0.001), "indrel": " 1",
                "ult_fec_cli_1t": "", "indrel_1mes": rng.choice(np.array(["1", "1.0", "P", "3"], dtype=object), k,
                                                                  p=[.6, .39, .005, .005]),
                "tiprel_1mes": rng.choice(np.array(["A", "I"], dtype=object), k), "indresi": "S", "indext": "N",
                "conyuemp": "", "canal_entrada": "KHE", "indfall": "N", "tipodom": " 1", "cod_prov": "28",
                "nomprov": province[idx], "ind_actividad_cliente": rng.choice(np.array([" 1", " 0"]), k),
                "renta": renta[idx], "segmento": "02 - PARTICULARES",
            })
            flags = held[idx].astype(np.int8).astype(str).astype(object)
            flags[rng.random(k) < 0.002, 21:23] = "NA"  # ind_nomina_ult1, ind_nom_pens_ult1
            for j, f in enumerate(FLAGS):
                df[f] = flags[:, j]
            # A few broken rows, as in any real extract.
            bad = rng.choice(k, 5, replace=False)
            df.loc[bad[0], "fecha_dato"] = "2015-02-30"
            df.loc[bad[1], "ncodpers"] = "     NA"
            df.loc[bad[2], "age"] = " 164"
            df.loc[bad[3], FLAGS[2]] = "2"
            df = pd.concat([df, df.iloc[[bad[4]]]])  # a duplicated customer-month
            df.to_csv(fh, header=False, index=False)
            written += len(df)
    return written


def ingest_only(csv_path: Path, out_dir: Path, chunksize: int) -> dict:
    from nextbest.config import load_catalogue
    from nextbest.features.adapters.santander import ingest_santander

    catalogue = load_catalogue()
    before = peak_rss_mb()
    t, cpu = time.perf_counter(), time.process_time()
    report = ingest_santander(csv_path, out_dir, catalogue, chunksize=chunksize)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    # CPU seconds as well as wall seconds: on a shared machine the wall clock includes waiting.
    return {"rows": report.rows_read, "kept": report.rows_kept, "rejected": report.rejected_by_reason,
            "customers": report.customers, "seconds": seconds, "cpu_seconds": cpu,
            "rows_per_s": report.rows_read / seconds,
            "rss_after_imports_mb": before, "peak_rss_mb": peak_rss_mb(),
            "holdings_mb": (out_dir / "holdings.parquet").stat().st_size / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000], help="File sizes to try (rows).")
    parser.add_argument("--customers", type=int, default=None,
                        help="Fix the number of customers (more rows = more months); default: ~rows/14, as in the "
                             "real file.")
    parser.add_argument("--chunksize", type=int, default=500_000)
    parser.add_argument("--keep", type=Path, default=None, help="Write the files here instead of a temp dir.")
    parser.add_argument("--ingest-only", nargs=2, type=Path, metavar=("CSV", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ingest_only:
        csv_path, out_dir = args.ingest_only
        print(json.dumps(ingest_only(csv_path, out_dir, args.chunksize)))
        return

    from results import Run

    run = Run("bench_santander_ingest")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for rows in args.rows:
            csv_path = root / f"train_{rows}.csv"
            t = time.perf_counter()
            written = synthesise(csv_path, rows, customers=args.customers)
            print(f"synthesised {written:,} rows ({csv_path.stat().st_size / 2**20:,.0f} MiB) "
                  f"in {time.perf_counter() - t:.0f}s", flush=True)
            # A fresh process: its peak RSS is the ingest's alone.
            out = subprocess.run([sys.executable, __file__, "--chunksize", str(args.chunksize), "--ingest-only",
                                  str(csv_path), str(root / f"raw_{rows}")], check=True, capture_output=True,
                                 text=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["file_mb"] = csv_path.stat().st_size / 2**20
            results.append(result)
            print(json.dumps(result), flush=True)
            if args.keep is None:
                csv_path.unlink()
    columns = ["rows", "customers", "file MiB", "seconds", "CPU s", "rows/s", "RSS after imports MiB",
               "peak RSS MiB"]
    rows = [[f"{r['rows']:,}", f"{r['customers']:,}", f"{r['file_mb']:,.0f}", f"{r['seconds']:.1f}",
             f"{r['cpu_seconds']:.1f}", f"{r['rows_per_s']:,.0f}", f"{r['rss_after_imports_mb']:,.0f}",
             f"{r['peak_rss_mb']:,.0f}"] for r in results]
    widths = [12, 10, 9, 8, 7, 10, 22, 13]
    print("\n" + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths)))
    for row in rows:
        print(" ".join(f"{c:>{w}}" for c, w in zip(row, widths)))
    run.figures["files"] = results
    run.table(f"Santander adapter, chunks of {args.chunksize:,} rows, each file ingested in a fresh process",
              columns, rows)
    run.write()


if __name__ == "__main__":
    main()
