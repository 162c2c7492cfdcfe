"""Store integrity (issue 9, item 4): checksums, CSR validation on load, verify, and a store fuzzer.

Every damaged store ends in ``CorruptStoreError`` naming the store and the tile,
in the process and on a dask worker, through the CLI with exit code 2, and
``xsi-dask verify`` lists the fault; every mutation of the fuzzer gives either
the undamaged store's result or the package's error.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import signal
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr

import xsi_dask
from xsi_dask.cli.main import main
from xsi_dask.errors import CorruptStoreError, StoreFormatError, XSIError
from xsi_dask.io import store as store_mod
from xsi_dask.io.store import CHECKED_ZSTD, MontageStore, array_checksum, check_csr, verify_store
from xsi_dask.testing.simulate import simulate

SIM = {"tiles": "1x2", "tile_shape": "8x8", "channels": 64, "counts_per_pixel": 20, "seed": 1, "progress": False}
CHANNELS = 64


def _fresh_caches() -> None:
    """Forget every open store and cached tile, as a new process would."""
    store_mod.tile_cache.clear()
    store_mod._open_stores.clear()


def _svd(path: Path) -> np.ndarray:
    _fresh_caches()
    with dask.config.set(scheduler="sync"):
        return xsi_dask.decompose(xsi_dask.open_montage(path), 3, solver="gram")["singular_values"].values


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("integrity") / "clean.zarr"
    simulate(path, **SIM)
    return path


@pytest.fixture(scope="module")
def reference(clean) -> np.ndarray:
    return _svd(clean)


@pytest.fixture
def copy(clean, tmp_path) -> Path:
    dst = tmp_path / "store.zarr"
    shutil.copytree(clean, dst)
    return dst


def _edit_json(path: Path, edit) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _drop_checksums(store: Path) -> None:
    """Make ``store`` look like one written before checksums (no ``checksums`` attribute)."""
    for t in (0, 1):
        _edit_json(store / "tiles" / str(t) / "zarr.json", lambda m: m["attributes"].pop("checksums"))


# ---- the damaged stores of the issue ----

def _delete_values_chunk(store: Path) -> int:
    (store / "tiles/1/values/c/0").unlink()
    return 1


def _flip_indices_byte(store: Path) -> int:
    """A flipped byte in the compressed indices chunk: zstd's frame checksum (or the decoder) catches it."""
    chunk = store / "tiles/0/indices_1/c/0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    chunk.write_bytes(bytes(raw))
    return 0


def _out_of_range_index(store: Path) -> int:
    """A flipped high byte of a decoded channel index (channel 300 of 64), re-encoded so that it decodes."""
    arr = zarr.open_array(store / "tiles/0/indices_1", mode="r+")
    arr[7] = int(arr[7]) ^ 0x100
    return 0


def _truncate_chunk(store: Path) -> int:
    chunk = store / "tiles/1/pointers_to_1/c/0"
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    return 1


def _remove_tile_group(store: Path) -> int:
    shutil.rmtree(store / "tiles/1")
    return 1


def _garbage_chunk(store: Path) -> int:
    chunk = store / "tiles/0/values/c/0"
    chunk.write_bytes(np.random.default_rng(0).integers(0, 256, chunk.stat().st_size, dtype=np.uint8).tobytes())
    return 0


