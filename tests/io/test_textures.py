"""UDIM texture sets: discovery, per-kind reading rules, all-or-nothing writing with the same names."""

from __future__ import annotations

import numpy as np
import pytest

from expdiff_core.errors import ExpDiffInputError, PublishError
from expdiff_core.io.images import linear_to_srgb, read_image, write_image
from expdiff_core.io.textures import TextureSet, discover_udim_set, read_texture_set, write_texture_set

TILES = (1001, 1002, 1011)


def tile_maps(channels: int = 3, size: int = 16, low: float = 0.0, high: float = 1.0) -> dict[int, np.ndarray]:
    """One (C, H, W) map per tile, each tile different."""
    rng = np.random.default_rng(3)
    return {t: rng.uniform(low, high, (channels, size, size)).astype(np.float32) for t in TILES}


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_three_tiles_are_discovered_and_written_back_with_the_same_names(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_texture_set(tile_maps(), src, "albedo")
    assert names(src) == ["albedo.1001.exr", "albedo.1002.exr", "albedo.1011.exr"]
    for spelling in (src / "albedo.<UDIM>.exr", src / "albedo.1002.exr", src):
        assert list(discover_udim_set(spelling, "albedo")) == list(TILES)
    maps = read_texture_set(src / "albedo.<UDIM>.exr", "albedo")
    write_texture_set(maps, dst, "albedo")
    assert names(dst) == names(src)


def test_a_prefixed_name_is_kept_when_written_back(tmp_path):
    write_texture_set(tile_maps(), tmp_path / "src", "normal", name="Head_normal", ext="png", pixel_type="uint16")
    tiles = discover_udim_set(tmp_path / "src" / "Head_normal.1001.png")
    write_texture_set(read_texture_set(tiles, "normal"), tmp_path / "dst", "normal", name="Head_normal",
                      ext="png", pixel_type="uint16")
    assert names(tmp_path / "dst") == ["Head_normal.1001.png", "Head_normal.1002.png", "Head_normal.1011.png"]


def test_texture_set_from_folder_finds_each_kind(tmp_path):
    write_texture_set(tile_maps(), tmp_path, "albedo")
    write_texture_set(tile_maps(channels=1), tmp_path, "roughness", ext="png", pixel_type="uint16")
    textures = TextureSet.from_folder(tmp_path)
    assert textures.kinds == ["albedo", "roughness"] and textures.udims() == list(TILES)
    assert [p.name for p in textures.paths()][:2] == ["albedo.1001.exr", "albedo.1002.exr"]
    assert textures.read("roughness")[1011].shape == (3, 16, 16)


def test_a_file_without_a_tile_number_is_tile_1001(tmp_path):
    write_image(tmp_path / "albedo.exr", np.full((4, 4, 3), 0.5, np.float32))
    assert discover_udim_set(tmp_path / "albedo.exr") == {1001: tmp_path / "albedo.exr"}
    assert list(TextureSet.from_folder(tmp_path)["albedo"]) == [1001]


def test_exr_and_png_round_trips_keep_values(tmp_path):
    maps = tile_maps()
    half = read_texture_set(write_texture_set(maps, tmp_path / "h", "specular"), "specular")
    png8 = read_texture_set(write_texture_set(maps, tmp_path / "p", "specular", ext="png", pixel_type="uint8"),
                            "specular")
    for t in TILES:
        assert np.abs(half[t] - maps[t]).max() <= 2.0**-11  # half: 11 significant bits, values <= 1
        assert np.abs(png8[t] - maps[t]).max() <= 0.5 / 255 + 1e-7  # raw data map: half an 8-bit level


def test_albedo_in_8_bit_files_is_srgb_decoded_and_data_maps_are_raw(tmp_path):
    linear = np.full((1, 8, 8), 0.2, np.float32)
    encoded = linear_to_srgb(linear)  # 0.2 linear is stored as ~0.4845
    for kind in ("albedo", "roughness"):
        write_image(tmp_path / f"{kind}.1001.png", np.repeat(encoded, 3, 0).transpose(1, 2, 0), pixel_type="uint8")
    albedo = read_texture_set(tmp_path / "albedo.1001.png", "albedo")[1001]
    roughness = read_texture_set(tmp_path / "roughness.1001.png", "roughness")[1001]
    assert np.abs(albedo - 0.2).max() <= 0.5 / 255 * 2.28  # half a level through the decode curve's slope
    assert np.abs(roughness - encoded[0, 0, 0]).max() <= 0.5 / 255 + 1e-7


def test_albedo_written_to_png_is_srgb_encoded(tmp_path):
    maps = {1001: np.full((3, 8, 8), 0.2, np.float32)}
    path = write_texture_set(maps, tmp_path, "albedo", ext="png", pixel_type="uint8")[1001]
    assert abs(read_image(path)[0, 0, 0] - 0.4845) < 1.0 / 255  # the file holds the sRGB curve


def test_one_channel_specular_is_replicated_to_three(tmp_path):
    maps = tile_maps(channels=1)
    back = read_texture_set(write_texture_set(maps, tmp_path, "specular", pixel_type="float"), "specular")
    assert back[1002].shape == (3, 16, 16) and np.array_equal(back[1002], np.repeat(maps[1002], 3, 0))


def test_mismatched_tile_resolutions_name_both_files_and_sizes(tmp_path):
    write_texture_set({1001: np.zeros((3, 32, 32), np.float32)}, tmp_path, "albedo")
    write_texture_set({1002: np.zeros((3, 16, 32), np.float32)}, tmp_path, "albedo")
    with pytest.raises(ExpDiffInputError, match=r"albedo\.1002\.exr: is 32x16 but albedo\.1001\.exr is 32x32"):
        read_texture_set(tmp_path, "albedo")


@pytest.mark.parametrize("kind, channels", [("albedo", 4), ("normal", 1), ("roughness", 2)])
def test_wrong_channel_count_is_refused(tmp_path, kind, channels):
    write_image(tmp_path / f"{kind}.1001.exr", np.zeros((8, 8, channels), np.float32))
    with pytest.raises(ExpDiffInputError, match=rf"{kind}\.1001\.exr: has {channels} channel\(s\); {kind} maps need"):
        read_texture_set(tmp_path, kind)


def test_missing_tile_for_the_mesh_is_named(tmp_path):
    write_texture_set(tile_maps(), tmp_path, "albedo")
    with pytest.raises(ExpDiffInputError, match=r"no albedo tile for UDIM 1003: the mesh uses 1001–1003, "
                                                r"found 1001–1002, 1011"):
        read_texture_set(tmp_path, "albedo", expected_udims=[1001, 1002, 1003])


def test_missing_texture_file_names_it(tmp_path):
    with pytest.raises(ExpDiffInputError, match=r"albedo\.1001\.exr: texture file not found"):
        read_texture_set(tmp_path / "albedo.1001.exr", "albedo")


def test_corrupt_tile_in_a_set_is_named(tmp_path):
    paths = write_texture_set(tile_maps(), tmp_path, "albedo")
    data = paths[1011].read_bytes()
    paths[1011].write_bytes(data[: len(data) // 2])
    with pytest.raises(ExpDiffInputError, match=r"albedo\.1011\.exr: corrupt or truncated image"):
        read_texture_set(tmp_path, "albedo")


def test_signed_normal_map_is_refused_with_a_hint(tmp_path):
    write_texture_set(tile_maps(low=-1.0), tmp_path, "normal", pixel_type="float")
    with pytest.raises(ExpDiffInputError, match=r"normal\.1001\.exr: holds values in \[-0\.99\d*, 0\.99\d*\]; "
                                                r"normal maps must lie in \[0, 1\]; tangent-space normals must use"):
        read_texture_set(tmp_path, "normal")


def test_filter_overshoot_is_clipped(tmp_path):
    maps = {1001: np.full((3, 4, 4), 1.01, np.float32)}  # a sharpening filter's ringing
    back = read_texture_set(write_texture_set(maps, tmp_path, "albedo", pixel_type="float"), "albedo")
    assert back[1001].max() == 1.0


def test_position_maps_keep_negative_values_and_refuse_integer_files(tmp_path):
    maps = tile_maps(low=-1.0)
    back = read_texture_set(write_texture_set(maps, tmp_path, "position", pixel_type="float"), "position")
    assert np.array_equal(back[1011], maps[1011])
    with pytest.raises(ExpDiffInputError, match="position maps are signed"):
        write_texture_set(maps, tmp_path / "png", "position", ext="png", pixel_type="uint16")


def test_two_files_for_one_tile_are_refused(tmp_path):
    write_texture_set(tile_maps(), tmp_path, "albedo")
    write_texture_set({1002: tile_maps()[1002]}, tmp_path, "albedo", ext="png", pixel_type="uint8")
    with pytest.raises(ExpDiffInputError, match=r"albedo\.1002\.png: tile 1002 is also in albedo\.1002\.exr"):
        discover_udim_set(tmp_path, "albedo")


def test_failed_set_write_leaves_no_tile_and_no_temp(tmp_path):
    maps = tile_maps()
    maps[1011][0, 2, 2] = np.nan
    with pytest.raises(ExpDiffInputError, match=r"albedo\.1011\.exr: refusing to write NaN"):
        write_texture_set(maps, tmp_path, "albedo")
    assert not any(tmp_path.iterdir())


def test_mismatched_resolutions_are_not_written(tmp_path):
    maps = tile_maps()
    maps[1002] = maps[1002][:, :8]
    with pytest.raises(ExpDiffInputError, match=r"albedo\.1002\.exr: is 16x8 but albedo\.1001\.exr is 16x16"):
        write_texture_set(maps, tmp_path, "albedo")
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_no_overwrite_writes_none_of_the_set(tmp_path):
    write_texture_set({1002: tile_maps()[1002]}, tmp_path, "albedo")
    with pytest.raises(PublishError, match=r"albedo\.1002\.exr: already exists"):
        write_texture_set(tile_maps(), tmp_path, "albedo", overwrite=False)
    assert names(tmp_path) == ["albedo.1002.exr"]
