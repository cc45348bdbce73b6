"""Atomic writes (everything ExpDiff publishes goes to a temp path beside the target, then is renamed) and
streamed file hashes for ingest and provenance."""

from __future__ import annotations

import contextlib
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
