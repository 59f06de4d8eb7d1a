"""Packed small bowel (training.synthetic --packed-bowel): the fat in front of the kidneys cut into loop-sized
Voronoi cells, each a loop with a fat septum around it; only that fat is touched, and the option's own random
generator leaves the rest of the case as it was without the option."""
import numpy as np
import pytest
from scipy import ndimage

from training import synth_anatomy, synth_packed
from training.synth_anatomy import Painter
from training.synth_packed import paint_packed_bowel, voronoi_cells
from training.synthetic import real_config

FAT = -100.0
SP = np.array([2.0, 2.0, 2.0])


def _block(shape=(40, 80, 80)):
    """A fat block inside the abdominal wall; axes in mm (z, y, x) from the corner."""
    ct = np.full(shape, FAT, np.float32)
    inner = np.zeros(shape, bool)
    inner[2:-2, 2:-2, 2:-2] = True
    axes = [np.arange(n) * s for n, s in zip(shape, SP)]
    return ct, inner, axes


def test_voronoi_cells_cover_the_region_with_cells_of_the_asked_size():
    region = np.zeros((50, 80, 80), bool)
    region[5:45, 10:70, 10:70] = True
    cells = voronoi_cells(region, SP, 30.0, np.random.default_rng(0))
    assert (cells[region] > 0).all() and (cells[~region] == 0).all()
    assert cells.max() == round(region.sum() * SP.prod() / (30.0 ** 3 * np.pi / 6))  # one seed per cell volume
    # every voxel belongs to its nearest seed: in a box-shaped region each cell is convex, one component
    assert all(ndimage.label(cells == i)[1] == 1 for i in range(1, cells.max() + 1))


@pytest.mark.parametrize("unenhanced", [False, True])
def test_loops_fill_only_the_fat_in_front_of_and_below_the_kidneys_with_fat_between_them(monkeypatch, unenhanced):
    monkeypatch.setattr(synth_packed, "PACKED_SHARE", 1.0)
    ct, inner, axes = _block()
    ct[10:20, 10:30, 10:30] = 55.0  # a muscle already painted: never touched
    ct[20:30, 10:30, 40:60] = -60.0  # stool at a fat density, outside the fat mask: never touched either
    before = ct.copy()
    kidney_y, top_z = 100.0, 60.0  # mm: loops only at y < 100 and z < 60
    fat = inner & (ct == FAT)
    n = paint_packed_bowel(ct, fat, SP, axes, kidney_y, top_z, unenhanced, 200.0, np.random.default_rng(3))
    changed = ct != before
    assert n > 5
    zz, yy = np.meshgrid(axes[0], axes[1], indexing="ij")
    allowed = inner & (before == FAT) & ((yy < kidney_y) & (zz < top_z))[:, :, None]
    assert not (changed & ~allowed).any()
    assert changed.mean() > 0.05
    loops = changed & (ct > -500) & (ct < 400)  # wall, fluid, contrast and bands (not gas)
    if unenhanced:  # no vessels then: every changed voxel belongs to one loop, and loops never touch, not even
        # at a corner (26-connectivity), so each loop is a group of its own (a band may fall apart in pieces)
        assert ndimage.label(changed, structure=np.ones((3, 3, 3)))[1] >= n
        # nor what lay there before them: a fat voxel stays between a loop and the muscle or the stool
        assert not (ndimage.binary_dilation(changed, structure=np.ones((3, 3, 3))) & inner & ~fat).any()
    wall = (30, 50) if unenhanced else (70, 140)
    hu = ct[loops]
    assert np.mean((hu > wall[0] - 30) & (hu < wall[1] + 30)) > 0.2  # the walls and bands
    assert ((ct[changed] >= -1000) & (ct[changed] <= 400)).all()


def test_without_the_draw_nothing_changes(monkeypatch):
    monkeypatch.setattr(synth_packed, "PACKED_SHARE", 0.0)
    ct, inner, axes = _block()
    before = ct.copy()
    assert paint_packed_bowel(ct, inner, SP, axes, 200.0, 200.0, False, 200.0, np.random.default_rng(0)) == 0
    assert np.array_equal(ct, before)


def test_sixty_percent_of_the_cases_are_packed():
    ct, inner, axes = _block((20, 30, 30))
    painted = [paint_packed_bowel(ct.copy(), inner, SP, axes, 200.0, 200.0, False, 200.0,
                                  np.random.default_rng(s)) > 0 for s in range(200)]
    assert 0.5 < np.mean(painted) < 0.7


def test_the_option_paints_last_with_its_own_generator_and_respects_a_map_that_labels_bowel(monkeypatch):
    monkeypatch.setattr(synth_packed, "PACKED_SHARE", 1.0)
    calls = []  # the arguments of the one call: (ct, fat, ...)
    real = synth_anatomy.paint_packed_bowel
    monkeypatch.setattr(synth_anatomy, "paint_packed_bowel", lambda *a: calls.append(a) or real(*a))
    config = real_config(packed_bowel=True).scanner
    anchors = (60.0, 140.0, 120.0, 100.0, None)
    cts = []
    for packed_rng, skip in ((None, frozenset()), (np.random.default_rng(9), frozenset()),
                             (None, frozenset({"bowel"})), (np.random.default_rng(9), frozenset({"bowel"}))):
        P = Painter((60, 100, 120), (2.0, 2.0, 2.0), np.random.default_rng(5))
        synth_anatomy.paint_anatomy(P, anchors, config, False, skip, packed_rng=packed_rng)
        cts.append(P.ct)
    assert len(calls) == 1  # not without its generator, not where the map has its own small bowel
    # The rest of the case is drawn exactly as without the option: only fat became loops.
    changed = cts[1] != cts[0]
    assert changed.any() and not (changed & ~calls[0][1]).any()
    assert np.array_equal(cts[3], cts[2])
    # The fat it may fill is exactly what nothing was painted on since the fat: the case with nothing but the
    # body (every structure skipped; the fat is the first draw) is that fat.
    P = Painter((60, 100, 120), (2.0, 2.0, 2.0), np.random.default_rng(5))
    everything = frozenset({"lung", "liver", "spleen", "bowel", "colon", "muscle", "bone", "bladder", "vessels"})
    body = synth_anatomy.paint_anatomy(P, anchors, config, False, everything)
    fat = calls[0][1]
    assert fat.any() and not (fat & ~body).any()
    assert not (fat & (cts[0] != P.ct)).any()  # no voxel painted after the fat
    assert fat.sum() > 0.2 * body.sum()
    assert not (fat & ~ndimage.binary_erosion(body, iterations=5, border_value=1)).any()  # inside the wall


def test_a_cell_that_rounds_to_nothing_is_neither_painted_nor_counted(monkeypatch):
    monkeypatch.setattr(synth_packed, "PACKED_SHARE", 1.0)
    monkeypatch.setattr(synth_packed, "_rounded", lambda mask, sp, rng: np.zeros_like(mask))
    ct, inner, axes = _block()
    before = ct.copy()
    assert paint_packed_bowel(ct, inner, SP, axes, 200.0, 200.0, True, 200.0, np.random.default_rng(1)) == 0
    assert np.array_equal(ct, before)
