"""How each structure looks in each contrast phase: HU ranges for the real-anatomy generator.

Ranges are typical adult values from CT literature and radiology teaching material (unenhanced liver
~55 HU and 100-140 HU portal venous; aorta 250-450 HU in the arterial phase; renal cortex 150-250 HU and a
darker medulla in the cortico-medullary phase, a homogeneous nephrogram at 130-200 HU, contrast in the
collecting system from ~5 minutes). A value is drawn uniformly per case and structure, so no scanner or
protocol is favoured. With ``random_share`` a case instead gets SynthSeg-style random intensities for every
soft-tissue structure (Billot et al. 2023): the network must then rely on shape and context.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

Range = Tuple[float, float]
PHASES = ("unenhanced", "arterial", "portal", "excretory")
PHASE_P = (0.3, 0.25, 0.3, 0.15)  # KiTS is mostly late arterial; the validation CTs include unenhanced

#                      unenhanced     arterial       portal         excretory
HU: Dict[str, Tuple[Range, Range, Range, Range]] = {
    "liver":             ((45, 65),     (60, 85),      (95, 140),     (80, 110)),
    "spleen":            ((40, 55),     (80, 150),     (100, 140),    (80, 110)),
    "pancreas":          ((35, 50),     (90, 140),     (80, 120),     (70, 100)),
    "bowel_wall":        ((30, 50),     (60, 110),     (70, 120),     (60, 100)),
    "gallbladder":       ((0, 25),      (0, 25),       (0, 25),       (0, 25)),
    "aorta":             ((35, 50),     (250, 450),    (130, 200),    (100, 140)),
    "inferior_vena_cava": ((35, 50),    (60, 130),     (120, 180),    (100, 140)),
    "portal_splenic_vein": ((35, 50),   (70, 130),     (150, 220),    (100, 140)),
    "other_vessel":      ((35, 50),     (120, 350),    (130, 200),    (100, 140)),
    "adrenal_gland":     ((10, 40),     (50, 90),      (50, 90),      (40, 70)),
    "urinary_bladder":   ((0, 20),      (0, 20),       (0, 20),       (0, 20)),
    "prostate_uterus":   ((30, 50),     (60, 100),     (70, 110),     (60, 90)),
    "lung":              ((-900, -750), (-900, -750),  (-900, -750),  (-900, -750)),
    "heart":             ((35, 50),     (200, 400),    (120, 180),    (100, 140)),
    "bone":              ((200, 500),   (200, 500),    (200, 500),    (200, 500)),
    "muscle":            ((40, 60),     (50, 70),      (55, 75),      (55, 70)),
    "renal_sinus_fat":   ((-110, -50),  (-110, -50),   (-110, -50),   (-110, -50)),
    "collecting_system": ((0, 25),      (0, 25),       (5, 30),       (400, 1500)),
    "other_organ":       ((20, 50),     (30, 70),      (40, 80),      (40, 70)),
    # the kidney and its lesions
    "cortex":            ((25, 45),     (150, 250),    (130, 200),    (100, 160)),
    "medulla":           ((25, 45),     (60, 110),     (120, 190),    (100, 160)),
    "tumor":             ((20, 50),     (40, 200),     (60, 140),     (50, 110)),
    "cyst":              ((-5, 20),     (-5, 20),      (-5, 25),      (-5, 25)),
}
# Never randomised: air, fat and bone keep their physics in every case (the window clips them anyway).
FIXED = ("lung", "bone", "renal_sinus_fat")
RANDOM_HU: Range = (-150.0, 300.0)
MIN_LESION_CONTRAST = 10.0  # HU between kidney, tumor and cyst, so that the labels stay learnable
# --contrast-dose: the enhancement (HU above the unenhanced value) of every enhancing tissue times one factor
# a case. Iodine dose, injection rate, cardiac output and scan timing scale enhancement together: the renal
# cortex reaches 250-350 HU in many corticomedullary and early portal scans, above the table's ranges.
DOSE: Range = (0.8, 1.5)
NON_ENHANCING = ("gallbladder", "urinary_bladder", "collecting_system", "cyst")
# --lesion-contrast (decision 82): in an enhanced case a tumor closer to the cortex than the lower bound is moved
# below it by a value in this range. Real renal tumors enhance less than the cortex in the nephrographic and
# portal phases; a tumor a few HU from the kidney under 5-30 HU of noise teaches the network to call tumors by
# shape alone, and it then calls the bulging pole of a healthy kidney "tumor".
ENHANCED_TUMOR_CONTRAST: Range = (40.0, 70.0)
MOVED_TUMOR_MIN_HU = 30.0  # never moved below a solid tumor's unenhanced density (cysts lie at -5-25 HU)


def draw_appearance(rng: np.random.Generator, random_share: float = 0.2) -> Tuple[str, bool, Dict[str, float]]:
    """(phase, randomised?, structure -> mean HU) for one case."""
    phase_i = int(rng.choice(len(PHASES), p=PHASE_P))
    randomised = bool(rng.random() < random_share)
    hu = {name: float(rng.uniform(*ranges[phase_i])) for name, ranges in HU.items()}
    if randomised:
        hu.update({name: float(rng.uniform(*RANDOM_HU)) for name in HU if name not in FIXED})
        if PHASES[phase_i] != "arterial":
            hu["medulla"] = hu["cortex"]
    _separate_lesions(hu, rng)
    return PHASES[phase_i], randomised, hu


def _separate_lesions(hu: Dict[str, float], rng: np.random.Generator) -> None:
    """Keep tumor and cyst at least MIN_LESION_CONTRAST HU from the cortex and from each other (a cyst
    below the cortex: it never enhances); unenhanced tumors may be brighter or darker than the kidney."""
    k = hu["cortex"]
    if abs(hu["tumor"] - k) < MIN_LESION_CONTRAST:
        # rng.choice gives a numpy float, kept: the tumor is then painted in float64, and every case made so far
        # depends on it to the last HU (a plain float paints it in float32 and moves single voxels by 1 HU)
        hu["tumor"] = k + rng.choice([-1.0, 1.0]) * float(rng.uniform(MIN_LESION_CONTRAST, 3 * MIN_LESION_CONTRAST))
    if hu["cyst"] > k - MIN_LESION_CONTRAST:
        hu["cyst"] = k - float(rng.uniform(MIN_LESION_CONTRAST, 3 * MIN_LESION_CONTRAST))
    if abs(hu["cyst"] - hu["tumor"]) < MIN_LESION_CONTRAST:
        hu["cyst"] = min(hu["cyst"], hu["tumor"]) - MIN_LESION_CONTRAST


def scale_enhancement(hu: Dict[str, float], phase: str, randomised: bool,
                      rng: np.random.Generator) -> Tuple[Dict[str, float], float]:
    """(structure -> HU, factor): a contrast-enhanced case's enhancement scaled by one factor from DOSE (the
    unenhanced value is each structure's mid unenhanced HU); unenhanced and randomised cases are returned
    unchanged with factor 1. Tumor and cyst are kept apart from the cortex again afterwards."""
    if phase == "unenhanced" or randomised:
        return dict(hu), 1.0
    k = float(rng.uniform(*DOSE))
    out = dict(hu)
    for name, ranges in HU.items():
        if name not in FIXED and name not in NON_ENHANCING:
            base = (ranges[0][0] + ranges[0][1]) / 2
            out[name] = base + k * (hu[name] - base)
    _separate_lesions(out, rng)
    return out, k


def separate_enhanced_tumor(hu: Dict[str, float], phase: str, randomised: bool,
                            rng: np.random.Generator) -> Dict[str, float]:
    """(structure -> HU): in a contrast-enhanced case, a tumor closer to the cortex than ENHANCED_TUMOR_CONTRAST's
    lower bound is moved below the cortex by a value drawn from it, but not below MOVED_TUMOR_MIN_HU (the cyst
    kept below both again); unenhanced and randomised cases, and tumors already that far from the cortex, are
    returned unchanged. The contrast is to the cortex: an arterial-phase medulla may still be near the tumor."""
    out = dict(hu)
    low, high = ENHANCED_TUMOR_CONTRAST
    if phase == "unenhanced" or randomised or abs(out["tumor"] - out["cortex"]) >= low:
        return out
    out["tumor"] = max(out["cortex"] - float(rng.uniform(low, high)), MOVED_TUMOR_MIN_HU)
    _separate_lesions(out, rng)
    return out
