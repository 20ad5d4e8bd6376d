"""Label sources (folders of `{label}_{id}.png`, CSV files) and the class <-> index mapping."""
from __future__ import annotations

import csv
import re
from pathlib import Path, PurePosixPath
from typing import Sequence

from dlcv.errors import DlcvError
from dlcv.fileio import atomic_path

_LABELLED_NAME = re.compile(r"^(?P<label>[^_]+)_(?P<id>.+)$")


def label_from_filename(path: Path) -> str | None:
    """`12_345.png` -> "12"; None for names without a label prefix (test images like `0001.png`)."""
    match = _LABELLED_NAME.match(path.stem)
    return match["label"] if match else None


def folder_labels(files: Sequence[Path]) -> list[str]:
    labels = []
    for f in files:
        label = label_from_filename(f)
        if label is None:
            raise DlcvError(f"{f}: expected a file name '{{label}}_{{id}}{f.suffix}' in a labelled folder")
        labels.append(label)
    return labels


def read_csv_rows(path: str | Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV as dicts, after checking that the header has every required column."""
    path = Path(path)
    if not path.is_file():
        raise DlcvError(f"CSV file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DlcvError(f"{path}: missing column(s) {', '.join(missing)}; header is {','.join(header) or '(empty)'}")
        reader.fieldnames = header
        rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise DlcvError(f"{path}: no rows")
    return rows


def read_labelled_csv(path: str | Path) -> tuple[list[str], list[str]]:
    """(filenames, labels) of a `filename,label` or `id,filename,label` CSV."""
    rows = read_csv_rows(path, ("filename", "label"))
    return [r["filename"] for r in rows], [r["label"] for r in rows]


def files_in(folder: str | Path, names: Sequence[str], source: str | Path) -> list[Path]:
    """`folder / name` for the file names of a CSV, refusing any name that would read outside the folder
    (an absolute path or a `..` part), with the CSV line that holds it (line 1 is the header)."""
    files = []
    for line, name in enumerate(names, start=2):
        parts = PurePosixPath(name.replace("\\", "/"))
        if not name or parts.is_absolute() or ".." in parts.parts or re.match(r"^[A-Za-z]:", name):
            problem = "is empty" if not name else "is outside the image folder"
            raise DlcvError(f"{source}, line {line}: file name {name!r} {problem}; names must be relative to "
                            f"{folder} without '..'")
        files.append(Path(folder) / name)
    return files


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)


def sorted_classes(labels: Sequence[str]) -> list[str]:
    """Class names in index order: numerically when every label is an integer, else alphabetically."""
    unique = set(labels)
    if all(re.fullmatch(r"-?\d+", s) for s in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def encode(labels: Sequence[str], classes: Sequence[str], source: str) -> list[int]:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise DlcvError(f"{source}: label(s) {unknown[:10]} not among the {len(classes)} training classes")
    return [index[s] for s in labels]
