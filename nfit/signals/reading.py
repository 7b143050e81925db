"""What every media reader shares: the checks before decoding, and one error for every
way a decoder can fail (Pillow, libsndfile and FFmpeg raise many types, and all mean
"not a file of this kind that we can read")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nfit.errors import InputError, NfitError


def check_file(path: Path) -> None:
    """A readable, non-empty regular file, or an InputError saying why not."""
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a directory, not a file")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes)")


def short(err: BaseException) -> str:
    """An exception's first line, at most 160 characters: enough to say why, never a dump."""
    # FFmpeg's errors (PyAV) carry a plain message (strerror) besides an errno and the URL already named
    text = getattr(err, "strerror", None) if type(err).__module__.startswith("av") else None
    text = text or (str(err).strip().splitlines()[0] if str(err).strip() else "unknown error")
    return text[:160]


@contextmanager
def decoding(path: Path, kind: str) -> Iterator[None]:
    """Turn any failure inside into one InputError naming ``path``; ``kind``: "an image", "audio", "a video"."""
    try:
        yield
    except NfitError:
        raise
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except (FileNotFoundError, IsADirectoryError) as err:  # gone between listing and reading
        raise InputError(path, f"cannot read ({type(err).__name__}: {err.strerror})") from None
    except MemoryError:
        raise InputError(path, f"not enough memory to decode this {kind.split()[-1]}") from None
    except Exception as err:  # noqa: BLE001
        raise InputError(path, f"cannot decode as {kind} ({type(err).__name__}: {short(err)})") from None
