"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A killed process therefore never leaves a half-written CSV, mask, figure or checkpoint behind.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from dlcv.errors import DlcvError


@contextlib.contextmanager
def atomic_path(target: str | Path, record_authorship: bool = False) -> Iterator[Path]:
    """Yields a temporary path in the target's folder; renamed onto `target` only if the block succeeds.
    OS failures (full disk, read-only folder, a file where a folder should be) become one DlcvError
    naming the target and the OS's reason; a device, FIFO or socket target is refused (the rename would
    replace it). `record_authorship`: the new content's sha256 goes into the target's authorship record
    before the rename (see check_replaceable), so a kill at any moment leaves a file dlcv recognises."""
    target = Path(target)
    refuse_special_file(target, "output")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix + ".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise DlcvError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        if record_authorship:
            _record(target, _sha256(tmp))
        os.replace(tmp, target)
    except OSError as exc:
        raise DlcvError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def reading(path: str | Path, what: str, error: type[Exception] = DlcvError) -> Iterator[None]:
    """The operating system's reasons a file cannot be opened, as one line naming `what` and the path."""
    try:
        yield
    except FileNotFoundError:
        raise error(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a directory, not a file") from None
    except PermissionError:
        raise error(f"cannot read {what} {path}: permission denied") from None


def check_output(path: str | Path, what: str, inputs: Iterable[str | Path | None] = (),
                 folder: bool = False) -> Path:
    """The one rule for every path a command writes, checked before any work. Refused, naming `what`:
    an empty path; a device, FIFO or socket (an atomic write would replace it by a regular file, /dev/null
    included); a folder where a file is due (`folder=False`) or the reverse; a parent that is a file or
    not writable; and any of the command's `inputs` (the files and folders it reads; None entries are
    skipped), through symbolic links and `..`, or, for a file, an existing file inside an input folder
    (an image of the folder it predicts, a file of the run folder it reads)."""
    if not str(path).strip():
        raise DlcvError(f"{what}: an empty path")
    path = Path(path)
    refuse_special_file(path, what)
    if folder and path.exists() and not path.is_dir():
        raise DlcvError(f"{what} {path} is a file, not a folder")
    if not folder and path.is_dir():
        raise DlcvError(f"{what} {path} is an existing folder; give a file name")
    target = path.resolve()
    shown = str(path) if str(target) == os.path.abspath(path) else f"{path} (a link to {target})"
    for source in inputs:
        if source is None or not str(source).strip():
            continue
        real = Path(source).resolve()
        if target == real:
            also = "" if os.path.abspath(source) == os.path.abspath(path) else f" ({source})"
            raise DlcvError(f"{what} {shown} is an input of this command too{also}: it would be overwritten; "
                            f"pick another output {'folder' if folder else 'file'}")
        if not folder and real.is_dir() and target.is_relative_to(real) and path.exists():
            raise DlcvError(f"{what} {shown} is an existing file inside the input folder {source}: it would be "
                            "overwritten; write outside that folder")
    if folder and path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise DlcvError(f"{what} {path}: permission denied")
        return path
    _check_parent(path, what)
    return path


# Prediction CSVs have ground truth's own format (`filename,label`, `id,filename,label`), so no content tells
# them apart, and the graded format allows no mark inside them. A hidden record beside the file,
# `.NAME.dlcv`, lists the sha256 of what dlcv wrote there: an existing file is replaced only when its bytes
# are one of those (a file edited since, ground truth, anything else is refused; nothing is trusted by name).
def authorship_record(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.dlcv")


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded(path: Path) -> list[str]:
    """The sha256 digests the authorship record of `path` lists ([] without a readable record)."""
    record = authorship_record(path)
    if not record.is_file():  # nor a FIFO: reading one would wait forever
        return []
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    digests = data.get("sha256") if isinstance(data, dict) else None
    return [d for d in digests if isinstance(d, str)] if isinstance(digests, list) else []


def _record(target: Path, new_digest: str) -> None:
    """The record of `target` lists its current content (when dlcv wrote that too) and `new_digest`."""
    current = _sha256(target) if target.is_file() else None
    keep = [d for d in _recorded(target) if d == current]
    record = {"written_by": "dlcv", "file": target.name, "sha256": list(dict.fromkeys([*keep[:1], new_digest])),
              "why": "dlcv replaces the file only while its content is one it wrote (its sha256 listed here)"}
    write_text(authorship_record(target), json.dumps(record, indent=1) + "\n")


def check_replaceable(path: str | Path, what: str) -> None:
    """Before a command writes the output file `path`, a file the user named: an existing one is replaced
    only when dlcv wrote its present content (or it is empty: nothing is lost)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    with reading(path, what):
        digest = _sha256(path)
    recorded = _recorded(path)
    if digest in recorded:
        return
    reason = "its content changed since dlcv wrote it" if recorded else \
        "dlcv did not write it (ground truth, or a file of yours?)"
    raise DlcvError(f"{what} {path} exists and {reason}: it is never replaced; pick another file name, or "
                    "delete it first")


def starts_with(path: str | Path, text: str) -> bool:
    """Whether a regular file begins with `text` (how dlcv recognises the outputs whose format it alone
    writes: a report, an `ssl table`)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(text.encode())) == text.encode()
    except OSError:
        return False


def run_folder_of(ckpt: str | Path | None) -> Path | None:
    """The run folder a checkpoint lies in (RUN/checkpoints/NAME.pt, RUN holding config.yaml), else None:
    its files are inputs of a command that reads the checkpoint."""
    if ckpt is None:
        return None
    parent = Path(ckpt).resolve().parent
    if parent.name == "checkpoints" and (parent.parent / "config.yaml").is_file():
        return parent.parent
    return None


def refuse_special_file(path: str | Path, what: str) -> None:
    """A device, FIFO or socket (or a link to one) is never written: writing a file there renames over
    it, and a FIFO would block."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing (or unreadable, which the write itself reports)
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise DlcvError(f"{what} {path} is a device, FIFO or socket, not a regular file or folder; pick another path")


def _check_parent(path: Path, what: str) -> None:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:  # the nearest existing ancestor decides
        parent = parent.parent
    if not parent.is_dir():
        raise DlcvError(f"{what} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DlcvError(f"{what} {path}: {parent} is not writable (permission denied)")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def torch_save(obj: object, target: str | Path) -> None:
    """torch.save, written atomically. torch's zip writer reports a failed write (a full disk, a file-size
    limit) as a RuntimeError, not an OSError: it becomes the same one line as any other failed write."""
    import torch
    with atomic_path(target) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError:
            full = shutil.disk_usage(tmp.parent).free < 1 << 20
            reason = os.strerror(errno.ENOSPC) if full else "the write failed (a full disk or a file-size limit?)"
            raise DlcvError(f"cannot write {target}: {reason}") from None


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


class DirectoryLock:
    """An exclusive advisory lock (flock) on `folder/.lock`, held while one command writes the folder.

    The kernel drops it when the process dies, so a killed run never leaves a stale lock; a second
    command on the same folder is refused at once, naming the holder's pid."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._fh = None

    def acquire(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fh = open(self.folder / ".lock", "a+")
        except OSError as exc:
            raise DlcvError(f"cannot write to {self.folder}: {exc.strerror}") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise DlcvError(f"{self.folder} is in use by another dlcv process (pid {holder}); wait for it to "
                            "finish or pick another output folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the file releases the flock
            self._fh = None

    def __enter__(self) -> "DirectoryLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
