"""A self-contained HTML report of the measurements: tables, R.E.N.A.L. legend, one picture per lesion.

One file, nothing beside it: inline CSS, pictures as base64 PNG data URIs, so it can be mailed or opened
anywhere. Pictures follow ``qc``: the volume in LPS index order, so an axial slice shows anterior at the
top and the patient's right on the image's left (radiological), resampled to square pixels
(``qc.resample_plane``, whose pixel-centre convention :class:`SliceView` inverts to place the lines).
Each lesion gets the axial slice through its longest axial diameter: the whole slice (context, with a box
around the zoomed region) and a zoom with the lesion outline, that diameter, its perpendicular and the
end points of the longest 3D diameter when they lie near the slice. Without a CT the label map itself
is shown in grey levels.
"""
from __future__ import annotations

import base64
import html
import math
import os
import struct
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from . import __version__
from .geometry import Geometry, Image
from .labels import COLORS, FOREGROUND, Label
from .atomic import write_text
from .confidence import confidence_text, threshold_text
from .measurements import LesionMeasurement, Measurements
from .preprocessing import reorient
from .qc import WINDOW, lps_view, resample_plane  # the same display as the QC picture
from .report_legends import DASH, confidence_legend, padua_legend, renal_legend

PathLike = Union[str, os.PathLike]

MAX_PICTURES = 12          # the largest lesions get pictures; a case with 40 cysts stays mailable
ZOOM_PX = 320              # width of the zoomed panel's field of view, pixels
CONTEXT_PX = 320           # largest extent of the whole-slice panel, pixels
FOV_MM = (60.0, 250.0)     # zoom field of view: 2.5 x the lesion's axial diameter + 30 mm, clipped to this
NEAR_SLICE_MM = 3.0        # 3D diameter end points within max(this, slice spacing) of the slice are marked
LABEL_GREYS = np.array([0, 90, 150, 210], np.uint8)  # label-only pictures: background, kidney, tumor, cyst
LINE_COLORS = {"axial_long": (255, 40, 40), "axial_short": (40, 170, 255), "longest": (255, 0, 255)}
BOX_COLOR = (255, 255, 255)


# -- pixels ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SliceView:
    """A displayed axial slice: slice ``k`` of the LPS-reoriented grid ``geometry``, cropped to the index
    rows/columns from ``row0``/``col0`` (``rows`` x ``cols``), resampled to square pixels of ``px`` mm."""

    geometry: Geometry
    k: int
    row0: int
    col0: int
    rows: int
    cols: int
    px: float

    @property
    def shape(self) -> Tuple[int, int]:  # the formula of qc.resample_plane
        sx, sy, _ = self.geometry.spacing
        return tuple(max(1, int(round(n * s / self.px))) for n, s in ((self.rows, sy), (self.cols, sx)))

    def index_to_pixel(self, row, col) -> np.ndarray:
        """Continuous (row, column) indices of the slice -> continuous pixels (pixel centres at integers);
        the inverse of qc.resample_plane's ``(m + 0.5) * px / s - 0.5``."""
        sx, sy, _ = self.geometry.spacing
        return np.stack([(np.asarray(row, float) - self.row0 + 0.5) * sy / self.px - 0.5,
                         (np.asarray(col, float) - self.col0 + 0.5) * sx / self.px - 0.5], axis=-1)

    def to_pixel(self, lps) -> np.ndarray:
        """LPS points (3,) or (N, 3) -> (row, column) pixels, same leading shape (projected on the slice)."""
        ijk = self.geometry.physical_to_index(lps)
        return self.index_to_pixel(ijk[..., 1], ijk[..., 0])

    def distance_mm(self, lps) -> np.ndarray:
        """Distance of LPS points from the slice plane along the slice normal (mm)."""
        return np.abs(self.geometry.physical_to_index(lps)[..., 2] - self.k) * self.geometry.spacing[2]


