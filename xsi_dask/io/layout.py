"""Montage layouts: which file and which pixels make each tile, and where it sits.

Three ways to define a montage:

* a list (or glob) of tile files laid out row-major on a ``ROWS x COLS`` grid;
* a CSV manifest ``path,row,col[,stage_x,stage_y]``;
* one large map cut into ``ROWS x COLS`` equal tiles (``split``).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputFileNotFoundError, LayoutError

__all__ = [
    "source_fingerprints",
    "Layout",
    "TileSpec",
    "expand_inputs",
    "file_sha256",
    "grid_layout",
    "layout_record",
    "manifest_layout",
    "parse_grid",
    "refuse_duplicates",
    "split_layout",
]


@dataclass(frozen=True)
class TileSpec:
    """One tile of a montage.

    ``y0:y1, x0:x1`` select the tile's pixels in its source file (``None``: the
    whole map). ``stage_x``/``stage_y`` give the stage position of the tile's
    origin in ``Layout.stage_units`` (NaN where unknown).
    """

    index: int
    source: Path
    row: int
    col: int
    y0: int | None = None
    y1: int | None = None
    x0: int | None = None
    x1: int | None = None
    stage_x: float = math.nan
    stage_y: float = math.nan

    def window(self, map_shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of the tile in a source map of ``map_shape`` pixels."""
        if self.y0 is None:
            return 0, int(map_shape[0]), 0, int(map_shape[1])
        return self.y0, self.y1, self.x0, self.x1  # type: ignore[return-value]


@dataclass(frozen=True)
class Layout:
    """Tiles of a montage in store order, with the grid they fill."""

    tiles: tuple[TileSpec, ...]
    rows: int
    cols: int
    stage_units: str = ""
    split: tuple[int, int] | None = None

    @property
    def sources(self) -> list[Path]:
        """Distinct source files in first-use order."""
        return list(dict.fromkeys(t.source for t in self.tiles))


def parse_grid(text: str | Sequence[int], what: str = "grid") -> tuple[int, int]:
    """Parse ``"ROWSxCOLS"`` (or a pair) into two positive integers.

    Raises
    ------
    LayoutError
        Anything else: another form, a value below 1, a pair of non-integers.
    """
    if not isinstance(text, str):
        try:
            rows, cols = text  # type: ignore[misc]
            if any(isinstance(v, bool) or int(v) != v for v in (rows, cols)):
                raise ValueError("not whole numbers")
            rows, cols = int(rows), int(cols)
        except (TypeError, ValueError, OverflowError) as exc:
            raise LayoutError(f"{what} {text!r} is not a pair of whole numbers (ROWS, COLS) ({exc})") from exc
    else:
        m = re.fullmatch(r"\s*([0-9]{1,9})\s*[xX×,]\s*([0-9]{1,9})\s*", text)
        if not m:
            raise LayoutError(f"{what} {text!r} is not of the form ROWSxCOLS, e.g. 4x4 (at most 9 digits each)")
        rows, cols = int(m.group(1)), int(m.group(2))
    if rows < 1 or cols < 1:
        raise LayoutError(f"{what} {rows}x{cols}: rows and columns must be at least 1")
    return rows, cols


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def layout_record(
    grid: str | Sequence[int] | None = None,
    split: str | Sequence[int] | None = None,
    manifest: str | Path | None = None,
) -> dict:
    """How a montage was laid out, as recorded in the store's ``layout`` attribute.

    ``{"kind": "grid" | "split" | "manifest" | "single", "grid": [r, c] | None,
    "split": [r, c] | None, "manifest": {"path": absolute path, "sha256": hex} | None}``:
    two ingests with equal records (and the same source files) give the same store.
    """
    if sum(x is not None for x in (grid, split, manifest)) > 1:
        raise LayoutError("give only one of grid, manifest and split")
    rec: dict = {"kind": "single", "grid": None, "split": None, "manifest": None}
    if grid is not None:
        rec.update(kind="grid", grid=list(parse_grid(grid)))
    elif split is not None:
        rec.update(kind="split", split=list(parse_grid(split, "split")))
    elif manifest is not None:
        path = Path(manifest).resolve()
        if not path.is_file():
            raise InputFileNotFoundError(f"manifest not found: {manifest}")
        rec.update(kind="manifest", manifest={"path": str(path), "sha256": file_sha256(path)})
    return rec


def _file_key(path: Path) -> tuple[int, int] | str:
    """Identity of a file: device and inode (one file under any spelling, link or hard link)."""
    try:
        st = path.stat()
        return (st.st_dev, st.st_ino)
    except OSError:
        return str(path.resolve())


