"""Datasets and models for the evaluation tests, made by our own generators (session-scoped: built once)."""

from __future__ import annotations

import numpy as np
import pytest

from expdiff_core import facs
from expdiff_core.io.dataset import BRDF_KINDS, DatasetSpec, DatasetWriter
from expdiff_core.synth.factory import ProceduralSource, iter_expressions, skin_rasters, write_dataset

from ..helpers.tiny_models import tiny_pipeline_folder

UNITS = ["jawOpen", "mouthSmile_L"]
RESOLUTION = 64  # the factory's smallest map size; twice the tiny model's, so transfer_map upsamples


def _source(units=UNITS) -> ProceduralSource:
    """The procedural face source limited to a few units (the others listed as absent)."""
    source = ProceduralSource()
    source.units = list(units)
    source.absent_units = {u: "not in this test dataset" for u in facs.UNIT_NAMES if u not in units}
    return source


@pytest.fixture(scope="session")
def procedural_dataset(tmp_path_factory):
    """4 procedural identities (2 train, 1 val, 1 test) x (neutral + jawOpen + mouthSmile_L) at 64^2."""
    return write_dataset(tmp_path_factory.mktemp("eval-data") / "procedural", _source(), identities=4,
                         resolution=RESOLUTION, seed=0, progress=False)


@pytest.fixture(scope="session")
def linear_dataset(tmp_path_factory):
    """Identities whose expressions are exactly linear: subject k = its own neutral + the same delta per unit.

    Neutrals are 4 procedural identities; the per-unit vertex deltas and map deltas are those the factory
    makes for one reference identity. Maps: 0.25 + 0.5 * reference map + 0.02 k for the neutral plus
    0.1 * the reference map change (stays inside [0, 1], so nothing clips); normal maps are the reference
    identity's own for every subject (unit vectors, so renormalising changes nothing). Subjects s0-s2 are
    train, s3 test.
    """
    source = _source()
    rasters = skin_rasters(source, RESOLUTION)
    reference = source.identity(11)
    ref = {name: (vertices, maps) for name, vertices, maps in iter_expressions(source, reference, rasters)}
    spec = DatasetSpec(units=UNITS, map_kinds=BRDF_KINDS, resolution=RESOLUTION, udims=sorted(rasters),
                       skin_groups=source.skin_groups, absent_units=source.absent_units,
                       generator={"name": "tests/evaluation/conftest.py linear_dataset", "seed": 11})
    root = tmp_path_factory.mktemp("eval-linear") / "linear"
    with DatasetWriter(root, source.template, spec) as writer:
        for k in range(4):
            neutral = source.identity(100 + k).neutral
            for name in spec.expressions():
                vertices = neutral + (ref[name][0] - ref[facs.NEUTRAL][0])
                maps = {}
                for kind in BRDF_KINDS:
                    tiles = {}
                    for udim, image in ref[name][1][kind].items():
                        base = ref[facs.NEUTRAL][1][kind][udim]
                        tiles[udim] = image if kind == "normal" else \
                            0.25 + 0.5 * base + 0.02 * k + 0.1 * (image - base)
                    maps[kind] = tiles
                writer.write_expression(f"s{k}", name, vertices.astype(np.float32), maps)
            writer.add_subject(f"s{k}", "test" if k == 3 else "train", {"seed": 100 + k})
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """An untrained tiny pipeline folder on the procedural template (text encoder conditioning)."""
    return tiny_pipeline_folder(tmp_path_factory.mktemp("eval-tiny"))


@pytest.fixture(scope="session")
def tiny_onehot_model(tmp_path_factory):
    """The same tiny pipeline with the "one-hot" ablation (fixed random prompt embeddings)."""
    return tiny_pipeline_folder(tmp_path_factory.mktemp("eval-tiny-onehot"), text_conditioning="one-hot")
