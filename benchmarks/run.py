"""Run the benchmarks and write docs/benchmarks.md (`make bench`)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _util import ROOT, machine  # noqa: E402

SUITES = ["bench_ingest", "bench_engine", "bench_hyperspy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument("suites", nargs="*", default=SUITES)
    args = parser.parse_args()
    sections = []
    for name in args.suites:
        t = time.perf_counter()
        print(f"running {name} ...", flush=True)
        sections.append(__import__(name).run())
        print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
    head = (
        "# Benchmarks\n\n"
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on: {machine()}.\n\n"
        f"Command: `make bench` (= `.venv/bin/python benchmarks/run.py --out docs/benchmarks.md`).\n"
        "Every comparison is made side by side in one run, and ratios are what to read: the "
        "machines are shared and absolute times drift.\n\n"
        "The paper-size montage (10 x 10 tiles of 1024 x 1024 x 4096, `make bench-scale`) and the "
        "scaling series over 1-64 such tiles (`make bench-scale-series`) are not part of this run: "
        "see [benchmarks-scale.md](benchmarks-scale.md) and "
        "[benchmarks-scale-series.md](benchmarks-scale-series.md). This code against an older revision, "
        "interleaved in one run: [benchmarks-versions.md](benchmarks-versions.md) "
        "(`benchmarks/compare_versions.py`).\n\n"
    )
    out = ROOT / args.out
    out.write_text(head + "\n".join(sections))
    print(out.read_text())


if __name__ == "__main__":
    main()