def refuse_duplicates(paths: Sequence[Path], where: str) -> None:
    """Raise :class:`LayoutError` if two of ``paths`` are the same file, however spelled.

    Parameters
    ----------
    paths : sequence of Path
        Tile files.
    where : str
        What lists them, for the message (``"the grid"``, a manifest's path).
    """
    seen: dict[tuple[int, int] | str, Path] = {}
    for p in paths:
        key = _file_key(Path(p))
        if key in seen:
            same = "" if str(seen[key]) == str(p) else f" (also given as {seen[key]})"
            raise LayoutError(
                f"file {p}{same} is given more than once in {where}; every tile must come from its own file"
            )
        seen[key] = Path(p)


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand glob patterns (sorted) and check that every file exists.

    A name that exists as a file is taken literally even if it holds glob
    characters (``tile[1].bcf`` is that file, not ``tile1.bcf``); only a name
    that is no file is expanded as a pattern.

    Raises
    ------
    InputFileNotFoundError
        A file does not exist, or a pattern matches nothing.
    LayoutError
        No inputs.
    """
    paths: list[Path] = []
    for item in inputs:
        text = str(item)
        if any(ch in text for ch in "*?[") and not Path(text).is_file():
            matches = sorted(m for m in glob.glob(text) if Path(m).is_file())
            if not matches:
                raise InputFileNotFoundError(
                    f"no file matches the pattern {text!r} (and no file has that literal name)"
                )
            paths.extend(Path(m) for m in matches)
        else:
            paths.append(Path(text))
    for p in paths:
        if not p.is_file():
            raise InputFileNotFoundError(f"input file not found: {p}")
    if not paths:
        raise LayoutError("no input files given")
    return paths


def grid_layout(paths: Sequence[Path], grid: str | Sequence[int] | None = None) -> Layout:
    """Tiles from files in row-major order on a ``ROWS x COLS`` grid."""
    paths = [Path(p) for p in paths]
    if grid is None:
        if len(paths) != 1:
            raise LayoutError(
                f"{len(paths)} input files but no layout: give --grid ROWSxCOLS (row-major) "
                "or --manifest FILE"
            )
        rows, cols = 1, 1
    else:
        rows, cols = parse_grid(grid)
    if rows * cols != len(paths):
        raise LayoutError(
            f"grid {rows}x{cols} needs {rows * cols} tile files but {len(paths)} were given"
        )
    refuse_duplicates(paths, "the grid")
    tiles = tuple(
        TileSpec(index=i, source=p, row=i // cols, col=i % cols) for i, p in enumerate(paths)
    )
    return Layout(tiles=tiles, rows=rows, cols=cols)


_STAGE_UNITS_RE = re.compile(r"#\s*stage[_ ]units\s*[:=]\s*(\S+)", re.IGNORECASE)
_COLUMN_UNITS_RE = re.compile(r"^(stage_[xy])\s*(?:[\[(](.+?)[\])]|_(\w+))?$", re.IGNORECASE)


def manifest_layout(manifest: str | Path) -> Layout:
    """Tiles from a CSV manifest.

    The manifest has a header row with columns ``path,row,col`` and optionally
    ``stage_x,stage_y``. Stage units come from a comment line
    ``# stage_units: um`` or from the column names (``stage_x[um]``,
    ``stage_x_um``). Relative paths are relative to the manifest's folder.

    Raises
    ------
    InputFileNotFoundError
        The manifest or a file it names does not exist.
    LayoutError
        Missing columns, bad numbers, duplicate or missing grid positions.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise InputFileNotFoundError(f"manifest not found: {manifest}")
    try:
        lines = manifest.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise LayoutError(
            f"{manifest}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
            "save the manifest as UTF-8 CSV"
        ) from exc
    except OSError as exc:
        raise InputFileNotFoundError(f"{manifest}: the manifest cannot be read ({exc})") from exc
    if any("\0" in line for line in lines):
        raise LayoutError(f"{manifest}: holds NUL characters; a manifest is a UTF-8 CSV text file")
    units = ""
    body = []
    for line in lines:
        if line.lstrip().startswith("#"):
            m = _STAGE_UNITS_RE.search(line)
            if m:
                units = m.group(1)
            continue
        if line.strip():
            body.append(line)
    try:
        return _manifest_entries(manifest, body, units)
    except csv.Error as exc:
        raise LayoutError(f"{manifest}: not a valid CSV file ({exc})") from exc


