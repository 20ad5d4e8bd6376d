"""Labels: the course's `{label}_{id}` file names (the one place that rule is read), CSV files of file names
and labels, and the class <-> index mapping. Which of them a dataset uses is data/layouts.py's call."""
from __future__ import annotations

import csv
import logging
import re
from pathlib import Path, PurePosixPath
from typing import Sequence

from dlcv.errors import DlcvError
from dlcv.fileio import atomic_path

log = logging.getLogger("dlcv")

_LABELLED_NAME = re.compile(r"^(?P<label>[^_]+)_(?P<id>.+)$")
_INTEGER = re.compile(r"-?\d+")
MAX_WARNINGS = 5  # per kind and file: a warning names the first few cases, then counts the rest


def label_from_filename(path: Path) -> str | None:
    """`12_345.png` -> "12"; None for names without a label prefix (test images like `0001.png`)."""
    match = _LABELLED_NAME.match(path.stem)
    return match["label"] if match else None


def folder_labels(files: Sequence[Path]) -> list[str]:
    """The `{label}_{id}` labels of a folder's files. Where most labels are numbers, a file whose label is
    not (a stray `IMG_0001.png` would become class 'IMG') is warned about by name."""
    labels = []
    for f in files:
        label = label_from_filename(f)
        if label is None:
            raise DlcvError(f"{f}: expected a file name '{{label}}_{{id}}{f.suffix}' in a labelled folder")
        labels.append(canonical(label))
    odd = [f for f, label in zip(files, labels) if not _INTEGER.fullmatch(label)]
    if odd and len(odd) < len(files) / 2:
        log.warning("%s: %d file(s) whose label is not a number while %d are, e.g. %s (class '%s'): stray "
                    "files? each such label becomes a class", odd[0].parent, len(odd), len(files) - len(odd),
                    odd[0].name, label_from_filename(odd[0]))
    return labels


def read_csv_rows(path: str | Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV as dicts, after checking that the header has every required column."""
    path = Path(path)
    if not path.is_file():
        raise DlcvError(f"CSV file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise DlcvError(f"{path}: missing column(s) {', '.join(missing)}; header is "
                                f"{','.join(header) or '(empty)'}")
            reader.fieldnames = header
            rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except UnicodeDecodeError:
        raise DlcvError(f"{path}: not UTF-8 text (a CSV file is expected)") from None
    except csv.Error as exc:
        raise DlcvError(f"{path}: not a readable CSV ({exc})") from None
    except PermissionError:
        raise DlcvError(f"cannot read {path}: permission denied") from None
    if not rows:
        raise DlcvError(f"{path}: no rows")
    return rows


def canonical(label: str) -> str:
    """"07", "+7", "7.0" and "7" are the same integer class (a spreadsheet writes 7 as 7.0); other labels
    (wnids, names) stay as they are."""
    whole = re.fullmatch(r"([+-]?\d+)(?:\.0*)?", label)
    return str(int(whole[1])) if whole else label


def read_labelled_csv(path: str | Path, allow_empty: bool = False) -> tuple[list[str], list[str]]:
    """(filenames, canonical labels) of a `filename,label` or `id,filename,label` CSV. An empty label is an
    error naming its line (unless `allow_empty`: a prediction left blank is just wrong); a file listed
    twice with different labels is warned about, naming it."""
    rows = read_csv_rows(path, ("filename", "label"))
    names, labels, seen, repeats = [], [], {}, []
    for line, r in enumerate(rows, start=2):
        if not r["label"] and not allow_empty:
            raise DlcvError(f"{path}, line {line}: empty label for {r['filename']!r}")
        label = canonical(r["label"])
        if r["filename"] in seen:
            repeats.append((line, r["filename"], label, seen[r["filename"]]))
        seen.setdefault(r["filename"], label)
        names.append(r["filename"])
        labels.append(label)
    for line, name, label, first in repeats[:MAX_WARNINGS]:  # every row counts (e.g. twice in an accuracy)
        again = f"with label {label} (first: {first})" if label != first else "with the same label"
        log.warning("%s, line %d: %s is listed again %s", path, line, name, again)
    if len(repeats) > MAX_WARNINGS:
        log.warning("%s: %d more file names listed again", path, len(repeats) - MAX_WARNINGS)
    return names, labels


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


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence], predictions: bool = False) -> None:
    """`predictions`: a file the user named, in ground truth's format: its authorship is recorded
    (fileio.check_replaceable)."""
    with atomic_path(path, record_authorship=predictions) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)


def sorted_classes(labels: Sequence[str]) -> list[str]:
    """Class names in index order: numerically when every label is an integer, else alphabetically."""
    unique = set(labels)
    if all(_INTEGER.fullmatch(s) for s in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def encode(labels: Sequence[str], classes: Sequence[str], source: str, unknown_as: int | None = None) -> list[int]:
    """Class indices. A label outside `classes` is an error, or with `unknown_as` a warning and that index
    (for monitors, which must not stop the main job: -1 is never predicted, so scored as wrong)."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        message = f"{source}: label(s) {unknown[:10]} not among the {len(classes)} training classes"
        if unknown_as is None:
            raise DlcvError(message)
        log.warning("%s; their images are scored as wrong", message)
    return [index.get(s, unknown_as) for s in labels]


def resolve_path(root: Path, name: str | None) -> Path | None:
    if name is None:
        return None
    path = Path(name)
    return path if path.is_absolute() else root / path
