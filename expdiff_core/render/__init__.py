"""Preview rendering without OpenGL: a software rasteriser with BRDF shading, and labelled contact sheets."""

from .contact_sheet import contact_sheet, moving_vertices, render_expression_sheet, write_contact_sheet
from .preview import (DEFAULT_GROUP_MATERIALS, DEFAULT_HIDDEN_GROUPS, DEFAULT_SKIN, FRONT_CAMERA, MAP_KINDS,
                      STUDIO_LIGHTS, Camera, Fragments, Light, Material, View, frame_view, rasterize,
                      render_preview, to_display, write_preview)

__all__ = [
    "Camera", "Fragments", "Light", "Material", "View", "DEFAULT_GROUP_MATERIALS", "DEFAULT_HIDDEN_GROUPS",
    "DEFAULT_SKIN", "FRONT_CAMERA", "MAP_KINDS", "STUDIO_LIGHTS", "contact_sheet", "frame_view",
    "moving_vertices", "rasterize", "render_expression_sheet", "render_preview", "to_display",
    "write_contact_sheet", "write_preview",
]
