"""Device selection: auto picks what exists; impossible requests are clear errors."""

import pytest
import torch

from expdiff_core.device import resolve_device
from expdiff_core.errors import ExpDiffInputError


def test_auto_picks_cuda_only_when_available():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_cpu_is_always_available():
    assert resolve_device("cpu") == torch.device("cpu")


def test_garbage_device_is_rejected():
    with pytest.raises(ExpDiffInputError, match="not one of auto, cpu, cuda"):
        resolve_device("tpu:3")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_says_so():
    with pytest.raises(ExpDiffInputError, match="CUDA is not available"):
        resolve_device("cuda:0")