def line_pixels(p0, p1) -> np.ndarray:
    """(n, 2) integer (row, column) pixels of the Bresenham line between the pixels nearest to p0 and p1."""
    r0, c0 = (int(math.floor(v + 0.5)) for v in p0)
    r1, c1 = (int(math.floor(v + 0.5)) for v in p1)
    dr, dc = abs(r1 - r0), abs(c1 - c0)
    sr, sc = (1 if r1 >= r0 else -1), (1 if c1 >= c0 else -1)
    err, out = dc - dr, [(r0, c0)]
    while (r0, c0) != (r1, c1):
        e2 = 2 * err
        if e2 > -dr:
            err, c0 = err - dr, c0 + sc
        if e2 < dc:
            err, r0 = err + dc, r0 + sr
        out.append((r0, c0))
    return np.array(out, dtype=int)


def draw_line(rgb: np.ndarray, p0, p1, color) -> None:
    """Draw in place; pixels outside the image are dropped."""
    px = line_pixels(p0, p1)
    keep = (px[:, 0] >= 0) & (px[:, 0] < rgb.shape[0]) & (px[:, 1] >= 0) & (px[:, 1] < rgb.shape[1])
    rgb[px[keep, 0], px[keep, 1]] = color


def draw_cross(rgb: np.ndarray, p, color, half: int = 4) -> None:
    r, c = p
    draw_line(rgb, (r - half, c - half), (r + half, c + half), color)
    draw_line(rgb, (r - half, c + half), (r + half, c - half), color)


def png_bytes(rgb: np.ndarray) -> bytes:
    """8-bit RGB PNG (no filter, zlib): in memory, so the report needs no temporary picture files."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


# -- pictures ----------------------------------------------------------------------------------------
@dataclass
class LesionPicture:
    zoom: np.ndarray       # (h, w, 3) uint8
    context: np.ndarray
    zoom_view: SliceView
    context_view: SliceView
    marked_3d_ends: int    # how many 3D diameter end points lie near the slice (drawn as crosses)


def _rgb(grey2d: np.ndarray, lab2d: np.ndarray, view: SliceView, is_ct: bool) -> np.ndarray:
    sx, sy, _ = view.geometry.spacing
    if is_ct:
        level, width = WINDOW
        g = resample_plane(grey2d.astype(np.float32), (sy, sx), view.px, order=1)
        g = np.clip((g - (level - width / 2)) * (255.0 / width), 0, 255).astype(np.uint8)
    else:
        g = LABEL_GREYS[resample_plane(np.clip(lab2d, 0, 3), (sy, sx), view.px, order=0)]
    rgb = np.repeat(g[:, :, None], 3, axis=2)
    lab = resample_plane(lab2d, (sy, sx), view.px, order=0)
    for label in FOREGROUND:  # outline = mask minus its erosion, as in qc
        mask = lab == label
        if mask.any():
            rgb[mask & ~ndimage.binary_erosion(mask, border_value=0)] = COLORS[label]
    return rgb


def render_lesion(lab_lps: np.ndarray, g_lps: Geometry, lesion: LesionMeasurement,
                  ct_lps: Optional[np.ndarray] = None) -> LesionPicture:
    """Pictures of one lesion; arrays in LPS index order (z, y, x) on ``g_lps``."""
    a, b = (np.asarray(p, float) for p in lesion.lines["axial_long"])
    ijk = g_lps.physical_to_index(np.stack([a, b]))
    nz, ny, nx = lab_lps.shape
    k = int(np.clip(round(float(ijk[:, 2].mean())), 0, nz - 1))
    sx, sy, sz = g_lps.spacing
    fov = float(np.clip(2.5 * lesion.longest_axial_diameter_mm + 30.0, *FOV_MM))
    (rc, cc), hr, hc = ijk[:, [1, 0]].mean(0), fov / 2 / sy, fov / 2 / sx
    r0, r1 = max(0, int(math.floor(rc - hr))), min(ny, int(math.ceil(rc + hr)) + 1)
    c0, c1 = max(0, int(math.floor(cc - hc))), min(nx, int(math.ceil(cc + hc)) + 1)
    grey = ct_lps[k] if ct_lps is not None else lab_lps[k]
    lab = lab_lps[k]
    zv = SliceView(g_lps, k, r0, c0, r1 - r0, c1 - c0, fov / ZOOM_PX)
    zoom = _rgb(grey[r0:r1, c0:c1], lab[r0:r1, c0:c1], zv, ct_lps is not None)
    ends = np.asarray(lesion.lines["longest"], float)
    near = zv.distance_mm(ends) <= max(NEAR_SLICE_MM, sz)
    for p in zv.to_pixel(ends[near]):  # first: the diameters' end pixels stay visible on top
        draw_cross(zoom, p, LINE_COLORS["longest"])
    for key in ("axial_short", "axial_long"):  # the long one on top where they cross
        p, q = zv.to_pixel(np.asarray(lesion.lines[key], float))
        draw_line(zoom, p, q, LINE_COLORS[key])
    cv = SliceView(g_lps, k, 0, 0, ny, nx, max(nx * sx, ny * sy) / CONTEXT_PX)
    context = _rgb(grey, lab, cv, ct_lps is not None)
    edges = cv.index_to_pixel([r0 - 0.5, r1 - 0.5], [c0 - 0.5, c1 - 0.5])  # the crop's outer edges
    (t, l), (bt, rt) = np.clip(edges, 0, np.asarray(context.shape[:2]) - 1)  # kept inside the panel
    corners = [(t, l), (t, rt), (bt, rt), (bt, l), (t, l)]
    for p, q in zip(corners, corners[1:]):
        draw_line(context, p, q, BOX_COLOR)
    return LesionPicture(zoom, context, zv, cv, int(near.sum()))


# -- HTML ---------------------------------------------------------------------------------------------
CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Arial,sans-serif;color:#222;max-width:1100px;
margin:16px auto;padding:0 12px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:22px 0 6px;border-bottom:1px solid #ccc}
.meta{color:#555;margin:0}.warn{background:#fff3cd;border:1px solid #e0c36c;padding:6px 10px;margin:8px 0}
table{border-collapse:collapse;margin:4px 0}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
td{white-space:nowrap}
th{background:#f0f0f0}td.t{text-align:left}small{color:#666}.legend{font-size:12.5px;color:#333}.unsure{color:#a15c00}
figure{display:inline-block;margin:8px 14px 8px 0;vertical-align:top}figcaption{font-size:13px;margin-bottom:3px}
figure img{margin-right:4px;vertical-align:top;border:1px solid #888}
.sw{display:inline-block;width:12px;height:12px;border:1px solid #555;vertical-align:middle}
"""


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _f(v, nd: int = 1) -> str:
    return DASH if v is None else f"{v:.{nd}f}"


