"""Write files all-or-nothing: into a temporary file beside the target, then rename.

A crash, an exception or Ctrl-C midway leaves the previous file (or no file) in
place, never a partial one. ``os.replace`` is atomic on POSIX and Windows when
both paths are on one filesystem, which writing beside the target guarantees.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nfit.errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporary files of :func:`atomic_output` for ``path`` that a killed process left behind.

    An exception cleans its temporary up; SIGKILL or a power cut cannot. The previous
    ``path`` is intact either way; these are only litter, safe to delete once no
    other process is writing ``path``.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp{glob.escape(path.suffix)}"))
