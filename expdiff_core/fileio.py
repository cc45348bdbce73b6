"""Atomic writes (everything ExpDiff publishes goes to a temp path beside the target, then is renamed) and
streamed file hashes for ingest and provenance."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

# mkstemp/mkdtemp create private (0600/0700) entries; published files get the usual umask-based modes.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp file path in ``target``'s folder; on success rename it onto ``target``.

    On any exception the temp file is removed and ``target`` is untouched. The temp name keeps the
    target's suffix so format-sniffing writers (OpenImageIO, USD) pick the right format.
    """
    from .errors import PublishError

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and target.exists():
        raise PublishError(f"{target}: already exists and will not be overwritten")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside ``target``; on success rename it to ``target`` (which must not exist).

    A failure removes the temp folder, so no partial folder is ever visible under ``target``'s name.
    """
    from .errors import PublishError

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise PublishError(f"{target}: already exists and will not be overwritten")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


HASH_CHUNK_BYTES = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (8K EXR tiles do not need to fit in memory)."""
    from .errors import ExpDiffInputError

    path = Path(path)
    if not path.is_file():
        raise ExpDiffInputError(path, "file not found")
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK_BYTES):
                h.update(chunk)
    except OSError as exc:
        raise ExpDiffInputError(path, f"cannot read file ({exc.strerror or exc})") from None
    return h.hexdigest()


def hash_files(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """{str(path): sha256 hex} for each file, in the given order, with a progress bar on a terminal."""
    from tqdm.auto import tqdm

    paths = [Path(p) for p in paths]
    return {str(p): file_sha256(p) for p in tqdm(paths, desc="hashing", unit="file", disable=None, leave=False)}


# ------------------------------------------------------------------ environment failures (cannot heal)
# OS errors that a retry cannot fix: the file system is full or read-only, permission is missing, or a path
# component is a file where a folder is needed (and the reverse).
UNHEALABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                               errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG})
_CAUSES = {
    errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder", errno.EISDIR: "is a folder, not a file",
    errno.ENAMETOOLONG: "file name too long",
}


def existing_ancestor(path: str | os.PathLike) -> Path:
    """``path`` itself if it exists, else its nearest existing parent (``/`` at worst)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free to this user on the file system holding ``path`` (or its nearest existing parent)."""
    try:
        st = os.statvfs(existing_ancestor(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def is_unhealable(exc: BaseException) -> bool:
    """True for errors a retry cannot fix: ``ExpDiffEnvironmentError`` and OSErrors in ``UNHEALABLE_ERRNOS``."""
    from .errors import ExpDiffEnvironmentError

    if isinstance(exc, ExpDiffEnvironmentError):
        return True
    return isinstance(exc, OSError) and exc.errno in UNHEALABLE_ERRNOS


def environment_error(exc: OSError, path: str | os.PathLike | None = None):
    """An ``ExpDiffEnvironmentError`` naming the path and the cause of an OS error (free space when full)."""
    from .errors import ExpDiffEnvironmentError

    where = path if path is not None else (exc.filename or None)
    cause = _CAUSES.get(exc.errno) or (exc.strerror or str(exc))
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) and where is not None:
        free = free_bytes(where)
        if free is not None:
            cause += f" ({format_bytes(free)} free on {_mount_point(where)})"
    return ExpDiffEnvironmentError(where, cause, exc.errno)


def diagnose_write_failure(path: str | os.PathLike, needed_bytes: int = 0, message: str = ""):
    """Why a write to ``path`` failed when the writer (OpenImageIO, USD) only says it failed: an
    ``ExpDiffEnvironmentError`` when the file system is full (free space below ``needed_bytes`` or the
    writer's ``message`` says so), read-only or not writable; None when none of these explains it."""
    folder = existing_ancestor(Path(path).parent)
    text = message.lower()
    if "no space left" in text or "quota" in text:
        return environment_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path)
    free = free_bytes(folder)
    if free is not None and free < max(needed_bytes, 1):
        return environment_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path)
    if "read-only" in text or _read_only(folder):
        return environment_error(OSError(errno.EROFS, os.strerror(errno.EROFS)), path)
    if not os.access(folder, os.W_OK | os.X_OK):
        return environment_error(OSError(errno.EACCES, os.strerror(errno.EACCES)), path)
    return None


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _mount_point(path: str | os.PathLike) -> Path:
    p = existing_ancestor(path)
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p
