"""The explanatory paragraphs of the HTML report (``report``): R.E.N.A.L., PADUA and model confidence."""
from __future__ import annotations

from typing import Optional

from . import nephrometry as nm
from . import padua as pd
from .confidence import threshold_text

DASH = "\u2014"


def renal_legend() -> str:
    (r1, r2), (n1, n2) = nm.R_THRESHOLDS_MM, nm.N_THRESHOLDS_MM
    return (
        "<p class='legend'><b>R.E.N.A.L. nephrometry</b> (Kutikov &amp; Uzzo 2009): <b>automatic estimates</b> "
        "from the label map, for planning and to be checked against the images; not a radiologist's reading. "
        f"<b>R</b> longest 3D diameter &le; {r1:g} mm: 1, {r1:g}&ndash;{r2:g} mm: 2, &ge; {r2:g} mm: 3. "
        "<b>E</b> &ge; 50 % exophytic: 1, &lt; 50 %: 2, entirely endophytic: 3 (exophytic share in brackets: "
        "tumor outside the per-slice convex hull of the kidney parenchyma). "
        f"<b>N</b> distance to the collecting system or sinus &ge; {n2:g} mm: 1, {n1:g}&ndash;{n2:g} mm: 2, "
        f"&le; {n1:g} mm: 3. The labels hold no sinus, so N uses a <i>sinus proxy</i>: the unlabelled pockets "
        f"inside the kidney's per-slice hull plus the kidney core deeper than {nm.SINUS_DEPTH_MM:g} mm "
        "(gap in brackets). "
        f"<b>A</b> tumor centroid &ge; {nm.A_TOLERANCE_MM:g} mm anterior (a) or posterior (p) of the kidney's, "
        "else x. <b>L</b> entirely above or below the polar lines: 1, crossing one: 2, more than 50 % between "
        "them or crossing the axial midline: 3; <i>polar lines</i> (source in brackets) at the hilum lip where "
        "the labels leave the hilum open (&ldquo;hilum&rdquo;), else at one and two thirds of the kidney's axial "
        "extent (&ldquo;thirds&rdquo;). Score = R+E+N+L (4&ndash;12) + suffix A; the h (hilar) suffix is never "
        f"assigned: the labels hold no vessels. {DASH}: not available. Centroids in RAS mm, as Slicer shows "
        "them; diameters between voxel centres.</p>")


def padua_legend() -> str:
    (s1, s2) = pd.SIZE_THRESHOLDS_MM
    return (
        "<p class='legend'><b>PADUA</b> (Ficarra et al. 2009), the same kind of <b>automatic estimate</b>, in "
        "the order shown in brackets: <b>P</b>olar location: more than half of the tumor outside the polar "
        "lines: 1, else (middle) 2. <b>E</b>xophytic rate as R.E.N.A.L.'s E. <b>R</b>im: tumor centroid "
        "lateral of the parenchyma centroid (away from the midline): 1, medial: 2. <b>S</b>inus: the tumor "
        f"touches the sinus proxy (gap &le; {pd.SINUS_CONTACT_MM:g} mm) or reaches {nm.SINUS_DEPTH_MM:g} mm into "
        "the kidney: 2, else 1. <b>U</b>rinary collecting system (not in the labels; depth proxy): the tumor "
        f"reaches {pd.COLLECTING_SYSTEM_DEPTH_MM:g} mm into the kidney: 2, else 1. <b>Z</b> size: longest 3D "
        f"diameter &le; {s1:g} mm: 1, to {s2:g} mm: 2, more: 3. Total 6&ndash;14 + suffix a/p/x; 6&ndash;7 low, "
        "8&ndash;9 intermediate, &ge; 10 high complexity.</p>")


def confidence_legend(min_confidence: Optional[float], unsure_below: Optional[float] = None) -> str:
    rule = ("No lesion was left out (no minimum confidence set)." if min_confidence is None else
            f"Lesions below {threshold_text(min_confidence)} are listed under &ldquo;Uncertain lesions&rdquo; and "
            "are not in the segmentation (their voxels were set to background).")
    if unsure_below is not None:
        rule += (f" A lesion below the model's recommended {threshold_text(unsure_below)} is marked "
                 "<b>uncertain</b>: drawn and measured, but not a finding; check it on the images.")
    return ("<p class='legend'><b>Confidence</b>: the network's mean probability of the lesion's class over its "
            "voxels (0&ndash;1). It says how sure the model is, not how likely the lesion is real: a confident "
            f"model can still be wrong on scans unlike its training data. {rule} {DASH}: no probabilities (a "
            "label map measured without the cascade's confidence map).</p>")
