"""Time this checkout against an older revision of xsi_dask, interleaved on the same machine in one run.

Ratios in docs/benchmarks.md taken on different days differ by more than a
regression would (the machines are shared). This runs the same jobs with the
old and the new package alternately, each in a fresh process:

    .venv/bin/python benchmarks/compare_versions.py --old 68c730a [--rounds 3]

Jobs: randomized SVD (k=10, q=10; best of 5) and KL NMF per iteration (k=8,
random start; (t(50) - t(10)) / 40, best of 3) on the JEOL map split 4x4 and
the Hitachi map split 2x2, dask threads.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data" / "eds").resolve()

JOB = r"""
import json, sys, tempfile, time
import dask, xsi_dask
data = sys.argv[1]
out = {}
tmp = tempfile.mkdtemp()
for name, split in [("jeol_View000_0000006.pts", "4x4"), ("Hitachi_TM3030Plus.bcf", "2x2")]:
    m = xsi_dask.open_montage(xsi_dask.ingest(f"{data}/{name}", f"{tmp}/{name}.zarr", split=split, progress=False))
    with dask.config.set(scheduler="threads"):
        xsi_dask.decompose(m, 10)
        svd = []
        for _ in range(5):
            t = time.perf_counter(); xsi_dask.decompose(m, 10); svd.append(time.perf_counter() - t)
        xsi_dask.nmf(m, 8, max_iter=5, tol=0, init="random")
        it = []
        for _ in range(3):
            t = time.perf_counter(); xsi_dask.nmf(m, 8, max_iter=10, tol=0, init="random"); a = time.perf_counter() - t
            t = time.perf_counter(); xsi_dask.nmf(m, 8, max_iter=50, tol=0, init="random"); b = time.perf_counter() - t
            it.append((b - a) / 40)
    out[name] = {"svd": min(svd), "nmf_iter": min(it)}
print(json.dumps(out))
"""


def _run(pythonpath: str) -> dict:
    env = {"PYTHONPATH": pythonpath, "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", JOB, str(DATA)], capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="git revision of the older package")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    old = tempfile.mkdtemp(prefix="xsi-old-")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.old, "xsi_dask"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
    rounds = [(_run(old), _run(str(ROOT))) for _ in range(args.rounds)]
    print(f"| job | {args.old} (s) | this checkout (s) | new / old |")
    print("|---|---|---|---|")
    for name in rounds[0][0]:
        for key, label in (("svd", "randomized SVD k=10, q=10"), ("nmf_iter", "KL NMF k=8, per iteration")):
            o = min(r[0][name][key] for r in rounds)
            n = min(r[1][name][key] for r in rounds)
            print(f"| {name.split('_')[0]} {label} | {o:.4f} | {n:.4f} | **{n / o:.2f}x** |")


if __name__ == "__main__":
    main()