def _swatch(color) -> str:
    return f'<span class="sw" style="background:rgb{tuple(int(c) for c in color)}"></span>'


def _table(head: Sequence[str], rows: List[List[str]], empty: str) -> str:
    if not rows:
        return f"<p>{_e(empty)}</p>"
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _td(v, text: bool = False) -> str:  # v is already escaped/formatted HTML
    return f'<td class="t">{v}</td>' if text else f"<td>{v}</td>"


def _kidney_rows(m: Measurements) -> List[List[str]]:
    return [[_td(_e(k.side or "unknown"), True), _td(_f(k.volume_ml)), _td(_f(k.parenchyma_volume_ml)),
             _td(_f(k.tumor_volume_ml)), _td(_f(k.cyst_volume_ml))] for k in m.kidneys]


def _confidence_cell(les: LesionMeasurement, unsure_below: Optional[float]) -> str:
    """The lesion's confidence, and "uncertain" where it is below the model's threshold (never shown as a fact)."""
    if les.confidence is None:
        return DASH
    text = confidence_text(les.confidence, unsure_below)
    return f"{text} <b class='unsure'>uncertain</b>" if les.uncertain else text


def _lesion_row(les: LesionMeasurement, unsure_below: Optional[float] = None) -> List[str]:
    ras = ", ".join(f"{v:.1f}" for v in les.centroid_ras)
    s = les.renal
    if s is None:
        why = f"n/a ({les.unscored or 'not scored'})"
        renal = [f'<td colspan="6" class="t"><small>{_e(why)}</small></td>']
    else:
        n = DASH if s.N is None else f"{s.N} <small>({_f(s.distance_to_sinus_mm)} mm)</small>"
        ll = DASH if s.L is None else f"{s.L} <small>({_e(s.polar_source)})</small>"
        score = DASH if s.total is None else f"<b>{s.total}{_e(s.suffix)}</b>"
        renal = [_td(s.R), _td(f"{s.E} <small>({100 * s.exophytic_fraction:.0f} %)</small>"), _td(n),
                 _td(_e(s.A)), _td(ll), _td(score)]
    p = les.padua
    padua = (_td(DASH) if p is None or p.total is None else
             _td(f"<b>{p.total}{_e(p.suffix)}</b> <small>({p.polar} {p.exophytic} {p.rim} {p.sinus} "
                 f"{p.collecting_system} {p.size})</small>"))
    return [_td(_e(les.id), True), _td(_e(les.kind), True), _td(_e(les.side or "unknown"), True),
            _td(_f(les.volume_ml)), _td(_f(les.longest_diameter_mm)),
            _td(f"{_f(les.longest_axial_diameter_mm)} &times; {_f(les.perpendicular_axial_diameter_mm)}"),
            _td(_e(ras)), _td(_confidence_cell(les, unsure_below))] + renal + [padua]


