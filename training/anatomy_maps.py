"""Real whole-abdomen label maps (TotalSegmentator, AMOS, FLARE22) in one anatomy vocabulary.

Each source numbers its structures differently; ``load_anatomy`` maps a file's values onto ``ANATOMY``
(the values written to ``anatomy.nii.gz``) and returns its two kidneys separately, because the synthetic
generator replaces them with KiTS23 kidneys. Which source a file is comes from its folder: a
``classes.csv`` beside it (TotalSegmentator: structures by name), else the file name (``FLARE22_*``,
``amos_*``).

The validation CTs (``shared/data/real_ct``: 3D-IRCADb patient 1 and TotalSegmentator subject s0009) and
their anatomy are refused, whatever the folder they are found in (see ``datasets.heldout``).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from KidneyTumorSegLib.geometry import Image
from KidneyTumorSegLib.image_io import read_labelmap

from .datasets.heldout import check_not_held_out

# The vocabulary of anatomy.nii.gz (0 = outside the body). "body" is every other tissue inside the body
# (fat, body wall, what the source map leaves unlabelled): the "rest of the body" for training negatives.
ANATOMY: Dict[str, int] = {name: i + 1 for i, name in enumerate((
    "liver", "spleen", "pancreas", "stomach", "gallbladder", "duodenum", "small_bowel", "colon", "esophagus",
    "aorta", "inferior_vena_cava", "portal_splenic_vein", "other_vessel", "adrenal_gland", "urinary_bladder",
    "prostate_uterus", "lung", "heart", "bone", "muscle", "renal_sinus_fat", "collecting_system",
    "renal_vessel", "other_organ", "body"))}
KIDNEY_RIGHT, KIDNEY_LEFT = -1, -2  # markers in the source tables: removed from the anatomy, kept apart

FLARE22 = {1: "liver", 2: KIDNEY_RIGHT, 3: "spleen", 4: "pancreas", 5: "aorta", 6: "inferior_vena_cava",
           7: "adrenal_gland", 8: "adrenal_gland", 9: "gallbladder", 10: "esophagus", 11: "stomach",
           12: "duodenum", 13: KIDNEY_LEFT}
AMOS = {1: "spleen", 2: KIDNEY_RIGHT, 3: KIDNEY_LEFT, 4: "gallbladder", 5: "esophagus", 6: "liver", 7: "stomach",
        8: "aorta", 9: "inferior_vena_cava", 10: "pancreas", 11: "adrenal_gland", 12: "adrenal_gland",
        13: "duodenum", 14: "urinary_bladder", 15: "prostate_uterus"}

# TotalSegmentator names -> vocabulary: exact names first, then prefixes.
_TS_EXACT = {"kidney_right": KIDNEY_RIGHT, "kidney_cyst_right": KIDNEY_RIGHT, "kidney_left": KIDNEY_LEFT,
             "kidney_cyst_left": KIDNEY_LEFT, "prostate": "prostate_uterus", "trachea": "lung",
             "inferior_vena_cava": "inferior_vena_cava", "portal_vein_and_splenic_vein": "portal_splenic_vein",
             "atrial_appendage_left": "heart", "sacrum": "bone", "sternum": "bone", "skull": "bone",
             "costal_cartilages": "bone"}
_TS_PREFIX = (("lung_", "lung"), ("vertebrae_", "bone"), ("rib_", "bone"), ("hip_", "bone"), ("femur_", "bone"),
              ("humerus_", "bone"), ("scapula_", "bone"), ("clavicula_", "bone"), ("gluteus_", "muscle"),
              ("autochthon_", "muscle"), ("iliopsoas_", "muscle"), ("adrenal_gland", "adrenal_gland"),
              ("iliac_", "other_vessel"), ("subclavian_", "other_vessel"), ("common_carotid", "other_vessel"),
              ("brachiocephalic", "other_vessel"), ("pulmonary_vein", "other_vessel"),
              ("superior_vena_cava", "other_vessel"))


def totalseg_table(classes_csv) -> Dict[int, object]:
    """Value -> vocabulary name (or kidney marker) for a TotalSegmentator ``classes.csv`` (id,name)."""
    table = {}
    with open(classes_csv, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            name = row["name"].strip()
            target = _TS_EXACT.get(name) or (name if name in ANATOMY else None)
            if target is None:
                target = next((t for p, t in _TS_PREFIX if name.startswith(p)), "other_organ")
            table[int(row["id"])] = target
    return table


@dataclass
class AnatomyMap:
    """A real anatomy map in the vocabulary: ``labels`` (ANATOMY values, kidneys removed) and the kidneys."""

    case_id: str
    labels: Image
    kidney_right: np.ndarray  # bool, same grid
    kidney_left: np.ndarray
    provided: frozenset      # vocabulary names the source labels at all (the painter invents the rest)


def source_table(path) -> Tuple[str, Dict[int, object]]:
    """(source name, value table) of an anatomy map file, from its folder or name."""
    p = Path(path)
    if (p.parent / "classes.csv").is_file():
        return "totalseg", totalseg_table(p.parent / "classes.csv")
    name = p.name.lower()
    if name.startswith("flare22"):
        return "flare22", FLARE22
    if name.startswith("amos"):
        return "amos", AMOS
    raise ValueError(f"'{path}': unknown anatomy map layout; expected a TotalSegmentator map with classes.csv "
                     "beside it, a FLARE22_*.nii.gz or an amos_*.nii.gz label map.")


def load_anatomy(path) -> AnatomyMap:
    """Read an anatomy map and translate it into ``ANATOMY`` values (refuses the validation subjects)."""
    check_not_held_out(path)
    source, table = source_table(path)
    src = read_labelmap(path)
    check_not_held_out(path, src.geometry)
    values = np.zeros(int(src.array.max()) + 1, np.int16)
    for value, target in table.items():
        if value < len(values):
            values[value] = target if isinstance(target, int) and target < 0 else ANATOMY[target]
    present = set(np.unique(src.array).tolist())
    unknown = sorted(present - set(table) - {0})
    if unknown:
        raise ValueError(f"'{path}' ({source}) holds label values {unknown[:10]} that its table does not name.")
    mapped = values[src.array]
    provided = frozenset(t for v, t in table.items() if isinstance(t, str) and v in present)
    labels = np.where(mapped > 0, mapped, 0).astype(np.uint8)
    return AnatomyMap(Path(path).name.split(".")[0], Image(labels, src.geometry), mapped == KIDNEY_RIGHT,
                      mapped == KIDNEY_LEFT, provided)


def find_anatomy_maps(roots: Sequence) -> List[Path]:
    """Every ``*.nii.gz`` label map under the given folders (or files), sorted, validation subjects skipped
    by ``load_anatomy`` raising; here only the listing."""
    found = []
    for root in roots:
        root = Path(root)
        found += [root] if root.is_file() else sorted(root.rglob("*.nii.gz"))
    if not found:
        raise ValueError(f"No anatomy label maps (*.nii.gz) under {[str(r) for r in roots]}.")
    return sorted(set(found))
