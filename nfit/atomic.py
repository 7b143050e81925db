"""Write files all-or-nothing: into a temporary file beside the target, then rename.

A crash, an exception or Ctrl-C midway leaves the previous file (or no file) in
place, never a partial one. ``os.replace`` is atomic on POSIX and Windows when
both paths are on one filesystem, which writing beside the target guarantees.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from nfit.errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: equal after resolving symlinks, or one inode (a hard link)."""
    a, b = Path(a), Path(b)
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def guard_output(path: Path, inputs: Iterable[str | Path] = (), *, ours: Callable[[Path], bool] | None = None,
                 force: bool = False) -> None:
    """Refuse an output that would destroy something: any of ``inputs`` (the same file through a
    symlink or a hard link), or an existing file that nfit did not write (``ours`` tells) unless
    ``force``. Then the usual checks of :func:`check_writable`."""
    for src in inputs:
        if same_file(path, src):
            raise OutputError(path, f"is the input {str(src)!r}: writing it would destroy it (choose another output)")
    if path.is_file() and not force and (ours is None or not ours(path)):
        raise OutputError(path, "exists and was not written by nfit: give --force to replace it, or another output")
    check_writable(path)


def make_dirs(path: Path) -> None:
    """``mkdir -p`` whose failures (read-only, not a folder) are one OutputError naming the folder."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(path, f"cannot create folder ({err.strerror or err})") from None


def check_writable(path: Path) -> None:
    """Fail early, before hours of work, if ``path`` cannot be created."""
    parent = path.parent
    if path.is_dir():
        raise OutputError(path, "is a directory")
    if not parent.exists():
        raise OutputError(path, f"directory {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise OutputError(path, f"{str(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK):
        raise OutputError(path, "permission denied")


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it becomes ``path``, else it vanishes.

    The temporary name keeps ``path``'s extension, for writers that pick a format by it.
    """
    path = Path(path)
    check_writable(path)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    except OSError as err:
        raise OutputError(path, f"cannot create file ({err.strerror})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(path, f"cannot write ({err.strerror or err})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_frames_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it becomes the folder ``path``, else it vanishes.

    For outputs that are many files (a video's PNG frames). An existing empty folder
    is replaced; a non-empty one is refused up front, so a new render never mixes its
    frames with, or silently deletes, an older one.
    """
    path = Path(path)
    _check_folder_target(path)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}"))  # as stale_temporaries finds
    except OSError as err:
        raise OutputError(path, f"cannot create folder ({err.strerror})") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        _check_folder_target(path)  # again: something may have appeared meanwhile
        if path.is_dir():
            path.rmdir()  # empty, checked; os.replace cannot replace a folder on Windows
        os.replace(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(path, f"cannot write ({err.strerror or err})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_folder_target(path: Path) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(path, f"directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(path, "permission denied")
    if path.exists() and not path.is_dir():
        raise OutputError(path, "exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        raise OutputError(path, "folder exists and is not empty (remove it or choose another)")


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporary files (or frame folders) of the atomic writers for ``path`` that a killed process left behind.

    An exception cleans its temporary up; SIGKILL or a power cut cannot. The previous
    ``path`` is intact either way; these are only litter, safe to delete once no
    other process is writing ``path``.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp{glob.escape(path.suffix)}"))