CASES = {
    "deleted values chunk": (_delete_values_chunk, "chunk c/0 missing"),
    "flipped byte in indices chunk": (_flip_indices_byte, "indices_1 does not decode"),
    "flipped decoded index (checksum)": (_out_of_range_index, "array indices_1 reads with checksum"),
    "truncated chunk": (_truncate_chunk, "pointers_to_1 does not decode"),
    "removed tile group": (_remove_tile_group, "group tiles/1 is missing"),
    "garbage chunk": (_garbage_chunk, "values does not decode"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_store_raises_naming_the_tile(case, copy):
    damage, what = CASES[case]
    t = damage(copy)
    with pytest.raises(CorruptStoreError) as err:
        _svd(copy)
    msg = str(err.value)
    assert isinstance(err.value, OSError) and isinstance(err.value, XSIError)
    assert str(copy) in msg and f"tile {t} (simulated:grade91_replica)" in msg and what in msg, msg
    assert "xsi-dask verify" in msg
    faults = verify_store(copy)
    assert any(f.startswith(f"tile {t} ") and what in f for f in faults), faults


@pytest.mark.parametrize("case", ["deleted values chunk", "flipped decoded index (checksum)", "removed tile group"])
def test_verify_cli_lists_the_fault(case, copy, capsys):
    damage, what = CASES[case]
    t = damage(copy)
    assert main(["verify", str(copy)]) == 2
    out, err = capsys.readouterr()
    assert any(line.startswith(f"tile {t} ") and what in line for line in out.splitlines()), out
    assert err.strip().splitlines() == [err.strip()] and err.startswith(f"xsi-dask verify: error: {copy}: ")


def test_clean_store_verifies(clean, capsys):
    assert verify_store(clean) == []
    assert main(["verify", str(clean)]) == 0
    assert "sound" in capsys.readouterr().out


def test_verify_refuses_a_non_store(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a store")
    with pytest.raises(StoreFormatError):
        verify_store(tmp_path)
    assert main(["verify", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("xsi-dask verify: error: ")


def test_written_with_checksums(clean):
    st = MontageStore(clean)
    for t in range(st.n_tiles):
        g = st.root[f"tiles/{t}"]
        sums = g.attrs["checksums"]
        assert set(sums) == {"pointers_to_1", "indices_1", "values", "sum_spectrum", "count_map", "images/HAADF"}
        for name, want in sums.items():
            arr = g[name]
            assert array_checksum(arr[...]) == want
            assert any(c.to_dict() == CHECKED_ZSTD.to_dict() for c in arr.compressors), name
        assert json.loads((clean / f"tiles/{t}/values/zarr.json").read_text())["codecs"][1]["configuration"]["checksum"] is True


def test_store_without_checksums_opens_and_is_still_checked(copy, reference):
    """A store written before checksums: read as before, with the structural checks only."""
    _drop_checksums(copy)
    assert np.array_equal(_svd(copy), reference)
    assert verify_store(copy) == []
    _out_of_range_index(copy)  # now only the CSR structure can tell
    with pytest.raises(CorruptStoreError, match=r"tile 0 .*channel index \d+ at stored value 7 \(pixel \d+\) is not below the 64"):
        _svd(copy)
    assert any("channel index" in f for f in verify_store(copy))


def test_store_without_checksums_missing_values_chunk(copy):
    _drop_checksums(copy)
    _delete_values_chunk(copy)
    with pytest.raises(CorruptStoreError, match=r"tile 1 .*stored count 0 .*values: chunk c/0 missing"):
        _svd(copy)


def test_count_map_and_sum_spectrum_reads_are_checked(copy):
    (copy / "tiles/0/count_map/c/0/0").write_bytes(b"\x00garbage\xff" * 5)
    st = MontageStore(copy)
    with pytest.raises(CorruptStoreError, match=r"tile 0 .*count_map does not decode \(RuntimeError"):
        st.count_map(0)
    arr = zarr.open_array(copy / "tiles/1/sum_spectrum", mode="r+")
    arr[3] = int(arr[3]) + 1
    with pytest.raises(CorruptStoreError, match=r"tile 1 .*sum_spectrum reads with checksum"):
        MontageStore(copy).sum_spectrum()
    _drop_checksums(copy)  # without checksums, the total still tells
    with pytest.raises(CorruptStoreError, match=r"tile 1 .*sum_spectrum sums to \d+ counts, but the tile records"):
        MontageStore(copy).sum_spectrum(1)


def test_verify_compares_the_totals(copy):
    """Summaries rewritten with matching checksums: only the totals check sees that they disagree with the counts."""
    for name, idx in (("sum_spectrum", (5,)), ("count_map", (2, 3))):
        arr = zarr.open_array(copy / f"tiles/1/{name}", mode="r+")
        arr[idx] = int(arr[idx]) + 2
        _edit_json(copy / "tiles/1/zarr.json", lambda m, n=name, a=arr: m["attributes"]["checksums"].__setitem__(n, array_checksum(a[...])))
    faults = verify_store(copy)
    assert any(f.startswith("tile 1 ") and "sum_spectrum differs from the counts in 1 channels (channel 5" in f for f in faults), faults
    assert any("count_map differs from the counts at 1 pixels (pixel 19" in f for f in faults), faults
    _edit_json(copy / "zarr.json", lambda m: m["attributes"].__setitem__("total_counts", 7))
    faults = verify_store(copy)
    assert len(faults) == 1 and "the root metadata (zarr.json) is damaged: total_counts is 7, expected" in faults[0], faults


def test_edited_root_metadata(copy):
    def fewer(meta):  # the root's summary consistent in itself, but not with the tile
        a = meta["attributes"]
        a["nnz"] -= a["tiles"][1]["nnz"] - 5
        a["tiles"][1]["nnz"] = 5

    _edit_json(copy / "zarr.json", fewer)
    with pytest.raises(CorruptStoreError, match=r"tile 1 .*numbers of stored values disagree \(binsparse \d+, tile \d+, root 5\)"):
        _svd(copy)
    _edit_json(copy / "zarr.json", lambda m: m["attributes"]["tiles"].pop(1))  # a tile dropped from the list
    with pytest.raises(CorruptStoreError, match=r"root metadata \(zarr.json\) is damaged: nnz is \d+, expected \d+, the 1 tiles' sum"):
        _svd(copy)
    _edit_json(copy / "zarr.json", lambda m: m["attributes"].__setitem__("tile_shape", [8, "x"]))
    with pytest.raises(CorruptStoreError, match=r"root metadata \(zarr.json\) is damaged: tile_shape is \[8, 'x'\]"):
        xsi_dask.open_montage(copy)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("nnz", [], r"recorded numbers of stored values disagree \(binsparse \d+, tile \[\], root \d+\)"),
    ("values_dtype", {}, r"recorded count dtypes disagree \(binsparse uint8, tile \{\}, root uint8\)"),
    ("binsparse", "x", r"binsparse descriptor is missing or garbled \(x\)"),
    ("checksums", {"values": 5}, r"checksums attribute is garbled"),
    ("shape", [8, 9], r"its shape \[8, 9\] is not the montage's tile shape \[8, 8\]"),
    ("total_counts", -3, r"array sum_spectrum sums to \d+ counts, but the tile records -3"),
])
def test_edited_tile_attributes(copy, key, value, message):
    _edit_json(copy / "tiles/1/zarr.json", lambda m: m["attributes"].__setitem__(key, value))
    with pytest.raises(CorruptStoreError, match=r"tile 1 \(simulated:grade91_replica\): (its )?" + message):
        _svd(copy)
    assert any(f.startswith("tile 1 ") for f in verify_store(copy))


def test_corrupt_store_error_pickles():
    err = pickle.loads(pickle.dumps(CorruptStoreError("/s.zarr: tile 3 (a.bcf): bad")))
    assert type(err) is CorruptStoreError and str(err) == "/s.zarr: tile 3 (a.bcf): bad"
    assert err.args == ("/s.zarr: tile 3 (a.bcf): bad",)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (([1, 2, 3], [0, 1], [1, 1]), "the row pointers start at 1, not 0"),
        (([0, 2, 1], [0, 1], [1, 1]), "the row pointers decrease at pixel 1 (2 -> 1)"),
        (([0, 1, 1], [0, 1], [1, 1]), "the row pointers end at 1, not at the 2 stored values"),
        (([0, 2], [0, 1], [1, 1]), "2 row pointers, expected pixels + 1 = 3"),
        (([0, 1, 2], [0, 9], [1, 1]), "channel index 9 at stored value 1 (pixel 1) is not below the 4 channels"),
        (([0, 1, 2], [0, 1], [1, 0]), "stored count 0 at stored value 1 (pixel 1)"),
        (([0, 1, 2], [0], [1, 1]), "1 channel indices for 2 counts"),
    ],
)
def test_check_csr(arrays, message):
    indptr, indices, data = (np.asarray(a, dtype=np.uint32) for a in arrays)
    assert any(message in p for p in check_csr(indptr, indices, data, (2, 4))), check_csr(indptr, indices, data, (2, 4))
    ok = (np.array([0, 1, 2], np.uint32), np.array([0, 3], np.uint16), np.array([1, 1], np.uint8))
    assert check_csr(*ok, (2, 4)) == []
    assert "expected a 1-d unsigned integer array" in check_csr(ok[0].astype(np.int64), *ok[1:], (2, 4))[0]


def test_real_store(needs_data, tmp_path):
    """An ingested real map (Bruker test_TEM.bcf cut into 2 x 2 tiles): sound, then each damage found by verify and on loading."""
    from xsi_dask.io.ingest import ingest

    clean_real = ingest(needs_data / "test_TEM.bcf", tmp_path / "real.zarr", split="2x2", progress=False).path
    assert verify_store(clean_real) == []
    for case, (damage, what) in CASES.items():
        store = tmp_path / f"{case}.zarr".replace(" ", "-")
        shutil.copytree(clean_real, store)
        t = damage(store)
        faults = verify_store(store)
        assert any(f.startswith(f"tile {t} (test_TEM.bcf): ") and what in f for f in faults), (case, faults)
        _fresh_caches()
        with pytest.raises(CorruptStoreError, match=rf"tile {t} \(test_TEM.bcf\): .*{what}"):
            st = MontageStore(store)
            st.tile_csr(t), st.count_map(t), st.sum_spectrum()


# ---- through the CLI, with the error raised on a dask worker ----

def _decompose_cli(store: Path, out: Path, capsys, *cluster: str) -> tuple[int, str]:
    rc = main(["decompose", str(store), "--out", str(out), *cluster, "--quiet"])
    return rc, capsys.readouterr().err


def test_cli_decompose_local_cluster(copy, tmp_path, capsys):
    """The literal case: `xsi-dask decompose STORE --out R.zarr --workers 1 --quiet` on a deleted values chunk."""
    _delete_values_chunk(copy)
    rc, err = _decompose_cli(copy, tmp_path / "R.zarr", capsys, "--workers", "1")
    assert rc == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"xsi-dask decompose: error: {copy}: tile 1 (simulated:grade91_replica): array values"), err
    assert not (tmp_path / "R.zarr").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.zarr"]


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@pytest.mark.parametrize("case", [c for c in CASES if c != "deleted values chunk"])
def test_cli_decompose_on_a_worker(case, copy, tmp_path, capsys, scheduler):
    damage, what = CASES[case]
    t = damage(copy)
    rc, err = _decompose_cli(copy, tmp_path / "R.zarr", capsys, "--scheduler", scheduler)
    assert rc == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"xsi-dask decompose: error: {copy}: tile {t} (simulated:grade91_replica): ") and what in last, err
    assert not (tmp_path / "R.zarr").exists()


