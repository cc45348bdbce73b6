"""UV-space representation: texel tables per UDIM tile, position maps, sampling back, mesh recovery (Eq. 9)."""

from .position_map import PositionMapConfig, position_maps, sample_displacements
from .raster import (UVRaster, VertexSampler, bilinear_sample, build_uv_raster, rasterize_attribute,
                     rasterize_maps, rasterize_triangle_attribute, sample_attribute, uv_raster)
from .recover import follow_nearest, recover_mesh

__all__ = [
    "PositionMapConfig", "UVRaster", "VertexSampler", "bilinear_sample", "build_uv_raster", "follow_nearest",
    "position_maps", "rasterize_attribute", "rasterize_maps", "rasterize_triangle_attribute", "recover_mesh",
    "sample_attribute", "sample_displacements", "uv_raster",
]
