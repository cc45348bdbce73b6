"""ExpDiff core: neutral face -> FACS expression blendshapes with dynamic BRDF maps.

Plain Python + PyTorch; no Prefect imports anywhere under this package.
"""

import os as _os
from pathlib import Path as _Path

__version__ = "0.1.0"

# USD builds its schema registry once, the first time any stage is opened; putting our schema plugin on
# PXR_PLUGINPATH_NAME before pxr is imported anywhere makes the schemas known whatever opens a stage first.
_PLUGIN_DIR = str(_Path(__file__).resolve().parent.parent / "usd_schemas")
if _os.path.isdir(_PLUGIN_DIR) and _PLUGIN_DIR not in _os.environ.get("PXR_PLUGINPATH_NAME", "").split(_os.pathsep):
    _os.environ["PXR_PLUGINPATH_NAME"] = _os.pathsep.join(
        p for p in (_PLUGIN_DIR, _os.environ.get("PXR_PLUGINPATH_NAME", "")) if p)
