"""ExpDiff's codeless USD schema plugin (``ExpDiffFacsAPI``, ``ExpDiffProvenanceAPI``).

``register()`` makes this process's USD aware of the schemas; it must run before the process opens its first
stage, because USD builds its schema registry once (importing ``expdiff_core.usd`` calls it). A DCC finds the
schemas when this folder is on ``PXR_PLUGINPATH_NAME``.
"""

from __future__ import annotations

from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent
PLUGIN_NAME = "expdiffSchemas"
SCHEMAS = ("ExpDiffFacsAPI", "ExpDiffProvenanceAPI")


def register() -> Path:
    """Register the schema plugin with USD (idempotent) and check USD knows the schemas; returns the folder.

    Raises RuntimeError when USD's schema registry was already built without them (a stage was opened
    before this call): register earlier, or put this folder on PXR_PLUGINPATH_NAME.
    """
    from pxr import Plug, Usd

    registry = Plug.Registry()
    if registry.GetPluginWithName(PLUGIN_NAME) is None:
        registry.RegisterPlugins(str(PLUGIN_DIR))
    missing = [s for s in SCHEMAS if Usd.SchemaRegistry().FindAppliedAPIPrimDefinition(s) is None]
    if missing:
        raise RuntimeError(
            f"{PLUGIN_DIR / 'plugInfo.json'}: USD does not know the schemas {missing}: its schema registry was "
            "built before ExpDiff registered its plugin. Import expdiff_core.usd (or call usd_schemas.register()) "
            f"before opening any USD stage, or set PXR_PLUGINPATH_NAME={PLUGIN_DIR}")
    return PLUGIN_DIR