def _uncertain_rows(m: Measurements) -> List[List[str]]:
    return [[_td(_e(u.id), True), _td(_e(u.kind), True), _td(_e(u.side or "unknown"), True), _td(_f(u.volume_ml)),
             _td(_e(", ".join(f"{v:.1f}" for v in (-u.centroid_lps[0], -u.centroid_lps[1], u.centroid_lps[2])))),
             _td(confidence_text(u.confidence, m.min_confidence))] for u in m.uncertain]


def _figure(les: LesionMeasurement, pic: LesionPicture) -> str:
    s_mm = float(np.mean([p[2] for p in les.lines["axial_long"]]))
    ends = {0: "neither end of the longest 3D diameter lies near this slice",
            1: "one end of the longest 3D diameter is near this slice",
            2: "both ends of the longest 3D diameter are near this slice"}[pic.marked_3d_ends]
    imgs = "".join(
        f'<img width="{im.shape[1]}" height="{im.shape[0]}" alt="{_e(alt)}" '
        f'src="data:image/png;base64,{base64.b64encode(png_bytes(im)).decode("ascii")}">'
        for im, alt in ((pic.context, f"{les.id}: whole axial slice"), (pic.zoom, f"{les.id}: zoom")))
    caption = (f"<b>{_e(les.id)}</b> ({_e(les.side or 'unknown side')}): axial "
               f"{_f(les.longest_axial_diameter_mm)} &times; {_f(les.perpendicular_axial_diameter_mm)} mm, "
               f"slice S {s_mm:.1f} mm; <small>{_e(ends)}</small>")
    return f"<figure><figcaption>{caption}</figcaption>{imgs}</figure>"


def _picture_legend(is_ct: bool) -> str:
    return ("<p class='legend'>Axial slices in radiological view: patient right on the image's left, anterior "
            "at the top. Left: the whole slice, the white box is the zoomed region. "
            f"{_swatch(LINE_COLORS['axial_long'])} longest axial diameter, "
            f"{_swatch(LINE_COLORS['axial_short'])} perpendicular diameter, "
            f"{_swatch(LINE_COLORS['longest'])} &times; end of the longest 3D diameter (within "
            f"{NEAR_SLICE_MM:g} mm or one slice). Outlines: {_swatch(COLORS[Label.KIDNEY])} kidney, "
            f"{_swatch(COLORS[Label.TUMOR])} tumor, {_swatch(COLORS[Label.CYST])} cyst. "
            + ("CT window 40/400 HU." if is_ct else "No CT given: the label map is shown in grey levels.")
            + "</p>")


