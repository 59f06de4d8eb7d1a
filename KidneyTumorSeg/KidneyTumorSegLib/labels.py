"""Labels of the KiTS23 convention, their display names and colors, and Slicer terminology entries.

Values follow KiTS21/23: 0 background, 1 kidney, 2 tumor, 3 cyst. Kidneys carry a left/right type
modifier; tumors and cysts are post-coordinated findings (category "Morphologically Altered Structure")
whose anatomic region is the kidney with a left/right region modifier, as Slicer and TotalSegmentator
encode renal cysts. Codes were checked against Slicer's terminology files (see docs/decisions.md): all
three types are in the "DICOM master list" context; the tumor is SCT 108369006 "Neoplasm" (the KiTS tumor
class), rather than "Mass", which KiTS uses for tumor and cyst together.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Sequence


class Label(enum.IntEnum):
    BACKGROUND = 0
    KIDNEY = 1
    TUMOR = 2
    CYST = 3


class Side(str, enum.Enum):
    """Patient side; in LPS coordinates patient left is +x."""

    RIGHT = "right"
    LEFT = "left"


@dataclass(frozen=True)
class Code:
    """One coded concept: (coding scheme designator, code value, code meaning)."""

    scheme: str
    value: str
    meaning: str

    def serialize(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


EMPTY_CODE_STRING = "^^"

# SNOMED CT concepts (coding scheme "SCT"), as in Slicer's DICOM master terminology lists.
ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED_STRUCTURE = Code("SCT", "49755003", "Morphologically Altered Structure")
KIDNEY = Code("SCT", "64033007", "Kidney")
NEOPLASM = Code("SCT", "108369006", "Neoplasm")
CYST = Code("SCT", "367643001", "Cyst")
SIDE_CODES = {Side.RIGHT: Code("SCT", "24028007", "Right"), Side.LEFT: Code("SCT", "7771000", "Left")}

CATEGORY_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

DISPLAY_NAMES = {Label.BACKGROUND: "Background", Label.KIDNEY: "Kidney", Label.TUMOR: "Kidney tumor",
                 Label.CYST: "Kidney cyst"}
# Recommended display colors of Slicer's terminology (0-255 RGB): kidney 185,102,83; the tumor uses the
# neoplasm/mass color 144,238,144; the cyst 205,205,100.
COLORS = {Label.BACKGROUND: (0, 0, 0), Label.KIDNEY: (185, 102, 83), Label.TUMOR: (144, 238, 144),
          Label.CYST: (205, 205, 100)}
FOREGROUND = (Label.KIDNEY, Label.TUMOR, Label.CYST)


@dataclass(frozen=True)
class Terminology:
    category: Code
    type: Code
    type_modifier: Optional[Code] = None
    region: Optional[Code] = None
    region_modifier: Optional[Code] = None

    def serialize(self) -> str:
        """The string Slicer stores in a segment's ``TerminologyEntry`` tag.

        Seven ``~``-separated parts, empty codes as ``^^`` and nothing after the last part: the form of
        vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry (a trailing ``|``, as some extensions
        write, would become part of the last code meaning).
        """
        def s(code: Optional[Code]) -> str:
            return code.serialize() if code else EMPTY_CODE_STRING
        return "~".join([CATEGORY_CONTEXT, s(self.category), s(self.type), s(self.type_modifier),
                         ANATOMIC_CONTEXT, s(self.region), s(self.region_modifier)])


def terminology(label: Label, side: Optional[Side] = None) -> Terminology:
    """Terminology of a segment; ``side`` is the patient side, None when unknown or both."""
    label = Label(label)
    side_code = SIDE_CODES[Side(side)] if side is not None else None
    if label == Label.KIDNEY:
        return Terminology(ANATOMICAL_STRUCTURE, KIDNEY, type_modifier=side_code)
    if label in (Label.TUMOR, Label.CYST):
        finding = NEOPLASM if label == Label.TUMOR else CYST
        return Terminology(MORPHOLOGICALLY_ALTERED_STRUCTURE, finding, region=KIDNEY,
                           region_modifier=side_code)
    raise ValueError("The background has no terminology entry; only kidney, tumor and cyst segments do.")


def segment_name(label: Label, side: Optional[Side] = None) -> str:
    """Human name of a segment, e.g. 'Left kidney', 'Right kidney tumor', 'Kidney cyst'."""
    label = Label(label)
    name = DISPLAY_NAMES[label]
    if side is None:
        return name
    return f"{Side(side).value.capitalize()} {name[0].lower()}{name[1:]}"


def color_float(label: Label) -> tuple[float, float, float]:
    """Color as 0..1 floats, the form Slicer's segment API takes."""
    return tuple(c / 255.0 for c in COLORS[Label(label)])  # type: ignore[return-value]


# -- auxiliary outputs ------------------------------------------------------------------------------
# A network may predict extra classes during training only: anatomy that looks like kidney or tumor
# (liver, spleen, the renal hilum, the rest of the body), learnt as explicit negatives. Their names
# start with this prefix in the checkpoint's label list; at inference they count as background.
AUXILIARY_PREFIX = "aux_"


def is_auxiliary(name: str) -> bool:
    return str(name).startswith(AUXILIARY_PREFIX)


def main_labels(names: Sequence[str]) -> list:
    """The label names without the auxiliary ones (the background first, as in the network's outputs)."""
    return [n for n in names if not is_auxiliary(n)]


# A stage 1 may learn tumor + cyst as one class of their own (decision 79); at inference it counts as kidney.
MASSES = "masses"


def has_masses(names: Sequence[str]) -> bool:
    """Whether a stage's labels name the masses class among their main (non-auxiliary) labels."""
    return MASSES in main_labels(names)


def merge_auxiliary(probabilities, names: Sequence[str]):
    """(C, ...) class probabilities -> (C_main, ...): each auxiliary class's probability is added to the
    background's, so that the result sums to one over the main labels. Returned as is without auxiliaries."""
    n_main = len(main_labels(names))
    if n_main == len(names):
        return probabilities
    if any(is_auxiliary(n) for n in list(names)[:n_main]):
        raise ValueError(f"Auxiliary outputs must follow the main labels: {list(names)}.")
    out = probabilities[:n_main].copy()
    out[0] += probabilities[n_main:].sum(axis=0)
    return out
