"""USD delivery: versioned character assets with blendshapes and UDIM BRDF materials, and their validation.

Importing this package registers ExpDiff's schema plugin (``usd_schemas``) with USD, which must happen before
the process opens its first stage.
"""

from __future__ import annotations

from usd_schemas import register as _register_schemas

_register_schemas()

from .schema import FACS_API, PROVENANCE_API, FacsInfo, Provenance, facs_info_for, read_facs_api, read_provenance_api  # noqa: E402
from .read import channel_weights, posed_points  # noqa: E402
from .validate import ValidationIssue, find_entry_layer, validate_asset, validate_stage  # noqa: E402
from .writer import ExportOptions, PublishedAsset, next_version, publish_character, write_asset  # noqa: E402

__all__ = [
    "FACS_API", "PROVENANCE_API", "FacsInfo", "Provenance", "facs_info_for", "read_facs_api", "read_provenance_api",
    "channel_weights", "posed_points",
    "ValidationIssue", "find_entry_layer", "validate_asset", "validate_stage",
    "ExportOptions", "PublishedAsset", "next_version", "publish_character", "write_asset",
]