def render_html(measurements: Measurements, labels, geometry: Geometry, ct=None,
                title: str = "Kidney tumor measurements", source: Optional[str] = None) -> str:
    """The report as a string (see :func:`write_report`)."""
    lab = np.asarray(labels.array if isinstance(labels, Image) else labels)
    if ct is not None:
        ct_arr = np.asarray(ct.array if isinstance(ct, Image) else ct)
        if ct_arr.shape != lab.shape:
            raise ValueError(f"CT shape {ct_arr.shape} does not match the label map shape {lab.shape} (z, y, x).")
    m = measurements
    pictures = []
    shown = [les for les in m.lesions if les.lines.get("axial_long")][:MAX_PICTURES]
    if shown:
        # Views in LPS order, not reorient's copy: a strided copy of a 512 x 512 x 600 map costs seconds.
        # reorient on a zero-stride stand-in gives the permutation and the LPS geometry cheaply.
        _, g_lps, info = reorient(np.broadcast_to(np.uint8(0), lab.shape), geometry, "LPS")
        lab_lps = lps_view(lab, info.perm, info.flip)
        ct_lps = None if ct is None else lps_view(ct_arr, info.perm, info.flip)
        pictures = [_figure(les, render_lesion(lab_lps, g_lps, les, ct_lps)) for les in shown]
    kid_head = ["Kidney", "Volume (mL)", "Parenchyma (mL)", "Tumor (mL)", "Cyst (mL)"]
    les_head = ["Lesion", "Kind", "Side", "Volume (mL)", "Longest 3D (mm)", "Axial long &times; perp. (mm)",
                "Centroid RAS (mm)", "Confidence", "R", "E", "N", "A", "L", "R.E.N.A.L.", "PADUA (P E R S U Z)"]
    parts = [
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p class='meta'>Input: <b>{_e(source or 'unnamed')}</b> &middot; generated "
        f"{_e(datetime.now().strftime('%Y-%m-%d %H:%M'))} &middot; KidneyTumorSeg {_e(__version__)}</p>",
        "<p class='warn'><b>Not for clinical use.</b> Research software: volumes, diameters and scores are "
        "computed automatically from a segmentation and may be wrong; check them against the images.</p>",
        "<h2>Kidneys</h2>", _table(kid_head, _kidney_rows(m), "No kidney found."),
        "<h2>Lesions</h2>",
        _table(les_head, [_lesion_row(x, m.unsure_below) for x in m.lesions], "No tumor or cyst found."),
    ]
    if m.skipped_lesion_specks:
        parts.append(f"<p class='legend'>{m.skipped_lesion_specks} lesion speck(s) below the minimum size "
                     "were not measured.</p>")
    if m.uncertain:
        parts += [f"<h2>Uncertain lesions (confidence below {threshold_text(m.min_confidence)}: not drawn)</h2>",
                  _table(["Lesion", "Kind", "Side", "Volume (mL)", "Centroid RAS (mm)", "Confidence"],
                         _uncertain_rows(m), "")]
    if any(les.kind == "tumor" for les in m.lesions):
        parts += [renal_legend(), padua_legend()]
    if m.lesions or m.uncertain:
        parts.append(confidence_legend(m.min_confidence, m.unsure_below))
    if pictures:
        more = len(m.lesions) - len(shown)
        parts += ["<h2>Pictures</h2>", _picture_legend(ct is not None)] + pictures
        if more > 0:
            parts.append(f"<p class='legend'>Pictures of the {len(shown)} largest lesions shown; {more} more "
                         "in the tables.</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(measurements: Measurements, labels, geometry: Geometry, path: PathLike, ct=None,
                 overwrite: bool = False, title: str = "Kidney tumor measurements",
                 source: Optional[str] = None) -> Path:
    """Write the HTML report atomically (FileExistsError if ``path`` exists, unless ``overwrite``).

    ``labels``: the measured (z, y, x) label map (array or Image) on ``geometry``; ``ct``: optional CT on
    the same grid (Image or array) for the pictures; ``source``: the input's name for the header (default:
    the report's file name without ``_report.html``)."""
    out = Path(path).expanduser()
    if out.exists() and not overwrite:
        raise FileExistsError(f"Report {out} exists; pass overwrite=True to replace it.")
    if source is None:
        source = out.name[: -len("_report.html")] if out.name.endswith("_report.html") else out.stem
    text = render_html(measurements, labels, geometry, ct, title, source)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, text)
    return out
