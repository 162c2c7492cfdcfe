"""Ingest of the real JEOL map split 4x4 against RosettaSciIO's bare read of the same file.

Each job runs in its own process so that peak RSS is that job's alone. "cold" is
the first call in a fresh process (what `xsi-dask ingest` costs a user, JIT
compilation of RosettaSciIO's JEOL decoder included); "warm" is the median of
three further calls in the same process.

The warm anchor is unusually cheap: RosettaSciIO builds the cube in memory from
`np.zeros`, and pages that never receive a count are never touched, so its
"read" of a 0.03 %-full 1 GiB cube costs ~0.1 s. Ingest has to look at every
page (a kernel that skips zero 8-byte words in 32-word blocks, ~0.1 s for the
cube), and then pays Zarr v3's per-array Python overhead (~15-20 ms a tile for
its five arrays).
"""

from __future__ import annotations

from _util import DATA, gib, run_isolated

FILE = DATA / "eds" / "jeol_View000_0000006.pts"

READ = f"""
import statistics
t = time.perf_counter()
from rsciio import jeol
d = jeol.file_reader({str(FILE)!r})[-1]["data"]
cold = time.perf_counter() - t
total = int(d.sum(dtype="uint64")); nbytes = d.nbytes; del d
warm = []
for _ in range(3):
    t = time.perf_counter(); jeol.file_reader({str(FILE)!r}); warm.append(time.perf_counter() - t)
report(cold=cold, warm=statistics.median(warm), total=total, dense_bytes=nbytes)
"""

INGEST = f"""
import statistics, tempfile, shutil
tmp = tempfile.mkdtemp()
t = time.perf_counter()
import xsi_dask
st = xsi_dask.ingest({str(FILE)!r}, tmp + "/c.zarr", split="4x4", progress=False)
cold = time.perf_counter() - t
info = st.info()
warm = []
for i in range(3):
    t = time.perf_counter(); xsi_dask.ingest({str(FILE)!r}, tmp + f"/w{{i}}.zarr", split="4x4", progress=False); warm.append(time.perf_counter() - t)
shutil.rmtree(tmp)
report(cold=cold, warm=statistics.median(warm), total=info["total_counts"], stored=info["stored_bytes"], dense_f32=info["dense_float32_bytes"])
"""


def run() -> str:
    # a throwaway process first, so that on-disk JIT caches (numba cache=True in
    # RosettaSciIO's JEOL decoder and in xsi_dask) exist for both cold runs alike
    run_isolated(INGEST)
    read = run_isolated(READ)
    ing = run_isolated(INGEST)
    assert ing["total"] == read["total"], "ingest lost counts"  # a fast wrong answer fails
    rows = [
        "| job | cold wall (s) | warm wall (s) | peak RSS |",
        "|---|---|---|---|",
        f"| RosettaSciIO `jeol.file_reader` (anchor) | {read['cold']:.2f} | {read['warm']:.3f} | {gib(read['peak_rss'])} |",
        f"| `xsi_dask.ingest(split='4x4')` | {ing['cold']:.2f} | {ing['warm']:.3f} | {gib(ing['peak_rss'])} |",
        f"| **ratio ingest / read** | **{ing['cold'] / read['cold']:.2f}x** | **{ing['warm'] / read['warm']:.2f}x** | **{ing['peak_rss'] / read['peak_rss']:.2f}x** |",
    ]
    notes = (
        f"\nDense array as RosettaSciIO returns it: {gib(read['dense_bytes'])} (uint8); as float32: "
        f"{gib(ing['dense_f32'])}. Peak RSS of ingest / dense uint8 array: {ing['peak_rss'] / read['dense_bytes']:.2f}x. "
        f"Store: {ing['stored'] / 2**20:.2f} MiB = 1/{ing['dense_f32'] / ing['stored']:,.0f} of dense float32. "
        f"Total counts {ing['total']:,} in both (checked).\n"
    )
    return "## Ingest: JEOL map (512 x 512 x 4096) split 4x4\n\n" + __doc__.split("\n\n", 1)[1] + "\n" + "\n".join(rows) + "\n" + notes