def _manifest_entries(manifest: Path, body: list[str], units: str) -> Layout:
    reader = csv.DictReader(body)
    fields = {}
    for name in reader.fieldnames or []:
        key = name.strip()
        m = _COLUMN_UNITS_RE.match(key)
        if m:
            fields[name] = m.group(1).lower()
            units = units or (m.group(2) or m.group(3) or "")
        else:
            fields[name] = key.lower()
    missing = {"path", "row", "col"} - set(fields.values())
    if missing:
        raise LayoutError(f"{manifest}: missing column(s) {sorted(missing)}; expected path,row,col[,stage_x,stage_y]")

    entries = []
    for lineno, raw in enumerate(reader, start=2):
        rec = {fields[k]: (v if isinstance(v, str) else "").strip() for k, v in raw.items() if k in fields}
        try:
            row, col = int(rec["row"]), int(rec["col"])
            sx = float(rec["stage_x"]) if rec.get("stage_x") else math.nan
            sy = float(rec["stage_y"]) if rec.get("stage_y") else math.nan
        except ValueError as exc:
            raise LayoutError(f"{manifest}, data line {lineno - 1}: {exc}") from exc
        if row < 0 or col < 0:
            raise LayoutError(f"{manifest}, data line {lineno - 1}: negative row/col ({row}, {col})")
        if not rec["path"]:
            raise LayoutError(f"{manifest}, data line {lineno - 1}: empty path")
        path = Path(rec["path"])
        if not path.is_absolute():
            path = manifest.parent / path
        try:
            found = path.is_file()
        except (OSError, ValueError):  # a name too long, a NUL byte
            found = False
        if not found:
            raise InputFileNotFoundError(f"{manifest}: tile file not found: {path}")
        entries.append((row, col, path, sx, sy))
    if not entries:
        raise LayoutError(f"{manifest}: no tiles listed")

    seen: dict[tuple[int, int], Path] = {}
    for row, col, path, _, _ in entries:
        if (row, col) in seen:
            raise LayoutError(
                f"{manifest}: grid position (row {row}, col {col}) is given twice: "
                f"{seen[(row, col)]} and {path}"
            )
        seen[(row, col)] = path
    refuse_duplicates([e[2] for e in entries], str(manifest))
    rows = max(e[0] for e in entries) + 1
    cols = max(e[1] for e in entries) + 1
    n_holes = rows * cols - len(seen)  # positions are distinct: a complete grid has one per cell
    if n_holes:
        # the first few holes in row-major order, found in O(tiles): a hole shows within len(seen) + 8 cells
        holes = []
        for k in range(min(rows * cols, len(seen) + 8)):
            if (k // cols, k % cols) not in seen:
                holes.append((k // cols, k % cols))
        shown = ", ".join(f"(row {r}, col {c})" for r, c in holes[:8])
        raise LayoutError(
            f"{manifest}: the {rows}x{cols} grid has {n_holes:,} missing position(s): {shown}"
            + (", ..." if n_holes > 8 else "")
        )
    entries.sort(key=lambda e: (e[0], e[1]))
    tiles = tuple(
        TileSpec(index=i, source=p, row=r, col=c, stage_x=sx, stage_y=sy)
        for i, (r, c, p, sx, sy) in enumerate(entries)
    )
    return Layout(tiles=tiles, rows=rows, cols=cols, stage_units=units)


def split_layout(path: str | Path, split: str | Sequence[int], map_shape: tuple[int, int]) -> Layout:
    """Cut one map of ``map_shape = (height, width)`` pixels into equal tiles.

    Raises
    ------
    LayoutError
        The split does not divide the map into equal tiles.
    """
    rows, cols = parse_grid(split, "split")
    height, width = map_shape
    bad = [(n, k, a) for n, k, a in ((height, rows, "height"), (width, cols, "width")) if n % k]
    if bad:
        n, k, axis = bad[0]
        raise LayoutError(
            f"{path}: a {height}x{width} px map cannot be split {rows}x{cols}: its {axis} "
            f"({n} px) is not divisible by {k}"
        )
    th, tw = height // rows, width // cols
    tiles = tuple(
        TileSpec(
            index=r * cols + c, source=Path(path), row=r, col=c,
            y0=r * th, y1=(r + 1) * th, x0=c * tw, x1=(c + 1) * tw,
        )
        for r in range(rows) for c in range(cols)
    )
    return Layout(tiles=tiles, rows=rows, cols=cols, split=(rows, cols))


def source_fingerprints(paths: Sequence[str | Path]) -> list[dict]:
    """Absolute path, size (bytes) and modification time (ns) of each source file, as the store records them.

    A store is reused only when these still match: a file changed in place
    (same path, new acquisition) has another size or modification time.
    """
    out = []
    for p in paths:
        p = Path(p).resolve()
        st = p.stat()
        out.append({"path": str(p), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)})
    return out
