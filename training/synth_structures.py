"""Paint the real map's structures and the pasted KiTS kidney into a synthetic CT (one phase's HU).

Each structure gets its drawn mean HU plus a smooth texture. Some get what makes them look like
themselves: bowel a wall around fluid, gas or oral contrast (stool in the colon); the liver its portal and
hepatic veins (curves where two smooth random fields are both near zero); bones a dense cortex; the
kidney a darker medulla in the arterial phase; tumors heterogeneity and sometimes a necrotic core.
Perirenal fat surrounds the kidney where no organ touches it.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
from scipy import ndimage

from KidneyTumorSegLib.labels import Label

from .anatomy_maps import ANATOMY
from .synth_anatomy import Painter, smooth_field

BOWEL = ("stomach", "duodenum", "small_bowel", "colon", "esophagus")


def _texture(P: Painter, shape, rng, scale_mm: float = 6.0) -> np.ndarray:
    return smooth_field(shape, rng, scale_mm / P.sp.mean())


def _paint_bowel(P: Painter, view: np.ndarray, mask: np.ndarray, name: str, hu: Dict[str, float], rng) -> None:
    lumen = ndimage.binary_erosion(mask, iterations=1)
    view[mask & ~lumen] = hu["bowel_wall"] + 6 * _texture(P, mask.shape, rng)[mask & ~lumen]
    kind = rng.choice(["fluid", "gas", "contrast", "stool"] if name == "colon" else ["fluid", "gas", "contrast"],
                      p=[0.3, 0.2, 0.2, 0.3] if name == "colon" else [0.5, 0.25, 0.25])
    if kind == "stool":  # mottled: gas bubbles in soft matter
        f = _texture(P, mask.shape, rng, 4.0)
        content = np.where(f > rng.uniform(0.3, 1.0), rng.uniform(-950, -700), rng.uniform(-120, 60))
    else:
        content = {"fluid": rng.uniform(0, 30), "gas": rng.uniform(-1000, -900),
                   "contrast": rng.uniform(200, 600)}[kind]
        content = content + 8 * _texture(P, mask.shape, rng, 3.0)
        if kind != "gas":  # a gas pocket against the anterior wall (smaller y is anterior in LPS)
            y = np.nonzero(lumen.any(axis=(0, 2)))[0]
            if len(y):
                front = np.arange(mask.shape[1]) < y[0] + rng.uniform(0, 0.3) * (y[-1] - y[0])
                content = np.where(front[None, :, None], rng.uniform(-1000, -900), content)
    view[lumen] = np.broadcast_to(content, mask.shape)[lumen]


def _paint_liver(P: Painter, view, mask, hu, rng) -> None:
    view[mask] = hu["liver"] + 5 * _texture(P, mask.shape, rng)[mask]
    a, b = (_texture(P, mask.shape, rng, 20.0) for _ in range(2))
    width = rng.uniform(0.06, 0.12)
    veins = mask & (np.abs(a) < width) & (np.abs(b) < width)
    view[veins] = hu["portal_splenic_vein"]


def _paint_bone(P: Painter, view, mask, hu, rng) -> None:
    view[mask] = hu["bone"] + 40 * _texture(P, mask.shape, rng, 3.0)[mask]
    shell = mask & ~ndimage.binary_erosion(mask, iterations=1)
    view[shell] += rng.uniform(200, 500)


def paint_structures(P: Painter, anatomy: np.ndarray, labels: np.ndarray, hu: Dict[str, float], phase: str) -> None:
    """Overwrite ``P.ct`` with every labelled structure of ``anatomy`` and the KiTS ``labels``."""
    rng = P.rng
    boxes = ndimage.find_objects(anatomy)
    names = {v: k for k, v in ANATOMY.items()}
    for value, box in enumerate(boxes, start=1):
        name = names.get(value)
        if box is None or name in (None, "body"):
            continue
        view, mask = P.ct[box], anatomy[box] == value
        if name in BOWEL:
            _paint_bowel(P, view, mask, name, hu, rng)
        elif name == "liver":
            _paint_liver(P, view, mask, hu, rng)
        elif name == "bone":
            _paint_bone(P, view, mask, hu, rng)
        else:
            mean = (hu["aorta"] + hu["inferior_vena_cava"]) / 2 if name == "renal_vessel" else hu[name]
            amp = 25.0 if (name == "spleen" and phase == "arterial") else 6.0
            view[mask] = mean + amp * _texture(P, mask.shape, rng)[mask]
    if labels.any():
        paint_kidneys(P, anatomy, labels, hu, phase)


def paint_kidneys(P: Painter, anatomy: np.ndarray, labels: np.ndarray, hu: Dict[str, float], phase: str) -> None:
    """Perirenal fat, then cortex/medulla, tumors and cysts of the KiTS labels."""
    rng = P.rng
    box = ndimage.find_objects((labels > 0).astype(np.uint8))[0]
    pad = np.ceil(12 / P.sp).astype(int)
    box = tuple(slice(max(s.start - p, 0), s.stop + p) for s, p in zip(box, pad))
    sub, view, anat = labels[box], P.ct[box], anatomy[box]
    fg = sub > 0
    near = (ndimage.distance_transform_edt(~fg, sampling=P.sp) < rng.uniform(2, 10)) & ~fg & (anat == 0)
    view[near] = rng.uniform(-120, -80) + 10 * rng.standard_normal(int(near.sum()))
    kid = sub == Label.KIDNEY
    view[kid] = hu["cortex"] + 8 * _texture(P, sub.shape, rng, 4.0)[kid]
    if abs(hu["medulla"] - hu["cortex"]) > 5:  # cortico-medullary phase: a darker core below a 3-7 mm cortex
        deep = kid & (ndimage.distance_transform_edt(fg, sampling=P.sp) > rng.uniform(3, 7))
        view[deep] = hu["medulla"] + 8 * _texture(P, sub.shape, rng, 4.0)[deep]
    tum = sub == Label.TUMOR
    if tum.any():
        view[tum] = (hu["tumor"] + rng.uniform(10, 40) * _texture(P, sub.shape, rng, 5.0))[tum]
        if rng.random() < 0.3:
            d = ndimage.distance_transform_edt(tum, sampling=P.sp)
            core = d > d.max() * rng.uniform(0.4, 0.7)
            view[core] = rng.uniform(5, 30) + 5 * rng.standard_normal(int(core.sum()))
    cyst = sub == Label.CYST
    view[cyst] = hu["cyst"] + 3 * rng.standard_normal(int(cyst.sum()))
