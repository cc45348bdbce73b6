"""Upscaling stage: official Real-ESRGAN weights, the guided upscaler (Eq. 8), tiled inference."""
