"""--contrast-dose: one factor a case scales every enhancing structure's enhancement (synth_phases)."""
import numpy as np
import pytest

from training.synth_phases import DOSE, FIXED, HU, MIN_LESION_CONTRAST, NON_ENHANCING, draw_appearance, \
    scale_enhancement
from synth_one_case import generate_case


def _base(name):
    return sum(HU[name][0]) / 2  # the mid unenhanced value


def test_enhancement_is_scaled_by_one_factor_and_the_rest_is_kept():
    scaled_any = False
    for seed in range(200):
        rng = np.random.default_rng(seed)
        phase, randomised, hu = draw_appearance(rng)
        before = dict(hu)
        out, k = scale_enhancement(hu, phase, randomised, np.random.default_rng(seed + 1000))
        assert hu == before  # the input dict is not modified
        if phase == "unenhanced" or randomised:
            assert (out, k) == (hu, 1.0)
            continue
        scaled_any = True
        assert DOSE[0] <= k <= DOSE[1]
        for name in HU:
            if name in FIXED or name in NON_ENHANCING:
                assert out[name] == hu[name], name
            elif name != "tumor" or abs(_base(name) + k * (hu[name] - _base(name)) - out["cortex"]) >= \
                    MIN_LESION_CONTRAST:  # a tumor that came within 10 HU of the cortex is moved off it again
                assert out[name] - _base(name) == pytest.approx(k * (hu[name] - _base(name))), name
        assert abs(out["tumor"] - out["cortex"]) >= MIN_LESION_CONTRAST - 1e-9
        assert out["cyst"] <= out["cortex"] - MIN_LESION_CONTRAST + 1e-9
    assert scaled_any


def test_bright_kidneys_occur_in_enhanced_phases():
    """The point of the option: cortex above the plain table's 250 HU ceiling in some enhanced cases."""
    cortex = []
    for seed in range(400):
        rng = np.random.default_rng(seed)
        phase, randomised, hu = draw_appearance(rng)
        if phase in ("arterial", "portal") and not randomised:
            cortex.append(scale_enhancement(hu, phase, randomised, rng)[0]["cortex"])
    assert max(h for ranges in HU["cortex"] for h in ranges) == 250
    assert 260 < max(cortex) <= 35 + DOSE[1] * 215 + 1e-9


def _generate(shared_data, out, seed, flag):
    return generate_case(shared_data, out, seed, ["--contrast-dose"] * flag)


def test_with_the_option_only_the_enhanced_cases_intensities_change(shared_data, tmp_path):
    """Phase, labels and anatomy are those of the case made without the option; an enhanced case's CT differs,
    an unenhanced one is byte-identical."""
    seen = {}
    for seed in range(13, 33):
        off, off_dir = _generate(shared_data, tmp_path / f"{seed}_off", seed, False)
        on, on_dir = _generate(shared_data, tmp_path / f"{seed}_on", seed, True)
        assert on["phase"] == off["phase"] and "contrast_dose" not in off
        enhanced = on["phase"] != "unenhanced" and not on["random_intensities"]
        if enhanced:
            assert DOSE[0] <= on["contrast_dose"] <= DOSE[1]
        else:
            assert on["contrast_dose"] == 1.0
        same = {n: (on_dir / n).read_bytes() == (off_dir / n).read_bytes()
                for n in ("imaging.nii.gz", "segmentation.nii.gz", "anatomy.nii.gz")}
        seen[enhanced] = same
        if len(seen) == 2:
            break
    assert seen[False] == {"imaging.nii.gz": True, "segmentation.nii.gz": True, "anatomy.nii.gz": True}
    assert seen[True] == {"imaging.nii.gz": False, "segmentation.nii.gz": True, "anatomy.nii.gz": True}
