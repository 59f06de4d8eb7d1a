"""Collapsed small-bowel loops (training.synthetic --collapsed-loops): flat bands of wall-density soft tissue
with fluid-density speckle and no gas; 40 % of the procedural loops with the option, none without it (that the
loops are then exactly the v2 data's, draw for draw, is test_synth_real's
test_bowel_loops_paint_exactly_as_the_v2_data_were_painted)."""
import numpy as np
import pytest
from scipy import ndimage

from training import synth_anatomy
from training.synth_anatomy import Painter, _paint_bowel, _paint_collapsed_loop
from training.synthetic import main, real_config

FAT = -100.0
FRAME = (60.0, 140.0, 120.0, 100.0, 100.0, 80.0)


@pytest.mark.parametrize("unenhanced, wall", [(False, (80, 160)), (True, (30, 50))])
def test_a_collapsed_loop_is_a_flat_band_of_wall_with_fluid_streaks(unenhanced, wall):
    flat = []
    for seed in range(6):
        P = Painter((50, 60, 60), (2.0, 2.0, 2.0), np.random.default_rng(seed))
        P.ct[:] = FAT
        _paint_collapsed_loop(P, (50.0, 60.0, 60.0), 15.0, np.ones(P.shape, bool), unenhanced)
        band = P.ct != FAT
        hu = P.ct[band]
        streak = (hu >= 0) & (hu <= 30) if not unenhanced else np.zeros(hu.shape, bool)
        # wall (drawn mean +- its 12 HU texture, about 3 sd) everywhere but the streaks; no gas, no fat inside
        assert hu.min() >= -20 and np.mean((hu > wall[0] - 40) & (hu < wall[1] + 40) | streak) == 1.0
        if not unenhanced:
            assert 0.01 < streak.mean() < 0.25, streak.mean()
        extent = [2.0 * np.ptp(np.nonzero(band.any(axis=tuple(a for a in range(3) if a != k)))[0]) + 2.0
                  for k in range(3)]
        assert 4.0 <= min(extent) <= 2 * 1.3 * 7 + 2.0 < max(extent)  # 6-14 mm thick (rough edge), 30+ mm across
        assert ndimage.label(band)[1] == 1
        flat.append(int(np.argmin(extent)))
    assert len(set(flat)) > 1  # flat along different axes


def test_forty_percent_of_the_loops_collapse_with_the_option_and_none_without(monkeypatch):
    kinds = []
    monkeypatch.setattr(synth_anatomy, "_paint_collapsed_loop", lambda *a: kinds.append("collapsed"))
    monkeypatch.setattr(synth_anatomy, "_paint_walled_loop", lambda *a: kinds.append("walled"))
    kidneys = [((60.0, 140.0, 171.0), (30.0, 20.0, 15.0), 1.0)]
    for collapsed in (False, True):
        kinds.clear()
        for seed in range(8):
            P = Painter((48, 100, 120), (2.0, 2.0, 2.0), np.random.default_rng(seed))
            _paint_bowel(P, FRAME, np.ones(P.shape, bool), {"colon"}, True, False, kidneys, collapsed)
        share = kinds.count("collapsed") / len(kinds)
        assert (0.3 < share < 0.5) if collapsed else share == 0.0, share


def test_the_option_reaches_the_painter_and_needs_the_real_anatomy(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(synth_anatomy, "_paint_collapsed_loop", lambda *a: calls.append(a))
    for config in (real_config(), real_config(collapsed_loops=True)):
        calls.clear()
        P = Painter((60, 100, 120), (2.0, 2.0, 2.0), np.random.default_rng(5))
        synth_anatomy.paint_anatomy(P, (60.0, 140.0, 120.0, 100.0, None), config.scanner, False)
        assert len(calls) > 5 if config.scanner.collapsed_loops else calls == []
    with pytest.raises(SystemExit) as exc:
        main(["--kits23", str(tmp_path), "-o", str(tmp_path / "out"), "--collapsed-loops"])
    assert exc.value.code == 2 and "go with --anatomy" in capsys.readouterr().err
    assert not (tmp_path / "out" / "synthetic.json").exists()
