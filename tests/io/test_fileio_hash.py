"""Streamed file hashes for ingest and provenance (expdiff_core.fileio)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.fileio import HASH_CHUNK_BYTES, file_sha256, hash_files


def test_file_sha256_streams_files_larger_than_one_chunk(tmp_path):
    data = np.random.default_rng(1).bytes(2 * HASH_CHUNK_BYTES + 123)  # three reads, the last one partial
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_hash_files_maps_each_path_in_order(tmp_path):
    paths = [tmp_path / "b.txt", tmp_path / "a.txt"]
    for p in paths:
        p.write_text(p.name)
    hashes = hash_files(paths)
    assert list(hashes) == [str(p) for p in paths]
    assert hashes[str(paths[1])] == hashlib.sha256(b"a.txt").hexdigest()


def test_hashing_a_missing_file_names_it(tmp_path):
    with pytest.raises(ExpDiffInputError, match=r"gone\.exr: file not found"):
        hash_files([tmp_path / "gone.exr"])


def test_published_files_and_folders_get_umask_modes_not_private_ones(tmp_path):
    import os
    import stat

    from expdiff_core.fileio import atomic_dir, atomic_path

    umask = os.umask(0)
    os.umask(umask)
    with atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("x")
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "f").write_text("y")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~umask
