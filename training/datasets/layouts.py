"""Finding the cases of a kidney-tumor dataset on disk: KiTS19, KiTS21, KiTS23 and nnU-Net raw layouts.

Layouts (``root`` is the folder given on the command line):
  * ``kits19``: ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``, labels 0 bg / 1 kidney / 2 tumor;
  * ``kits21``: ``case_XXXXX/imaging.nii.gz`` + ``aggregated_MAJ_seg.nii.gz`` (majority vote of the
    annotators), 1 kidney / 2 tumor / 3 cyst;
  * ``kits23``: ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``, 0-3 (our Label convention);
  * ``nnunet``: ``imagesTr/NAME_0000.nii.gz`` + ``labelsTr/NAME.nii.gz`` + ``dataset.json``; its "labels"
    are mapped onto our Label values by NAME (see :func:`nnunet_label_mapping`).
A ``case_*`` folder may also sit one level down (``root/data`` as in the KiTS19/21 repositories,
``root/dataset`` as in KiTS23).

Auto-detection: ``dataset.json`` + ``imagesTr`` -> nnunet; any ``aggregated_MAJ_seg.nii.gz`` -> kits21;
``imaging`` + ``segmentation`` -> kits19 only when ``kits.json`` lies beside the cases without any KiTS21
file (the KiTS19 repository), else kits23. KiTS19 and KiTS23 share file names and label values 0-2, so
reading a KiTS19 set as kits23 gives the same labels; ``kits19`` only additionally refuses label 3.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from KidneyTumorSegLib.labels import Label

from .heldout import check_not_held_out

LAYOUTS = ("kits19", "kits21", "kits23", "nnunet")
KITS_MAPPINGS = {
    "kits19": ((0, Label.BACKGROUND), (1, Label.KIDNEY), (2, Label.TUMOR)),
    "kits21": ((0, Label.BACKGROUND), (1, Label.KIDNEY), (2, Label.TUMOR), (3, Label.CYST)),
    "kits23": ((0, Label.BACKGROUND), (1, Label.KIDNEY), (2, Label.TUMOR), (3, Label.CYST)),
}
KITS_LABEL_FILE = {"kits19": "segmentation.nii.gz", "kits21": "aggregated_MAJ_seg.nii.gz",
                   "kits23": "segmentation.nii.gz"}
_CASE_DIR = re.compile(r"^case_\w+$")
# nnU-Net label names -> our classes (lower case, spaces/dashes as underscores). "masses" (tumor + cyst,
# the KiTS "mass" region) is resolved in nnunet_label_mapping.
_NAMES = {
    "background": {"background", "bg", "clear_label"},
    "kidney": {"kidney", "kidneys", "kidney_parenchyma", "renal_parenchyma", "kidney_and_masses"},
    "tumor": {"tumor", "tumour", "tumors", "kidney_tumor", "kidney_tumour", "renal_tumor", "renal_tumour",
              "tumor_kidney", "neoplasm", "renal_mass", "kidney_mass"},
    "cyst": {"cyst", "cysts", "kidney_cyst", "renal_cyst"},
    "masses": {"masses", "mass", "kidney_masses", "renal_masses"},
}


class DatasetError(ValueError):
    """A dataset problem; the message names the case (or file) and says what to fix."""


@dataclass(frozen=True)
class Case:
    """One training case. ``label_mapping``: (source label value, our Label) pairs."""

    case_id: str
    image_path: Path
    label_path: Path
    layout: str
    label_mapping: Tuple[Tuple[int, Label], ...]

    @property
    def mapping(self) -> Dict[int, Label]:
        return dict(self.label_mapping)

    def map_labels(self, source: np.ndarray) -> np.ndarray:
        """Source label values -> uint8 Label values; an unknown value raises a DatasetError naming the case."""
        lut = np.full(max(int(source.max(initial=0)), max(v for v, _ in self.label_mapping)) + 1, 255, np.uint8)
        for value, label in self.label_mapping:
            lut[value] = int(label)
        out = lut[source]
        if np.any(out == 255):
            bad = sorted(int(v) for v in np.unique(source[out == 255]))
            raise DatasetError(f"{self.case_id}: label map '{self.label_path}' has values {bad} that the "
                               f"{self.layout} layout does not define (known: {sorted(self.mapping)}); "
                               "check the layout or the dataset.json labels.")
        return out


def _canonical_name(name: str) -> str:
    key = re.sub(r"[\s\-]+", "_", str(name).strip().lower())
    for cls, names in _NAMES.items():
        if key in names:
            return cls
    raise DatasetError(f"dataset.json label name {name!r} is unknown; expected background, kidney, tumor, cyst "
                       "or masses (tumor + cyst) - rename it or convert the labels first.")


def nnunet_label_mapping(labels: dict) -> Tuple[Tuple[int, Label], ...]:
    """Map a dataset.json "labels" entry onto our Label values by name.

    Accepts nnU-Net v2 ``{"name": value}`` (value an int, or a list for region-based training such as the
    KiTS23 dataset: kidney [1,2,3], masses [2,3], tumor 2) and v1 ``{"value": "name"}``. A value takes the
    most specific class among the names that contain it: tumor, then cyst, then masses, then kidney.
    "masses" alone means cyst when the file also declares a tumor region (masses minus tumor), else tumor
    (a KiTS19-style "kidney + masses" set, where masses are nearly all tumors).
    """
    if not isinstance(labels, dict) or not labels:
        raise DatasetError("dataset.json has no 'labels' dictionary; add one such as "
                           '{"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}.')
    if all(str(k).isdigit() for k in labels):  # nnU-Net v1: value -> name
        pairs = [(name, int(value)) for value, name in labels.items()]
    else:
        pairs = [(name, value) for name, value in labels.items()]
    members: Dict[int, set] = {}
    for name, value in pairs:
        cls = _canonical_name(name)
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise DatasetError(f"dataset.json label {name!r} has value {value!r}; values must be "
                                   "non-negative integers (or lists of them).")
            members.setdefault(v, set()).add(cls)
    has_tumor = any("tumor" in s for s in members.values())
    mapping = []
    for v, classes in sorted(members.items()):
        if "tumor" in classes:
            label = Label.TUMOR
        elif "cyst" in classes:
            label = Label.CYST
        elif "masses" in classes:
            label = Label.CYST if has_tumor else Label.TUMOR
        elif "kidney" in classes:
            label = Label.KIDNEY
        else:
            label = Label.BACKGROUND
        mapping.append((v, label))
    if 0 not in members:
        mapping.insert(0, (0, Label.BACKGROUND))
    return tuple(mapping)


def _kits_root(root: Path) -> Path:
    """The folder that holds the case_* folders: root itself, or root/data, root/dataset."""
    for cand in (root, root / "dataset", root / "data"):
        if cand.is_dir() and any(_CASE_DIR.match(p.name) and p.is_dir() for p in cand.iterdir()):
            return cand
    return root


def detect_layout(root: Union[str, Path]) -> str:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Dataset folder '{root}' does not exist.")
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return "nnunet"
    base = _kits_root(root)
    cases = [p for p in base.iterdir() if p.is_dir() and _CASE_DIR.match(p.name)]
    if not cases:
        raise DatasetError(f"Cannot recognise the layout of '{root}': no case_XXXXX folders (KiTS19/21/23) and "
                           "no dataset.json + imagesTr (nnU-Net); pass layout= explicitly or fix the folder.")
    if any((c / "aggregated_MAJ_seg.nii.gz").exists() for c in cases):
        return "kits21"
    if (base / "kits.json").is_file() or (root / "kits.json").is_file():
        return "kits19"
    return "kits23"


def discover(root: Union[str, Path], layout: str = "auto", skip_incomplete: bool = False) -> List[Case]:
    """All cases under ``root``, sorted by case id.

    A case with an image but no label map (or the reverse) raises a DatasetError naming the case, unless
    ``skip_incomplete`` (e.g. the KiTS19 test cases, which have no labels). The held-out example CT
    raises :class:`~training.datasets.heldout.HeldOutError`. Geometry is checked when the case is read.
    """
    root = Path(root)
    layout = detect_layout(root) if layout == "auto" else layout
    if layout not in LAYOUTS:
        raise DatasetError(f"Unknown layout {layout!r}; use 'auto' or one of {LAYOUTS}.")
    cases = _discover_nnunet(root, skip_incomplete) if layout == "nnunet" else \
        _discover_kits(root, layout, skip_incomplete)
    if not cases:
        raise DatasetError(f"No complete case found in '{root}' (layout {layout}).")
    for c in cases:
        check_not_held_out(c.image_path, case_id=c.case_id)
    return sorted(cases, key=lambda c: c.case_id)


def _incomplete(case_id: str, have: Path, missing: Path, what: str, skip: bool) -> None:
    if not skip:
        raise DatasetError(f"{case_id}: {what} '{missing}' is missing (found '{have}'); add it, remove the case, "
                           "or pass skip_incomplete=True to ignore incomplete cases.")


def _discover_kits(root: Path, layout: str, skip: bool) -> List[Case]:
    base = _kits_root(root)
    label_name = KITS_LABEL_FILE[layout]
    cases = []
    for d in sorted(p for p in base.iterdir() if p.is_dir() and _CASE_DIR.match(p.name)):
        image, label = d / "imaging.nii.gz", d / label_name
        if not image.exists() and not label.exists():
            continue  # an empty or unrelated case folder
        if not label.exists():
            _incomplete(d.name, image, label, "label map", skip)
            continue
        if not image.exists():
            _incomplete(d.name, label, image, "image", skip)
            continue
        cases.append(Case(d.name, image, label, layout, KITS_MAPPINGS[layout]))
    return cases


def _discover_nnunet(root: Path, skip: bool) -> List[Case]:
    try:
        meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"Cannot read '{root / 'dataset.json'}': {exc}.") from exc
    mapping = nnunet_label_mapping(meta.get("labels"))
    ending = meta.get("file_ending", ".nii.gz")
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    images = {p.name[:-len(ending)][:-5]: p for p in images_dir.glob(f"*_0000{ending}")}
    labels = {p.name[:-len(ending)]: p for p in labels_dir.glob(f"*{ending}")} if labels_dir.is_dir() else {}
    cases = []
    for name in sorted(set(images) | set(labels)):
        if name not in labels:
            _incomplete(name, images[name], labels_dir / f"{name}{ending}", "label map", skip)
        elif name not in images:
            _incomplete(name, labels[name], images_dir / f"{name}_0000{ending}", "image", skip)
        else:
            cases.append(Case(name, images[name], labels[name], "nnunet", mapping))
    return cases


def select(cases: Sequence[Case], case_ids: Optional[Sequence[str]]) -> List[Case]:
    """The cases with the given ids (all when None); unknown ids raise a DatasetError."""
    if case_ids is None:
        return list(cases)
    by_id = {c.case_id: c for c in cases}
    unknown = [i for i in case_ids if i not in by_id]
    if unknown:
        raise DatasetError(f"Unknown case ids {unknown[:5]}{' ...' if len(unknown) > 5 else ''}.")
    return [by_id[i] for i in case_ids]
