"""PADUA score (Ficarra et al., Eur Urol 2009; 56: 786-793) estimated from a kidney/tumor/cyst label map.

PADUA (Preoperative Aspects and Dimensions Used for an Anatomical classification) scores six features;
total 6-14 (6-7 low, 8-9 intermediate, >= 10 high complexity), with the anterior/posterior face as a
suffix (a, p; x here when neither, as R.E.N.A.L.):

  longitudinal (polar) location  superior or inferior pole: 1, middle: 2
  exophytic rate                 >= 50 %: 1, < 50 %: 2, entirely endophytic: 3
  renal rim                      lateral: 1, medial: 2
  renal sinus                    not involved: 1, involved: 2
  urinary collecting system      not involved: 1, dilated or infiltrated: 2
  tumour size                    <= 4 cm: 1, 4.1-7 cm: 2, > 7 cm: 3

Computed beside R.E.N.A.L. from the same kidney model (``nephrometry.KidneyModel``: per-slice parenchyma
hull, sinus proxy, polar lines), so both scores read one geometry:

* Size: the exact 3D longest diameter (as R); note PADUA's 7 cm itself scores 2 where R scores 3.
* Exophytic rate: the exophytic fraction of R.E.N.A.L.'s E, with its thresholds (the same definition).
* Longitudinal location: against R.E.N.A.L.'s polar lines; middle (2) when more than half of the tumour
  lies between them (R.E.N.A.L.'s interpolar fraction), else polar (1). Ficarra draws the lines at the
  renal sinus lips, which is where the hilum source of the polar lines puts them.
* Renal rim: a line along the kidney's long axis through the parenchyma centroid splits lateral from
  medial; the tumour's centroid decides, lateral being away from the midline (LPS +x on the left kidney,
  -x on the right). None when the kidney's side is unknown.
* Renal sinus: involved when the tumour touches the sinus proxy (surface gap <= ``SINUS_CONTACT_MM``) or
  reaches into the deep core where the proxy lies (``nephrometry.SINUS_DEPTH_MM`` inside the filled
  kidney). None when the kidney has no sinus proxy and the tumour stays out of the core.
* Urinary collecting system: the labels hold no collecting system, so the proxy is depth: the tumour
  reaches ``COLLECTING_SYSTEM_DEPTH_MM`` (20 mm) into the filled kidney, 5 mm past the depth where the sinus
  proxy starts, towards the centre of the sinus where the pelvis and calyces run. An estimate only: it
  cannot see dilatation, and a tumour that borders an unlabelled sinus pocket counts as sinus involvement.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

from .labels import Side
from .nephrometry import SINUS_DEPTH_MM, KidneyModel, RenalScore

SIZE_THRESHOLDS_MM = (40.0, 70.0)
SINUS_CONTACT_MM = 1.0
COLLECTING_SYSTEM_DEPTH_MM = SINUS_DEPTH_MM + 5.0


def score_size(longest_diameter_mm: float) -> int:
    lo, hi = SIZE_THRESHOLDS_MM
    return 1 if longest_diameter_mm <= lo else (2 if longest_diameter_mm <= hi else 3)


def score_polar(interpolar_fraction: Optional[float]) -> Optional[int]:
    if interpolar_fraction is None:
        return None
    return 2 if interpolar_fraction > 0.5 else 1


def score_rim(lateral_offset_mm: Optional[float]) -> Optional[int]:
    """Offset of the tumour centroid from the parenchyma centroid, + away from the midline."""
    if lateral_offset_mm is None:
        return None
    return 1 if lateral_offset_mm >= 0 else 2


def score_sinus(distance_to_sinus_mm: Optional[float], depth_mm: float) -> Optional[int]:
    if depth_mm >= SINUS_DEPTH_MM or (distance_to_sinus_mm is not None and distance_to_sinus_mm <= SINUS_CONTACT_MM):
        return 2
    return None if distance_to_sinus_mm is None else 1


def score_collecting_system(depth_mm: float) -> int:
    return 2 if depth_mm >= COLLECTING_SYSTEM_DEPTH_MM else 1


@dataclass
class PaduaScore:
    polar: Optional[int]
    exophytic: int
    rim: Optional[int]
    sinus: Optional[int]
    collecting_system: int
    size: int
    suffix: str
    lateral_offset_mm: Optional[float]
    depth_mm: float

    @property
    def total(self) -> Optional[int]:
        parts = (self.polar, self.exophytic, self.rim, self.sinus, self.collecting_system, self.size)
        return None if any(p is None for p in parts) else int(sum(parts))

    @property
    def risk(self) -> Optional[str]:
        """Ficarra's groups: 6-7 low, 8-9 intermediate, >= 10 high."""
        t = self.total
        return None if t is None else ("low" if t <= 7 else ("intermediate" if t <= 9 else "high"))

    def to_dict(self) -> Dict[str, Any]:
        total = self.total
        return {"polar": self.polar, "exophytic": self.exophytic, "rim": self.rim, "sinus": self.sinus,
                "collecting_system": self.collecting_system, "size": self.size, "total": total,
                "suffix": self.suffix, "score": None if total is None else f"{total}{self.suffix}",
                "risk": self.risk,
                "lateral_offset_mm": None if self.lateral_offset_mm is None else round(self.lateral_offset_mm, 2),
                "depth_mm": round(self.depth_mm, 2)}


def padua_score(tumor_box: np.ndarray, model: KidneyModel, renal: RenalScore, longest_diameter_mm: float,
                tumor_centroid_lps, side: Optional[Side]) -> PaduaScore:
    """PADUA of one tumour (its mask on ``model.box``) from its R.E.N.A.L. score and the kidney model."""
    depth = float(model.depth[tumor_box].max()) if model.depth is not None and tumor_box.any() else 0.0
    offset = None
    if side is not None:
        lateral = 1.0 if Side(side) == Side.LEFT else -1.0  # LPS: patient left is +x
        offset = lateral * float(tumor_centroid_lps[0] - model.parenchyma_centroid_lps[0])
    return PaduaScore(polar=score_polar(renal.interpolar_fraction), exophytic=renal.E, rim=score_rim(offset),
                      sinus=score_sinus(renal.distance_to_sinus_mm, depth),
                      collecting_system=score_collecting_system(depth), size=score_size(longest_diameter_mm),
                      suffix=renal.suffix, lateral_offset_mm=offset, depth_mm=depth)
