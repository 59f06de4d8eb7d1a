"""A picture of synthetic cases beside real CTs at the same soft-tissue window, and their HU per structure.

Each row is the first row of the project's QC picture (axial, coronal, sagittal through a kidney or a
lesion; window L40 W400) of one CT: the given synthetic cases first, then the real CTs (the example CT,
unenhanced, and TotalSegmentator s0009, contrast-enhanced; both licences allow a picture; 3D-IRCADb's
no-derivatives licence does not). Printed: median HU of kidney, tumor, cyst and, from anatomy.nii.gz,
liver, spleen, aorta and renal sinus fat, so the painted ranges can be checked against the real CTs.

Usage: python benchmarks/synthetic_gallery.py SYNTH_DIR [-n 4] [-o docs/synthetic_vs_real.png]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "KidneyTumorSeg"), str(REPO)]

from KidneyTumorSegLib.image_io import read_image, read_labelmap  # noqa: E402
from KidneyTumorSegLib.qc import render_qc  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
ANATOMY_SHOWN = ("liver", "spleen", "aorta", "renal_sinus_fat")


def first_row(ct, labels) -> np.ndarray:
    pic = render_qc(ct, labels)
    top, bottom = min(p[2][0] for p in pic.panels if p[0] == 0), max(p[2][1] for p in pic.panels if p[0] == 0)
    return pic.rgb[max(top - 4, 0):bottom + 4]


def medians(ct: np.ndarray, masks: dict) -> dict:
    return {name: (round(float(np.median(ct[m]))) if m.any() else None) for name, m in masks.items()}


def synthetic_rows(folder: Path, n: int):
    names = json.loads((folder / "anatomy_labels.json").read_text(encoding="utf-8"))
    log = json.loads((folder / "synthetic.json").read_text(encoding="utf-8"))["cases"]
    for case_id in sorted(log)[:n]:
        ct = read_image(folder / case_id / "imaging.nii.gz")
        lab = read_labelmap(folder / case_id / "segmentation.nii.gz").array
        anat = read_labelmap(folder / case_id / "anatomy.nii.gz").array
        masks = {"kidney": lab == 1, "tumor": lab == 2, "cyst": lab == 3,
                 **{k: anat == names[k] for k in ANATOMY_SHOWN}}
        yield f"{case_id} ({log[case_id].get('phase')})", first_row(ct, lab), medians(ct.array, masks)


def real_rows():
    ct = read_image(SHARED / "ct" / "example_ct.nii.gz")
    kid = sum(read_labelmap(SHARED / "ct" / f"example_ct_kidney_{s}.nii.gz").array > 0 for s in ("left", "right"))
    yield "example_ct (real, unenhanced)", first_row(ct, kid.astype(np.uint8)), medians(ct.array, {"kidney": kid > 0})
    d = SHARED / "real_ct" / "totalseg_s0009"
    ct, lab = read_image(d / "ct.nii.gz"), read_labelmap(d / "labels.nii.gz").array
    ids = {row.split(",")[1].strip(): int(row.split(",")[0]) for row in
           (d / "classes.csv").read_text(encoding="utf-8").splitlines()[1:]}
    kid = np.isin(lab, [ids["kidney_left"], ids["kidney_right"]])
    masks = {"kidney": kid, "liver": lab == ids["liver"], "spleen": lab == ids["spleen"], "aorta": lab == ids["aorta"]}
    yield "totalseg_s0009 (real, contrast)", first_row(ct, kid.astype(np.uint8)), medians(ct.array, masks)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("synthetic", type=Path, help="a folder written by training.synthetic --anatomy")
    p.add_argument("-n", type=int, default=4, help="synthetic cases to show")
    p.add_argument("-o", "--output", type=Path, default=REPO / "docs" / "synthetic_vs_real.png")
    args = p.parse_args(argv)
    rows = list(synthetic_rows(args.synthetic, args.n)) + list(real_rows())
    width = max(r.shape[1] for _, r, _ in rows)
    pad = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=64) for _, r, _ in rows]
    sitk.WriteImage(sitk.GetImageFromArray(np.concatenate(pad, axis=0), isVector=True), str(args.output))
    print("| CT (rows top to bottom) | " + " | ".join(["kidney", "tumor", "cyst", *ANATOMY_SHOWN]) + " |")
    print("|---" * (5 + len(ANATOMY_SHOWN)) + "|")
    for name, _, med in rows:
        print(f"| {name} | " + " | ".join("-" if med.get(k) is None else str(med[k]) for k in
                                          ["kidney", "tumor", "cyst", *ANATOMY_SHOWN]) + " |")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
