"""``expdiff usd``: validate delivered USD assets; show where the schema plugin lives for DCCs."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("usd", help="validate USD assets; locate the schema plugin",
                       description="USD delivery tools: validate a published character asset, and print the "
                       "folder to put on PXR_PLUGINPATH_NAME so a DCC (Houdini, Maya) knows ExpDiff's schemas.")
    usub = p.add_subparsers(dest="usd_command", metavar="ACTION", required=True)

    v = usub.add_parser(
        "validate", help="run OpenUSD's validators and ExpDiff's TD checklist on an asset",
        description="Open the asset (payloads loaded) and run OpenUSD's UsdValidation validators (stage "
        "metadata, SkelBindingAPI, normal-map textures, material bindings, composition errors, missing "
        "references, ...) plus ExpDiff's TD checklist: defaultPrim/upAxis/metersPerUnit, root kind component, "
        "skeleton binding, blendshape arrays and order, time range, raw data maps, normal map decoding, UDIM "
        "tiles 1001-1100 in every material variant (`expdiff usd checks` lists them). Every issue is printed as "
        "SEVERITY [check] site: message. Exit status: 0 when no error was found (warnings allowed unless "
        "--strict), 1 when the asset has errors, 2 when PATH cannot be opened.")
    v.add_argument("path", metavar="PATH",
                   help="the asset's entry layer (<character>.usda), a version folder (<character>/v003), or a "
                   "character folder (its latest version is checked)")
    v.add_argument("--strict", action="store_true", help="treat warnings as errors")
    v.add_argument("--json", action="store_true", help="print the issues as a JSON list instead of text")
    v.set_defaults(func=_validate)

    c = usub.add_parser("checks", help="list the checks `usd validate` runs",
                        description="List ExpDiff's TD checks and the OpenUSD validators `usd validate` runs.")
    c.set_defaults(func=_checks)

    pp = usub.add_parser("plugin-path", help="print the schema plugin folder for PXR_PLUGINPATH_NAME",
                         description="Print the folder holding ExpDiff's codeless schema plugin (plugInfo.json). "
                         "Add it to PXR_PLUGINPATH_NAME before starting Houdini or Maya, e.g. "
                         "export PXR_PLUGINPATH_NAME=\"$(expdiff usd plugin-path):$PXR_PLUGINPATH_NAME\".")
    pp.set_defaults(func=_plugin_path)


def _validate(args: argparse.Namespace) -> int:
    from ..usd.validate import find_entry_layer, validate_asset

    entry = find_entry_layer(args.path)
    issues = validate_asset(entry)
    failing = [i for i in issues if i.is_error or (args.strict and i.severity == "warning")]
    if args.json:
        print(json.dumps([{"severity": i.severity, "check": i.check, "site": i.site, "message": i.message}
                          for i in issues], indent=2))
    else:
        for issue in issues:
            print(issue)
        n_err = sum(i.is_error for i in issues)
        n_warn = sum(i.severity == "warning" for i in issues)
        verdict = "FAILED" if failing else "ok"
        print(f"{entry}: {verdict} ({n_err} error(s), {n_warn} warning(s))")
    return 1 if failing else 0


def _checks(args: argparse.Namespace) -> int:
    from pxr import UsdValidation

    from ..usd.validate import TD_CHECKS, USD_VALIDATOR_KEYWORDS

    print("ExpDiff TD checks:")
    for name, what in TD_CHECKS.items():
        print(f"  {name:<28}{what}")
    print("OpenUSD validators:")
    registry = UsdValidation.ValidationRegistry()
    for meta in registry.GetValidatorMetadataForKeywords(list(USD_VALIDATOR_KEYWORDS)):
        print(f"  {meta.name:<60}{meta.doc.splitlines()[0] if meta.doc else ''}")
    return 0


def _plugin_path(args: argparse.Namespace) -> int:
    from usd_schemas import PLUGIN_DIR

    print(PLUGIN_DIR)
    return 0
