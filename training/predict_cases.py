"""Run a released model on a list of cases for ``training.evaluate``: each case's label map into
OUT/labels and its reference, in this project's label values whatever the source layout's, into OUT/ref."""
from __future__ import annotations

import os
from pathlib import Path


def predict(model_dir: Path, cases, out: Path, device: str, say) -> None:
    """Run the cascade on each validation case; label maps to out/labels, mapped references to out/ref."""
    from KidneyTumorSegLib.image_io import read_labelmap, write_labelmap
    from KidneyTumorSegLib.pipeline import SegmentOptions, load_cascade, segment_case

    options = SegmentOptions(model=str(model_dir), device=device, overwrite=True)
    cascade = load_cascade(options)
    for sub in ("raw", "labels", "ref"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(cases, 1):
        label_out, ref_out = out / "labels" / f"{case.case_id}.nii.gz", out / "ref" / f"{case.case_id}.nii.gz"
        if not ref_out.exists():  # references in our label values, whatever the source layout's values
            ref = read_labelmap(case.label_path)
            write_labelmap(case.map_labels(ref.array), ref.geometry, ref_out, overwrite=True)
        if label_out.exists():  # restart: cases already predicted are kept
            continue
        raw = out / "raw" / case.case_id
        result = segment_case(case.image_path, raw, cascade, options)
        os.replace(result.outputs["labelmap"], label_out)  # only label maps go to evaluation
        say(f"[{i}/{len(cases)}] {case.case_id}: {result.seconds:.1f} s, {result.message}")