# ---- the fuzzer ----

class _Hang(Exception):
    pass


@contextlib.contextmanager
def _time_bound(seconds: float):
    def alarm(signum, frame):
        raise _Hang(f"no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _leaves(node, path=()):
    """Every (path, value) of a JSON document, containers included."""
    yield path, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from _leaves(v, (*path, k))


def _json_edit(doc, rng: np.random.Generator) -> str:
    """Replace, drop or rescale one randomly chosen node of a zarr.json document."""
    choices = [p for p, _ in _leaves(doc) if p]
    path = choices[rng.integers(len(choices))]
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    old = parent[path[-1]]
    options = ["drop", None, "garbage", -1, 0, 1.5, True, [], {}]
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        options += [old + 1, old - 1, old * 1000, int(old) // 2]
    new = options[rng.integers(len(options))]
    if isinstance(new, str) and new == "drop":
        if isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
        return f"drop {'/'.join(map(str, path))}"
    parent[path[-1]] = new
    return f"{'/'.join(map(str, path))}: {str(old)[:30]} -> {new!r}"


def _mutate(store: Path, rng: np.random.Generator, chunks: list[str], metas: list[str]) -> tuple[str, str]:
    """Damage ``store`` once; (kind, what was done)."""
    kind = str(rng.choice(["flip", "flip", "flip", "delete", "truncate", "json-flip", "json-edit", "json-edit", "remove"]))
    return kind, _damage(store, kind, rng, chunks, metas)


_READ = re.compile(r"^(zarr\.json|tiles/\d+/(zarr\.json|(pointers_to_1|indices_1|values|count_map|sum_spectrum)/.*))$")


def _pick(files: list[str], rng: np.random.Generator) -> str:
    """Half the time one of the files a decomposition reads (the root's, the tiles' metadata and their arrays)."""
    read = [f for f in files if _READ.match(f)]
    pool = read if read and rng.random() < 0.5 else files
    return pool[rng.integers(len(pool))]


def _damage(store: Path, kind: str, rng: np.random.Generator, chunks: list[str], metas: list[str]) -> str:
    if kind in ("flip", "delete", "truncate"):
        rel = _pick(chunks, rng)
        f = store / rel
        raw = bytearray(f.read_bytes())
        if kind == "delete":
            f.unlink()
            return f"delete {rel}"
        if kind == "truncate":
            n = int(rng.integers(len(raw)))
            f.write_bytes(bytes(raw[:n]))
            return f"truncate {rel} to {n} of {len(raw)} bytes"
        i = int(rng.integers(len(raw)))
        raw[i] ^= int(rng.integers(1, 256))
        f.write_bytes(bytes(raw))
        return f"flip byte {i} of {rel}"
    rel = _pick(metas, rng)
    f = store / rel
    if kind == "remove":  # a whole node: the array or group folder of this zarr.json (the root: its zarr.json)
        if f.parent == store:
            f.unlink()
            return "remove zarr.json"
        shutil.rmtree(f.parent)
        return f"remove {f.parent.relative_to(store).as_posix()}"
    if kind == "json-flip":
        raw = bytearray(f.read_bytes())
        i = int(rng.integers(len(raw)))
        raw[i] ^= int(rng.integers(1, 256))
        f.write_bytes(bytes(raw))
        return f"flip byte {i} of {rel}"
    doc = json.loads(f.read_text())
    what = _json_edit(doc, rng)
    f.write_text(json.dumps(doc))
    return f"edit {rel}: {what}"


def test_store_fuzzer(clean, reference, capsys):
    """>= 1000 seeded mutations of a small store, each on a fresh copy: the undamaged result or the package's error."""
    import threadpoolctl

    files = sorted(p.relative_to(clean).as_posix() for p in clean.rglob("*") if p.is_file())
    chunks = [f for f in files if "/c/" in f]
    metas = [f for f in files if f.endswith("zarr.json")]
    assert len(chunks) >= 15 and len(metas) >= 20
    rng = np.random.default_rng(20261122)
    outcomes: Counter[str] = Counter()
    by_kind: Counter[tuple[str, str]] = Counter()
    failures: list[str] = []
    # tmpfs where there is one: removing a copy's 40 folders costs 100 ms on a loaded ext4
    base = Path(tempfile.mkdtemp(prefix="xsi-fuzz-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    started, cpu = time.perf_counter(), time.process_time()
    try:
        with threadpoolctl.threadpool_limits(1):  # 64 x 64 eigh: BLAS threads only contend on 2 cores
            for i in range(1000):
                case = base / f"{i}.zarr"
                shutil.copytree(clean, case)
                kind, what = _mutate(case, rng, chunks, metas)
                outcome = "failure"
                try:
                    with _time_bound(20):
                        sv = _svd(case)
                except XSIError as exc:
                    outcome = type(exc).__name__
                except BaseException as exc:  # noqa: BLE001 - anything else, a hang included, is the finding
                    failures.append(f"{what}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}")
                else:
                    if np.array_equal(sv, reference):
                        outcome = "same result"
                    else:
                        failures.append(f"{what}: singular values {sv} instead of {reference}")
                outcomes[outcome] += 1
                by_kind[kind, outcome] += 1
                shutil.rmtree(case)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        _fresh_caches()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    with capsys.disabled():
        print(f"\nstore fuzzer: 1000 mutations in {seconds:.0f} s ({cpu:.0f} s CPU): {dict(outcomes.most_common())}")
        print("  by kind: " + ", ".join(f"{k} -> {o}: {n}" for (k, o), n in sorted(by_kind.items())))
    assert not failures, f"{len(failures)} of 1000 mutations:\n" + "\n".join(failures[:10])
    assert sum(outcomes.values()) == 1000 and "failure" not in outcomes
    assert outcomes["same result"] > 50 and outcomes["CorruptStoreError"] > 300
