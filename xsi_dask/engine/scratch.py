"""Placeholder (replaced by the scratch module with lock files and sweeping)."""
from __future__ import annotations
import contextlib, os, shutil, uuid
from pathlib import Path
import numpy as np

class Scratch:
    def __init__(self, path):
        self.path = Path(path)
    def __reduce__(self):
        return (Scratch, (str(self.path),))
    def load(self, name):
        return np.load(self.path / f"{name}.npy")
    def save(self, name, a):
        tmp = self.path / f".{name}.{uuid.uuid4().hex[:8]}.npy"
        np.save(tmp, a)
        os.replace(tmp, self.path / f"{name}.npy")
    def remove(self, name):
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path / f"{name}.npy")
    @classmethod
    @contextlib.contextmanager
    def create(cls, store_path, store_uuid, *, parent=None, on_cluster=False):
        p = Path(store_path).parent / f".xsi-dask-nmf-{uuid.uuid4().hex[:12]}"
        p.mkdir()
        try:
            yield cls(p)
        finally:
            shutil.rmtree(p, ignore_errors=True)

def sweep_scratch(store_path, store_uuid=None, *, parents=None):
    return []
