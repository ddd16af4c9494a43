"""Speed and memory of the sample store against numpy's whole-array baseline, measured in the same run.

Prints, for an N×S×S×3 uint8 batch: time and peak traced memory (tracemalloc, which sees numpy buffers) of
  * writing: ``np.savez`` of the whole array (baseline) vs ``NpzWriter`` appending ``--batch-size`` images;
  * reading: ``np.load(path)["arr_0"]`` (baseline) vs ``open_batch(path).iter_images(batch_size)``;
  * reading only the last batch (what the last rank of a multi-GPU run does): stored vs deflated npz.

    python benchmarks/bench_store.py                     # 2000 × 128×128×3 (98 MB)
    python benchmarks/bench_store.py --num 5000 --size 256
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from evalkit.store import NpzWriter, open_batch


def measure(fn):
    """(seconds, peak traced bytes, result) of fn()."""
    tracemalloc.start()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak, result


def mb(n: int) -> str:
    return f"{n / 2**20:8.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=2000, help="images in the batch")
    parser.add_argument("--size", type=int, default=128, help="image height and width")
    parser.add_argument("--batch-size", type=int, default=64, help="images per read/append")
    args = parser.parse_args()
    n, s, bs = args.num, args.size, args.batch_size
    x = np.random.default_rng(0).integers(0, 256, (n, s, s, 3), dtype=np.uint8)
    print(f"batch: {n} × {s}×{s}×3 uint8 = {mb(x.nbytes).strip()}, batch size {bs}")

    with tempfile.TemporaryDirectory() as tmp:
        base, ours, comp = Path(tmp) / "savez.npz", Path(tmp) / "writer.npz", Path(tmp) / "deflated.npz"

        def write_ours():
            with NpzWriter(ours) as w:
                for i in range(0, n, bs):
                    w.append(x[i:i + bs])

        t_base, m_base, _ = measure(lambda: np.savez(base, x))
        t_ours, m_ours, _ = measure(write_ours)
        print(f"write  np.savez   {t_base:7.3f} s  peak {mb(m_base)}")
        print(f"write  NpzWriter  {t_ours:7.3f} s  peak {mb(m_ours)}   time ratio {t_ours / t_base:5.2f}×")

        def read_ours():
            with open_batch(ours) as r:
                return sum(int(b[:, 0, 0, 0].sum()) for b in r.iter_images(bs))

        def read_base():
            with np.load(base) as f:
                return int(f["arr_0"][:, 0, 0, 0].sum())

        t_base, m_base, v_base = measure(read_base)
        t_ours, m_ours, v_ours = measure(read_ours)
        assert v_base == v_ours
        print(f"read   np.load    {t_base:7.3f} s  peak {mb(m_base)}")
        print(f"read   streamed   {t_ours:7.3f} s  peak {mb(m_ours)}   time ratio {t_ours / t_base:5.2f}×, "
              f"memory ratio {m_ours / m_base:6.4f}")

        np.savez_compressed(comp, x)
        for label, path in (("stored", ours), ("deflated", comp)):
            with open_batch(path) as r:
                t, m, _ = measure(lambda: list(r.iter_images(bs, n - bs, n)))
            print(f"last batch only ({label:8s}) {t:7.4f} s  peak {mb(m)}")


if __name__ == "__main__":
    main()
