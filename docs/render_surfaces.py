"""The README's planning picture: the --mesh surfaces of a KiTS23 label map, seen from the front, with the
tumor's measurements. Needs matplotlib (not a project dependency: this is a docs script).

Usage: python docs/render_surfaces.py [--case case_00003] [-o docs/planning_surfaces.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "KidneyTumorSeg")]

from KidneyTumorSegLib.image_io import read_labelmap  # noqa: E402
from KidneyTumorSegLib.measurements import measure  # noqa: E402
from KidneyTumorSegLib.segments import segments_from_labels  # noqa: E402
from KidneyTumorSegLib.surfaces import segment_surfaces  # noqa: E402

LABELS = REPO.parent / "shared" / "data" / "kits23" / "labels"


def caption(m) -> str:
    parts = []
    for t in m.tumors:
        r, p = t.renal, t.padua
        parts.append(f"{t.id} ({t.side}): {t.volume_ml:.1f} mL, {t.longest_diameter_mm:.0f} mm; "
                     f"R.E.N.A.L. {r.total}{r.suffix}, PADUA {p.total}{p.suffix}")
    return "\n".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", default="case_00003")
    p.add_argument("-o", "--output", type=Path, default=REPO / "docs" / "planning_surfaces.png")
    args = p.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    img = read_labelmap(LABELS / f"{args.case}.nii.gz")
    seg_map, segments = segments_from_labels(img.array, img.geometry)
    surfaces = segment_surfaces(seg_map, segments, img.geometry)
    fig = plt.figure(figsize=(7, 6), dpi=100)
    ax = fig.add_subplot(projection="3d")
    light = np.array([0.3, -1.0, 0.6]) / np.linalg.norm([0.3, -1.0, 0.6])
    for seg, surf in zip(segments, surfaces):
        ras = surf.vertices * [-1.0, -1.0, 1.0]  # shown in RAS, as Slicer does: patient right on the left
        tri = ras[surf.faces]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        shade = 0.5 + 0.5 * np.abs((n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)) @ light)
        colors = np.clip(np.asarray(seg.color)[None] * shade[:, None], 0, 1)
        ax.add_collection3d(Poly3DCollection(tri, facecolors=colors, edgecolor="none",
                                             alpha=0.4 if seg.label == 1 else 1.0))
    pts = np.concatenate([s.vertices * [-1.0, -1.0, 1.0] for s in surfaces])
    centre, half = (pts.max(0) + pts.min(0)) / 2, (pts.max(0) - pts.min(0)).max() / 2
    ax.set(xlim=(centre[0] - half, centre[0] + half), ylim=(centre[1] - half, centre[1] + half),
           zlim=(centre[2] - half, centre[2] + half))
    ax.view_init(elev=10, azim=90)  # from the front (anterior): the patient's right on the image's left
    ax.set_box_aspect((1, 1, 1))
    ax.set_axis_off()
    for text, x in (("R", 0.03), ("L", 0.97)):
        ax.text2D(x, 0.5, text, transform=ax.transAxes, fontsize=14, fontweight="bold", ha="center")
    ax.text2D(0.5, 0.02, f"view from the front, {2 * half:.0f} mm across", transform=ax.transAxes, ha="center",
              fontsize=8)
    m = measure(img.array, img.geometry)
    ax.set_title(f"KiTS23 {args.case}: closed STL surfaces (--mesh), kidneys translucent\n{caption(m)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.output, bbox_inches="tight")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
