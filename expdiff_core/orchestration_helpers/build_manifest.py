"""The nightly build manifest: a TOML list of characters, each a neutral asset + expressions + model.

Example (paths relative to the manifest's folder)::

    [defaults]
    model = "models:/expdiff@champion"
    expressions = "all"               # every FACS unit, or a list of units / free prompts
    seed = 0

    [[characters]]
    name = "alice"
    mesh = "alice/neutral.obj"
    textures = { albedo = "alice/tex/albedo.<UDIM>.exr", normal = "alice/tex" }
    expressions = ["jawOpen", "mouthSmile_L"]   # optional: overrides the default
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from .. import facs
from ..errors import ExpDiffInputError

CHARACTER_KEYS = {"name", "mesh", "textures", "expressions", "model", "seed", "steps"}
DEFAULT_KEYS = {"model", "expressions", "seed", "steps"}
ALL_UNITS = "all"


def _resolve(base: Path, value: str) -> str:
    path = Path(os.path.expanduser(value))
    return str(path if path.is_absolute() else base / path)


def read_build_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Characters of a manifest, defaults applied and paths made absolute.

    Each: {"name", "mesh", "textures": {kind: path}, "expressions": [...], "model", "seed", "steps"}.
    Errors name the manifest and the problem (TOML syntax, unknown or missing keys, duplicate names).
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExpDiffInputError(path, "build manifest not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ExpDiffInputError(path, f"invalid TOML: {exc}") from None
    defaults = data.get("defaults", {})
    unknown = sorted(set(defaults) - DEFAULT_KEYS) + sorted(set(data) - {"defaults", "characters"})
    if unknown:
        raise ExpDiffInputError(path, f"unknown key(s) {unknown}")
    entries = data.get("characters")
    if not isinstance(entries, list) or not entries:
        raise ExpDiffInputError(path, "no [[characters]] entries")
    base = path.resolve().parent
    characters, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"characters[{i}]"
        extra = sorted(set(entry) - CHARACTER_KEYS)
        if extra:
            raise ExpDiffInputError(path, f"{where}: unknown key(s) {extra}; known: {sorted(CHARACTER_KEYS)}")
        merged = {**defaults, **entry}
        missing = [k for k in ("name", "mesh", "textures", "model") if k not in merged]
        if missing:
            raise ExpDiffInputError(path, f"{where}: missing {missing}")
        name = str(merged["name"])
        if name in seen:
            raise ExpDiffInputError(path, f"{where}: character {name!r} listed twice")
        seen.add(name)
        if not isinstance(merged["textures"], dict) or "albedo" not in merged["textures"]:
            raise ExpDiffInputError(path, f"{where}: textures must be a table with at least 'albedo'")
        expressions = merged.get("expressions", ALL_UNITS)
        if expressions == ALL_UNITS:
            expressions = list(facs.UNIT_NAMES)
        if not isinstance(expressions, list) or not expressions:
            raise ExpDiffInputError(path, f"{where}: expressions must be \"all\" or a non-empty list")
        characters.append({
            "name": name, "mesh": _resolve(base, str(merged["mesh"])),
            "textures": {str(k): _resolve(base, str(v)) for k, v in merged["textures"].items()},
            "expressions": [str(e) for e in expressions], "model": str(merged["model"]),
            "seed": int(merged.get("seed", 0)),
            "steps": None if merged.get("steps") is None else int(merged["steps"]),
        })
    return characters
