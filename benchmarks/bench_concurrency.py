"""Rows that survive when many processes append to one results CSV at the same time.

N processes start together (they wait on one event) and each appends M rows with distinct settings
to the same CSV with ``evalkit.results.append_row``. The script counts the rows in the file at the
end, once without the lock (``EVALKIT_NO_LOCKS=1``: the read + concat + atomic-rename append that
evalkit did before it took ``<csv>.lock``, so concurrent writers overwrite each other's rows) and
once with it (every writer re-reads and replaces the file under the lock). Expected: "before" far
fewer than N*M rows (how many depends on timing), "after" exactly N*M and no duplicate run_id.

    python benchmarks/bench_concurrency.py                 # 6 processes x 15 rows, both modes
    python benchmarks/bench_concurrency.py -n 8 -m 50 --repeat 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path


def _writer(csv: str, worker: int, rows: int, start, no_lock: bool) -> None:
    if no_lock:
        os.environ["EVALKIT_NO_LOCKS"] = "1"
    else:
        os.environ.pop("EVALKIT_NO_LOCKS", None)
    from evalkit.results import append_row
    start.wait()
    for j in range(rows):
        append_row(csv, {"label": f"w{worker}", "guidance_scale": float(worker * 1000 + j), "sampler": "ddim",
                         "num_samples": 10, "seed": worker, "fid": float(j)})


def trial(folder: Path, processes: int, rows: int, no_lock: bool) -> tuple[int, int, float]:
    """(rows in the CSV, duplicate run_ids, seconds) after `processes` x `rows` concurrent appends."""
    from evalkit.results import read_results
    csv = folder / f"results-{'nolock' if no_lock else 'lock'}-{time.monotonic_ns()}.csv"
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(csv), i, rows, start, no_lock)) for i in range(processes)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let every process import evalkit and reach the start line
    t0 = time.perf_counter()
    start.set()
    for p in procs:
        p.join(600)
    seconds = time.perf_counter() - t0
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed:
        print(f"  ({len(failed)} writer(s) failed: exit codes {failed})", file=sys.stderr)
    table = read_results(csv) if csv.exists() else None
    n = 0 if table is None else len(table)
    dups = 0 if table is None else int(table["run_id"].duplicated().sum())
    return n, dups, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--processes", type=int, default=6)
    parser.add_argument("-m", "--rows", type=int, default=15, help="rows appended by each process")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--dir", default=None, help="folder for the CSVs (default: a temporary one; "
                                                    "point it at a network filesystem to test that)")
    args = parser.parse_args()
    expected = args.processes * args.rows
    print(f"{args.processes} processes x {args.rows} appends to one CSV = {expected} rows expected "
          f"({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for label, no_lock in (("before (no lock)", True), ("after (<csv>.lock)", False)):
            for r in range(args.repeat):
                n, dups, seconds = trial(Path(tmp), args.processes, args.rows, no_lock)
                print(f"{label:20s} trial {r + 1}: {n:4d} of {expected} rows survive "
                      f"({100 * n / expected:5.1f}%), {dups} duplicate run_id, {seconds:.2f} s")


if __name__ == "__main__":
    main()
