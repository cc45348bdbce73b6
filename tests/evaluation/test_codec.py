"""codec_round_trip: what the latent codec keeps, absolute and through Eq. 9, on real procedural identities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from expdiff_core.evaluation.codec import codec_round_trip
from expdiff_core.evaluation.metrics import fvd
from expdiff_core.io.dataset import Dataset
from expdiff_core.models.vae import LatentCodec, offline_vae_config

from .conftest import UNITS


class LosslessCodec:
    """Encode and decode are the identity: isolates the measurement from any codec error."""

    def encode(self, maps, kind):
        return torch.as_tensor(maps).float()

    def decode(self, latents, kind, channels=None):
        return latents


pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_lossless_codec_reaches_the_raster_round_trip_and_transfers_textures_exactly(procedural_dataset):
    data = Dataset(procedural_dataset)
    result = codec_round_trip(data, LosslessCodec(), data.subjects[:2], progress=False)
    assert result.samples == 2 * len(UNITS)
    neutral_copy = np.mean([fvd(data.load_vertices(s, "neutral"), data.load_vertices(s, e))
                            for s in data.subjects[:2] for e in UNITS])
    assert result.neutral_copy_mm == pytest.approx(neutral_copy)
    # Only the 64^2 raster round trip remains (lip rims share texels at this size): well under a tenth of
    # what the expressions move, through Eq. 9 and from the template alike.
    assert result.eq9_mm < 0.1 * neutral_copy and result.absolute_mm < 0.1 * neutral_copy
    # Neutral + (expression - neutral) is the expression; PSNR is capped at 100 dB. Normals come back at
    # the neutral's vector lengths, which differ from the expression's by half-float rounding (~5e-4).
    assert all(result.transfer_psnr[k] >= 99.0 for k in ("albedo", "specular", "roughness"))
    assert result.transfer_psnr["normal"] > 80.0


def test_a_real_codec_is_measured_on_every_kind(procedural_dataset):
    data = Dataset(procedural_dataset)
    codec = LatentCodec.from_config(offline_vae_config(block_out_channels=[8, 8, 16, 16], norm_num_groups=8),
                                    seed=0, device="cpu")
    result = codec_round_trip(data, codec, data.subjects[:1], progress=False)
    assert set(result.psnr) == set(result.transfer_psnr) == set(data.map_kinds)
    # An untrained codec decodes noise: its geometry is far off and its difference is not the expression's.
    assert result.absolute_mm > result.neutral_copy_mm and result.eq9_mm > 0


class LosslessChangeCodec(LosslessCodec):
    encodes_change = True


def test_a_change_codec_is_read_as_decoded_changes_on_the_true_neutral(procedural_dataset):
    data = Dataset(procedural_dataset)
    plain = codec_round_trip(data, LosslessCodec(), data.subjects[:1], progress=False, textures=False)
    change = codec_round_trip(data, LosslessChangeCodec(), data.subjects[:1], progress=False, textures=False)
    assert change.samples == len(UNITS) and np.isnan(change.absolute_mm)
    # the same raster round trip as the absolute reading of a lossless codec, and still vertices stay still
    assert change.eq9_mm == pytest.approx(plain.eq9_mm, rel=1e-3)
    assert change.still_mm < 1e-4 and change.psnr == {}


def test_pooling_changes_loses_geometry_as_the_factor_grows(procedural_dataset):
    from expdiff_core.evaluation.codec import PooledChanges

    data = Dataset(procedural_dataset)
    errors = [codec_round_trip(data, PooledChanges(f), data.subjects[:1], progress=False, textures=False).eq9_mm
              for f in (2, 8)]
    assert errors[0] < errors[1]
