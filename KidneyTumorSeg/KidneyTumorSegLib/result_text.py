"""What the terminal and the ``case_done`` event say about a segmented or measured case: the segment volumes,
each lesion's size, scores and confidence (largest first), and the lesions called uncertain."""
from __future__ import annotations

from typing import List, Optional

from .confidence import confidence_text, confidence_value, threshold_text


def describe_result(result, min_confidence: Optional[float] = None) -> str:
    lines = [f"{result.name}: {result.message} ({result.seconds:.1f} s)"]
    if result.source is not None:
        lines.append(f"  read {result.source.describe()}")
    lines += [f"  {name}: {volume_text(ml)}" for name, ml in result.volumes_ml.items()]
    if result.measurements is not None:
        lines += describe_measurements(result.measurements)
    else:
        lines += describe_uncertain(result.uncertain, min_confidence)
    lines += [f"  wrote {path}" for path in result.outputs.values()]
    lines += [f"  warning: {w}" for w in result.warnings]
    return "\n".join(lines)


def measurement_summary(m) -> dict:
    """The short form of a case's measurements carried by the case_done event."""
    def r(v, nd):
        return None if v is None else round(float(v), nd)
    return {"kidneys": [{"side": k.side, "volume_ml": r(k.volume_ml, 2)} for k in m.kidneys],
            "lesions": [{"id": x.id, "kind": x.kind, "side": x.side, "volume_ml": r(x.volume_ml, 2),
                         "longest_diameter_mm": r(x.longest_diameter_mm, 1),
                         "renal_total": None if x.renal is None else x.renal.total,
                         "renal_score": None if x.renal is None or x.renal.total is None
                         else f"{x.renal.total}{x.renal.suffix}",
                         "padua_total": None if x.padua is None else x.padua.total, "unscored": x.unscored,
                         "confidence": confidence_value(x.confidence, m.unsure_below), "uncertain": x.uncertain}
                        for x in m.lesions],
            "uncertain_lesions": [u.to_dict(m.min_confidence) for u in m.uncertain]}


MAX_LESIONS_SHOWN = 10  # on the terminal; the CSV, JSON and report hold every lesion


def describe_measurements(m) -> List[str]:
    lines = [kidney_text(k) for k in m.kidneys]
    lesions = sorted(m.lesions, key=lambda x: -x.volume_ml)
    for x in lesions[:MAX_LESIONS_SHOWN]:
        score = "" if x.renal is None or x.renal.total is None else f", R.E.N.A.L. {x.renal.total}{x.renal.suffix}"
        if x.padua is not None and x.padua.total is not None:
            score += f", PADUA {x.padua.total}{x.padua.suffix}"
        if x.kind == "tumor" and x.unscored and x.kidney_id:  # in a kidney, yet no score: say why
            score += f", {x.unscored}"
        if x.confidence is not None:
            score += f", confidence {confidence_text(x.confidence, m.unsure_below)}"
        if x.uncertain:
            score += f": uncertain (below the model's {threshold_text(m.unsure_below)}), check it"
        size = size_text(x.volume_ml, x.longest_diameter_mm)
        lines.append(f"  {x.id} ({x.side or 'outside the kidneys'}): {size}{score}")
    if len(lesions) > MAX_LESIONS_SHOWN:
        lines.append(f"  ... and {len(lesions) - MAX_LESIONS_SHOWN} smaller lesions (see the CSV or report)")
    return lines + describe_uncertain(m.uncertain, m.min_confidence)


def kidney_text(k) -> str:
    """A measured kidney as a whole. After a segmentation the segment lines give the kidney label alone, so a
    kidney with masses says that its volume includes them (232 mL beside 216 mL would read as a contradiction)."""
    side = f"  {k.side or 'unknown'} kidney"
    masses = [f"{kind} {volume_text(ml)}" for kind, ml in (("tumor", k.tumor_volume_ml), ("cyst", k.cyst_volume_ml))
              if ml > 0]
    if not masses:
        return f"{side}: {volume_text(k.volume_ml)} (no tumor or cyst)"
    return f"{side} with its masses: {volume_text(k.volume_ml)} ({', '.join(masses)})"


def volume_text(ml: float) -> str:
    """"12.3 mL"; a volume too small for one decimal says so instead of "0.0 mL" (an empty segment: 0 mL)."""
    return f"{ml:.1f} mL" if ml >= 0.05 or ml == 0 else "< 0.1 mL"


def size_text(volume_ml: float, longest_mm: float) -> str:
    """"12.3 mL, longest 31.0 mm"; a one-voxel lesion has no diameter (its longest centre-to-centre distance
    is 0), so it says so."""
    volume = volume_text(volume_ml)
    return f"{volume}, longest {longest_mm:.1f} mm" if longest_mm > 0 else f"{volume}, a single voxel"


def describe_uncertain(uncertain, min_confidence: Optional[float] = None) -> List[str]:
    """The lesions --min-confidence left out, largest first (all of them: each is a decision to check)."""
    return [f"  {u.id} ({u.side or 'outside the kidneys'}): {volume_text(u.volume_ml)} {u.kind}, confidence "
            f"{confidence_text(u.confidence, min_confidence)}: uncertain, not drawn; centroid RAS "
            f"({-u.centroid_lps[0]:.0f}, {-u.centroid_lps[1]:.0f}, {u.centroid_lps[2]:.0f}) mm" for u in uncertain]
