"""Scratch folders of iterative runs: made and removed by a context manager, swept after a crash."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import dask
import numpy as np
import psutil
import pytest

from xsi_dask.engine.scratch import LOCK_NAME, PREFIX, Scratch, clean, sweep_scratch
from xsi_dask.errors import DecompositionError, StoreFormatError

ROOT = Path(__file__).resolve().parents[1]
UUID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def store_path(tmp_path):
    """A fake store path (a folder): Scratch and sweep_scratch only use its path."""
    p = tmp_path / "m.zarr"
    p.mkdir()
    return p


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    from xsi_dask.testing.simulate import simulate

    base = tmp_path_factory.mktemp("real")
    return simulate(base / "s.zarr", tiles="1x2", tile_shape="16x16", channels=64, counts_per_pixel=20, seed=1,
                    progress=False)


def _scratch_dirs(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.name.startswith(PREFIX))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_run(parent: Path, store: Path, *, store_uuid: str = UUID, host: str | None = None, pid: int | None = None,
              create_time: float | None = None, lock: bool = True, name: str | None = None) -> Path:
    folder = parent / (name or f"{PREFIX}{uuid.uuid4().hex[:12]}")
    folder.mkdir()
    np.save(folder / "W0-0.0.npy", np.ones((4, 2)))
    if lock:
        pid = os.getpid() if pid is None else pid
        if create_time is None:
            create_time = psutil.Process(pid).create_time() if psutil.pid_exists(pid) else 1.0e9
        (folder / LOCK_NAME).write_text(json.dumps({
            "host": host or socket.gethostname(), "pid": pid, "create_time": create_time, "store": str(store),
            "store_uuid": store_uuid, "started": "2024-01-01T00:00:00+00:00",
        }))
    return folder


# ---- Scratch and Scratch.create ----

def test_round_trip_and_removal(store_path):
    a = np.arange(12.0).reshape(4, 3)
    with Scratch.create(store_path, UUID) as s:
        assert s.path.is_absolute() and s.path.parent == store_path.parent
        assert s.path.name.startswith(PREFIX) and len(s.path.name) == len(PREFIX) + 12
        assert stat.S_IMODE(os.stat(s.path).st_mode) == 0o700
        lock = json.loads((s.path / LOCK_NAME).read_text())
        assert lock["host"] == socket.gethostname() and lock["pid"] == os.getpid()
        assert lock["create_time"] == psutil.Process().create_time()
        assert lock["store"] == str(store_path.resolve()) and lock["store_uuid"] == UUID and lock["started"]
        s.save("W0-0.0", a)
        s.save("W0-0.0", a + 1)  # replaces
        np.testing.assert_array_equal(s.load("W0-0.0"), a + 1)
        assert s.load("W0-0.0").dtype == np.float64
        assert sorted(p.name for p in s.path.iterdir()) == sorted([LOCK_NAME, "W0-0.0.npy"])  # no temporary left
        s.remove("W0-0.0")
        s.remove("W0-0.0")  # no error when absent
        with pytest.raises(FileNotFoundError):
            s.load("W0-0.0")
        s.save("W1-0.1", a)
        path = s.path
        # a live run is never swept
        assert sweep_scratch(store_path, UUID) == []
        assert path.exists()
    assert not path.exists()
    assert _scratch_dirs(store_path.parent) == []
    with pytest.raises(FileNotFoundError):
        s.load("W1-0.1")


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_removed_when_the_block_raises(store_path, exc):
    with pytest.raises(exc), Scratch.create(store_path, UUID) as s:
        s.save("x", np.zeros(3))
        raise exc()
    assert not s.path.exists()
    assert _scratch_dirs(store_path.parent) == []


def test_bad_names(store_path):
    with Scratch.create(store_path, UUID) as s:
        for name in ("", "../x", "a/b", ".hidden"):
            with pytest.raises(ValueError):
                s.save(name, np.zeros(1))


def test_pickle(store_path):
    with Scratch.create(store_path, UUID) as s:
        s.save("a", np.ones(5))
        blob = pickle.dumps(s)
        assert len(blob) < 200 + len(str(s.path))
        t = pickle.loads(blob)
        assert type(t) is Scratch and t.path == s.path and t == s
        np.testing.assert_array_equal(t.load("a"), np.ones(5))
        t.save("b", np.zeros(2))
        np.testing.assert_array_equal(s.load("b"), np.zeros(2))
        assert dask.base.tokenize(t) == dask.base.tokenize(s)
    assert not t.path.exists()


def test_parent_choice(tmp_path, store_path):
    given = tmp_path / "given" / "deeper"
    with Scratch.create(store_path, UUID, parent=given) as s:
        assert s.path.parent == given.resolve()
    configured = tmp_path / "configured"
    with dask.config.set({"xsi-dask.scratch": str(configured)}):
        with Scratch.create(store_path, UUID) as s:
            assert s.path.parent == configured.resolve()
        with Scratch.create(store_path, UUID, parent=given) as s:  # the argument wins
            assert s.path.parent == given.resolve()


def test_store_folder_not_writable(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    store = ro / "m.zarr"
    store.mkdir()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro.resolve() else access(p, mode))
    with Scratch.create(store, UUID) as s:
        assert s.path.parent == tmp.resolve()
    with pytest.raises(DecompositionError, match="set xsi-dask.scratch"), Scratch.create(store, UUID, on_cluster=True):
        pass
    with dask.config.set({"xsi-dask.scratch": str(tmp_path / "shared")}), Scratch.create(store, UUID, on_cluster=True) as s:
        assert s.path.parent == (tmp_path / "shared").resolve()
    assert _scratch_dirs(tmp) == [] and _scratch_dirs(tmp_path / "shared") == []


def test_forked_child_does_not_remove(store_path):
    cm = Scratch.create(store_path, UUID)
    s = cm.__enter__()
    try:
        pid = os.fork()
        if pid == 0:  # the child leaves the block (its copy of the generator runs the finally), then exits
            try:
                cm.__exit__(None, None, None)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert s.path.exists() and (s.path / LOCK_NAME).exists()
    finally:
        cm.__exit__(None, None, None)
    assert not s.path.exists()


# ---- sweep_scratch ----

def test_sweep_rules(store_path):
    parent = store_path.parent
    other = store_path.parent / "other.zarr"
    dead = _fake_run(parent, store_path, pid=_dead_pid())
    live = _fake_run(parent, store_path)
    reused = _fake_run(parent, store_path, create_time=psutil.Process().create_time() - 3600.0)
    remote = _fake_run(parent, store_path, host=socket.gethostname() + "-elsewhere", pid=_dead_pid())
    foreign = _fake_run(parent, other, store_uuid="f" * 32, pid=_dead_pid())
    nolock = _fake_run(parent, store_path, lock=False)
    badlock = _fake_run(parent, store_path, pid=_dead_pid())
    (badlock / LOCK_NAME).write_text("{not json")
    lookalikes = [
        _fake_run(parent, store_path, pid=_dead_pid(), name=f"{PREFIX}{'A' * 12}"),
        _fake_run(parent, store_path, pid=_dead_pid(), name=f"{PREFIX}{'a' * 11}"),
        _fake_run(parent, store_path, pid=_dead_pid(), name=f"{PREFIX}{'a' * 13}"),
        _fake_run(parent, store_path, pid=_dead_pid(), name=f"x{PREFIX}{'a' * 12}"),
    ]
    kept = [live, remote, foreign, nolock, badlock, *lookalikes]

    removed = sweep_scratch(store_path, UUID, parents=[parent])
    assert sorted(removed) == sorted([dead, reused])
    assert not dead.exists() and not reused.exists()
    assert all(p.exists() and (p / "W0-0.0.npy").exists() for p in kept)
    assert sweep_scratch(store_path, UUID, parents=[parent]) == []


def test_sweep_by_path_and_uuid(store_path, tmp_path, monkeypatch):
    parent = store_path.parent
    a = _fake_run(parent, store_path, pid=_dead_pid())
    b = _fake_run(parent, store_path, store_uuid="e" * 32, pid=_dead_pid())
    moved = _fake_run(parent, tmp_path / "elsewhere" / "old.zarr", pid=_dead_pid())
    # by path: any uuid, the path must match (relative path resolved)
    monkeypatch.chdir(parent)
    assert sorted(sweep_scratch("m.zarr", parents=[parent])) == sorted([a, b])
    assert moved.exists()
    # by uuid: the store may have moved
    assert sweep_scratch(store_path, UUID, parents=[parent]) == [moved]


def test_sweep_default_parents(store_path, tmp_path):
    configured = tmp_path / "configured"
    configured.mkdir()
    beside = _fake_run(store_path.parent, store_path, pid=_dead_pid())
    with dask.config.set({"xsi-dask.scratch": str(configured)}):
        inside = _fake_run(configured, store_path, pid=_dead_pid())
        assert sorted(sweep_scratch(store_path, UUID)) == sorted([beside, inside])


def test_sweep_zombie(store_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = _fake_run(store_path.parent, store_path, pid=proc.pid)
        assert sweep_scratch(store_path, UUID, parents=[store_path.parent]) == []  # running
        proc.kill()
        deadline = time.monotonic() + 10
        while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert psutil.pid_exists(proc.pid)  # not reaped yet
        assert sweep_scratch(store_path, UUID, parents=[store_path.parent]) == [folder]
    finally:
        proc.kill()
        proc.wait()


def test_leftover_of_a_partial_removal(store_path):
    folder = _fake_run(store_path.parent, store_path, pid=_dead_pid())
    os.remove(folder / "W0-0.0.npy")  # only the lock is left
    assert sweep_scratch(store_path, UUID, parents=[store_path.parent]) == [folder]


# ---- clean: a real store, a real SIGKILL ----

def test_clean_not_a_store(tmp_path):
    with pytest.raises(StoreFormatError):
        clean(tmp_path / "nothing.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(StoreFormatError):
        clean(tmp_path / "empty.zarr")


def test_sigkill_then_clean(real_store):
    code = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from xsi_dask.engine.scratch import Scratch
        from xsi_dask.io.store import MontageStore
        store = MontageStore({str(real_store.path)!r})
        with Scratch.create(store.path, store.uuid) as s:
            s.save("W0-0.0", np.ones((256, 4)))
            print(s.path, flush=True)
            time.sleep(120)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline().strip()
        assert line, "the child printed no scratch path"
        folder = Path(line)
        assert folder.is_dir() and (folder / "W0-0.0.npy").exists()
        assert clean(real_store.path) == []  # its run is alive
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert folder.is_dir()  # no finally ran
    assert clean(real_store.path) == [folder]
    assert not folder.exists()
    assert clean(real_store.path) == []


def test_scratch_arrays_read_back_exactly_and_refuse_a_truncated_file(tmp_path):
    """The scratch reader (numpy's header parser behind a lock: python/cpython#106905) returns what np.save wrote,
    and a truncated or foreign file is a ValueError, which Scratch.load turns into a ScratchError."""
    from xsi_dask.engine.scratch import _read_npy

    path = tmp_path / "a.npy"
    rng = np.random.default_rng(0)
    for a in (rng.random((625, 4)), np.arange(12, dtype=np.int32).reshape(3, 4), np.zeros((0, 3)), rng.random(5)):
        np.save(path, a)
        b = _read_npy(path)
        assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)
    np.save(path, rng.random(100))
    with open(path, "r+b") as f:
        f.truncate(300)
    with pytest.raises(ValueError, match="truncated"):
        _read_npy(path)
    path.write_bytes(b"not an array")
    with pytest.raises(ValueError):
        _read_npy(path)
