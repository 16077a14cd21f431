"""Atomic file writes: a reader sees the old file or the whole new one, never half.

Temporary files and folders get the modes a plain ``open()`` or ``mkdir`` would give under
the user's umask. tempfile's are 0600/0700, which is right for /tmp but wrong for results
on a shared mount or read by an MLflow server running as another user.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

# Marks this module's temporary files, so that a later run can tell the ones a killed
# writer left behind (SIGKILL runs no cleanup) from anything else in the folder.
_TMP_TAG = ".skrd4ad-tmp-"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _write_error(path: Path, exc: OSError) -> UserError:
    return UserError(
        f"cannot write {path} ({exc.strerror or exc}); any previous {path.name} is kept: "
        "free space, fix the permissions, or choose another output path"
    )


def _temp_beside(path: Path) -> tuple[int, Path]:
    """A new file beside ``path``, opened for writing with mode 0666 less the umask."""
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory, not a file", str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}{_TMP_TAG}{uuid.uuid4().hex[:12]}"
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
    except OSError as exc:
        raise _write_error(path, exc) from exc


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (torch.jit.save,
    torch.onnx.export); renamed over ``path`` only when the block succeeds."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, writer: Callable) -> None:
    """Call ``writer(file)`` on a temporary file beside ``path``, then rename it over
    ``path``. A failure (a full disk, say) leaves the previous file and no temporary one,
    and is a UserError naming ``path``."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        writer(f)
        f.flush()
        os.fsync(f.fileno())


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of writes into ``folder`` that never finished (a killed
    process); call it only where no other process writes into ``folder`` at the time."""
    stale = sorted(Path(folder).glob(f".*{_TMP_TAG}*"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def make_dir(parent: Path | None = None, prefix: str = "skrd4ad-") -> Path:
    """A new, uniquely named folder under ``parent`` (default the system's temporary
    folder) with the modes mkdir gives under the umask (tempfile.mkdtemp's are 0700)."""
    parent = Path(parent or tempfile.gettempdir())
    while True:
        path = parent / f"{prefix}{uuid.uuid4().hex[:12]}"
        try:
            path.mkdir(mode=0o777)
            return path
        except FileExistsError:
            continue


@contextmanager
def temporary_dir(parent: Path | None = None, prefix: str = "skrd4ad-") -> Iterator[Path]:
    """:func:`make_dir`, removed with everything in it when the block ends, on failure too."""
    path = make_dir(parent, prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def ensure_writable_dir(path: Path, what: str = "output directory") -> Path:
    """Create ``path`` if needed and prove it writable, or raise a UserError naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(
            f"{what} {path} is not writable ({exc.strerror or exc}); "
            "choose another --out or fix its permissions"
        ) from exc
    return path
