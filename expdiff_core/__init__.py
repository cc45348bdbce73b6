"""ExpDiff core: neutral face -> FACS expression blendshapes with dynamic BRDF maps.

Plain Python + PyTorch; no Prefect imports anywhere under this package.
"""

__version__ = "0.1.0"
