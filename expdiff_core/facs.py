"""The expression vocabulary: 56 FACS expression units plus ``neutral``; the one source of truth.

Names follow ARKit / ICT-FaceKit. Each unit carries its FACS action unit code(s), the side it acts on, the
face region, and a plain-English, side-explicit prompt for the text encoder.

Side convention: ``_L`` is the *character's* left, which is +X on our template (the face looks down +Z,
Y is up). ICT-FaceKit uses the same convention (its ``mouthSmile_L`` moves vertices at +X).

ICT-FaceKit (``ict_facekit_deltas.npz``, 57 shapes) -> unit:

=================================  =====================================================================
ICT shape                          unit
=================================  =====================================================================
PupilDilate_L, PupilDilate_R       none: pupil size, not a facial expression (skipped)
the other 55 shapes                the unit of the same name (identity mapping, see ``ICT_UNIT_NAMES``)
(absent)                           ``tongueOut`` (ARKit, AU19): ICT-FaceKit has no tongue shape
=================================  =====================================================================

Notes on codes where FACS and ARKit do not line up one to one:

- ``cheekRaiser`` and ``cheekSquint`` are both AU6 (orbicularis oculi, pars orbitalis); ICT splits AU6
  into the whole malar cheek lift (``cheekRaiser``) and the tighter squeeze of the ring below the eye
  (``cheekSquint``, which ICT's data shows as a smaller, more local version of the same motion).
- ``mouthClose`` is AU8 (lips toward each other); in ARKit/ICT it is meant to be combined with ``jawOpen``
  (ICT's shape alone lifts the lower lip ~4 cm through the upper one); ours is the standalone lip closure.
- ``mouthLeft``/``mouthRight`` have no dedicated FACS code; the sideways shift of the closed lips is made by
  the unilateral lip-corner pullers, so we tag AU14 + AU20 (buccinator and risorius of the pulling side).
- ``mouthShrugUpper``/``mouthShrugLower`` are both AU17 (mentalis): the lower-lip and upper-lip halves of
  the chin raiser's shrug (Meta's face tracking calls them CHIN_RAISER_T / CHIN_RAISER_B).
- Gaze: AU61 eyes turn left, AU62 eyes turn right, AU63 eyes up, AU64 eyes down. ``eyeLookIn_L`` turns the
  left eye toward the nose, i.e. to the character's right (AU62); ``eyeLookOut_L`` is AU61, and the mirror
  for the right eye.
- ``jawLeft``/``jawRight`` (AU30 jaw sideways) move the chin toward the character's left/right.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from .errors import ExpDiffInputError

Side = Literal["L", "R", "both"]

NEUTRAL = "neutral"


@dataclass(frozen=True)
class ExpressionUnit:
    """One FACS expression unit.

    name: ARKit/ICT name, e.g. ``"mouthSmile_L"``. action_units: FACS codes, e.g. ``("AU12",)``.
    side: ``"L"`` (character's left, +X), ``"R"`` or ``"both"``. region: ``"brow"``, ``"eye"``, ``"cheek"``,
    ``"nose"``, ``"mouth"``, ``"jaw"`` or ``"tongue"``. prompt: plain-English instruction naming the side.
    """

    name: str
    action_units: tuple[str, ...]
    side: Side
    region: str
    prompt: str


def _pair(stem: str, aus: tuple[str, ...] | dict[str, tuple[str, ...]], region: str,
          prompt: str) -> tuple[ExpressionUnit, ExpressionUnit]:
    """Left and right unit of one action; ``prompt`` has ``{side}`` for "left"/"right"."""
    out = []
    for side, word in (("L", "left"), ("R", "right")):
        codes = aus[side] if isinstance(aus, dict) else aus
        out.append(ExpressionUnit(f"{stem}_{side}", codes, side, region, prompt.format(side=word)))
    return out[0], out[1]


UNITS: tuple[ExpressionUnit, ...] = (
    # brows
    *_pair("browDown", ("AU4",), "brow", "lower and pull together the {side} eyebrow in a frown"),
    *_pair("browInnerUp", ("AU1",), "brow", "raise the inner end of the {side} eyebrow"),
    *_pair("browOuterUp", ("AU2",), "brow", "raise the outer end of the {side} eyebrow"),
    # cheeks
    *_pair("cheekPuff", ("AU34",), "cheek", "puff out the {side} cheek with air"),
    *_pair("cheekRaiser", ("AU6",), "cheek", "raise the {side} cheek up toward the eye"),
    *_pair("cheekSquint", ("AU6",), "cheek", "squeeze the {side} cheek up under the eye in a squint"),
    # eyes
    *_pair("eyeBlink", ("AU45",), "eye", "close the {side} eye"),
    *_pair("eyeLookDown", ("AU64",), "eye", "look down with the {side} eye"),
    *_pair("eyeLookIn", {"L": ("AU62",), "R": ("AU61",)}, "eye",
           "turn the {side} eye inward toward the nose"),
    *_pair("eyeLookOut", {"L": ("AU61",), "R": ("AU62",)}, "eye",
           "turn the {side} eye outward toward the ear"),
    *_pair("eyeLookUp", ("AU63",), "eye", "look up with the {side} eye"),
    *_pair("eyeSquint", ("AU7", "AU44"), "eye", "narrow the {side} eye by tightening the eyelids"),
    *_pair("eyeWide", ("AU5",), "eye", "open the {side} eye wide by raising the upper eyelid"),
    # jaw
    ExpressionUnit("jawForward", ("AU29",), "both", "jaw", "push the jaw forward"),
    ExpressionUnit("jawLeft", ("AU30",), "L", "jaw", "move the jaw to the left"),
    ExpressionUnit("jawOpen", ("AU26", "AU27"), "both", "jaw", "open the jaw wide"),
    ExpressionUnit("jawRight", ("AU30",), "R", "jaw", "move the jaw to the right"),
    # mouth
    ExpressionUnit("mouthClose", ("AU8",), "both", "mouth", "close the lips toward each other"),
    *_pair("mouthDimple", ("AU14",), "mouth",
           "tighten the {side} corner of the mouth back into a dimple"),
    *_pair("mouthFrown", ("AU15",), "mouth", "pull the {side} corner of the mouth down"),
    ExpressionUnit("mouthFunnel", ("AU22",), "both", "mouth", "funnel the lips outward into an O"),
    ExpressionUnit("mouthLeft", ("AU14", "AU20"), "L", "mouth", "shift the closed lips to the left"),
    *_pair("mouthLowerDown", ("AU16",), "mouth", "pull the {side} side of the lower lip down"),
    *_pair("mouthPress", ("AU24",), "mouth", "press the lips together on the {side} side"),
    ExpressionUnit("mouthPucker", ("AU18",), "both", "mouth", "pucker the lips forward as for a kiss"),
    ExpressionUnit("mouthRight", ("AU14", "AU20"), "R", "mouth", "shift the closed lips to the right"),
    ExpressionUnit("mouthRollLower", ("AU28",), "both", "mouth", "roll the lower lip in over the teeth"),
    ExpressionUnit("mouthRollUpper", ("AU28",), "both", "mouth", "roll the upper lip in over the teeth"),
    ExpressionUnit("mouthShrugLower", ("AU17",), "both", "mouth",
                   "raise the chin and push the lower lip up"),
    ExpressionUnit("mouthShrugUpper", ("AU17",), "both", "mouth",
                   "push the upper lip up and out in a shrug"),
    *_pair("mouthSmile", ("AU12",), "mouth", "raise the {side} corner of the mouth in a smile"),
    *_pair("mouthStretch", ("AU20",), "mouth", "stretch the {side} corner of the mouth out sideways"),
    *_pair("mouthUpperUp", ("AU10",), "mouth", "raise the {side} side of the upper lip"),
    # nose
    *_pair("noseSneer", ("AU9",), "nose", "wrinkle the {side} side of the nose in a sneer"),
    # tongue
    ExpressionUnit("tongueOut", ("AU19",), "both", "tongue", "stick the tongue out"),
)

UNIT_NAMES: tuple[str, ...] = tuple(u.name for u in UNITS)
EXPRESSIONS: tuple[str, ...] = (NEUTRAL, *UNIT_NAMES)

# ICT-FaceKit shape name -> our unit name; every ICT expression shape except the two pupil shapes.
ICT_UNIT_NAMES: dict[str, str] = {name: name for name in UNIT_NAMES if name != "tongueOut"}
ICT_SKIPPED_SHAPES: tuple[str, ...] = ("PupilDilate_L", "PupilDilate_R")
UNITS_MISSING_FROM_ICT: tuple[str, ...] = ("tongueOut",)

_BY_NAME = {u.name: u for u in UNITS}


def unit(name: str) -> ExpressionUnit:
    """The unit called ``name``; an unknown name raises ExpDiffInputError listing the closest names."""
    try:
        return _BY_NAME[name]
    except KeyError:
        near = difflib.get_close_matches(name, UNIT_NAMES, n=5, cutoff=0.5)
        if not near:
            near = [n for n in UNIT_NAMES if n.lower().startswith(name[:4].lower())][:5]
        hint = f"; did you mean {', '.join(near)}?" if near else f"; known units: {', '.join(UNIT_NAMES)}"
        raise ExpDiffInputError(None, f"unknown expression unit {name!r}{hint}") from None


def mirror_name(name: str) -> str:
    """The unit acting on the other side (``mouthSmile_L`` <-> ``mouthSmile_R``, ``jawLeft`` <-> ``jawRight``);
    units acting on both sides mirror to themselves."""
    unit(name)
    for a, b in (("_L", "_R"), ("Left", "Right")):
        if name.endswith(a):
            return name[: -len(a)] + b
        if name.endswith(b):
            return name[: -len(b)] + a
    return name

