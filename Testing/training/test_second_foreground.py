"""A second foreground class for the sampler (decision 112: cyst-centred patches): its exact share of the
foreground patches, only on entries that have it, nothing changed for recipes without it, and the recipe's
checks and its path to the trainer's sampler."""
import hashlib

import pytest

from training.recipe import TrainingRecipe
from training.sampling import RANDOM, PatchSampler, recipe_sampler

LABELS = ["background", "kidney", "tumor", "cyst"]


def _entries(cysts):
    """Cache-index entries (only what planning reads): kidney and tumor in each, a cyst where ``cysts`` says."""
    return [{"case_id": f"c{i}", "class_voxels": {"1": 500, "2": 80, "3": 30 if c else 0}}
            for i, c in enumerate(cysts)]


def _plans(entries, second=None, fg=0.5, n=40, epoch=0):
    sampler = PatchSampler("unused", entries, (16, 16, 16), 2, fg, [False] * len(entries), second_fg=second)
    return sampler.plan_epoch(epoch, n // 2, 2)


def test_the_share_of_foreground_patches_centred_on_the_second_class_is_exact_and_on_entries_with_it():
    entries = _entries([False, True, False, True, False])
    for epoch in (0, 3):  # cc's settings: foreground 0.6, a third of it on cysts
        plans = _plans(entries, (3, 1 / 3), fg=0.6, n=100, epoch=epoch)
        centres = [p.centre_class for p in plans]
        assert centres.count(3) == 20 and centres.count(2) == 40 and centres.count(RANDOM) == 40
        fg = [c for c in centres if c != RANDOM]
        for f in range(len(fg) + 1):  # exact at every point of the run: floor(f / 3) of the first f
            assert fg[:f].count(3) == (f + 60 * epoch) // 3 - (60 * epoch) // 3
        assert {p.entry for p in plans if p.centre_class == 3} <= {1, 3}


def test_without_a_second_class_or_with_share_zero_the_plans_are_those_of_before():
    """The plans of a fixed setting, as the sampler made them before the second class existed (005bacb, digest of
    (entry, centre class, seed) over epochs 0 and 3): the random stream is not touched."""
    entries = _entries([False, True, False, True, False])
    for second in (None, (3, 0.0)):
        sampler = PatchSampler("unused", entries, (16, 16, 16), 2, 0.5, [False, True, False, True, False],
                               hard_case_factor=2.0, second_fg=second)
        plans = sampler.plan_epoch(0, 20, 2) + sampler.plan_epoch(3, 20, 2)
        digest = hashlib.sha256(repr([(p.entry, p.centre_class, p.seed) for p in plans]).encode()).hexdigest()
        assert digest[:16] == "e5a24180ac2b38ba"  # numpy's PCG64 streams are stable across versions and platforms


def test_no_entry_with_the_second_class_keeps_every_foreground_patch_on_the_first():
    entries = _entries([False] * 4)
    assert _plans(entries, (3, 0.5)) == _plans(entries)


def test_the_recipe_checks_and_passes_the_second_class():
    with pytest.raises(ValueError, match="second_foreground_share"):
        TrainingRecipe(second_foreground_label="cyst")  # share 0 with a label: a typo, not a choice
    with pytest.raises(ValueError, match="second_foreground_share"):
        TrainingRecipe(second_foreground_share=0.3)
    with pytest.raises(ValueError, match="second_foreground_share"):
        TrainingRecipe(second_foreground_label="cyst", second_foreground_share=1.5)
    recipe = TrainingRecipe(second_foreground_label="cyst", second_foreground_share=0.25)
    with pytest.raises(ValueError, match="not one of the stage's labels"):
        recipe.second_foreground(["background", "kidney"])
    for label in ("background", "tumor"):  # no class to centre on, or the first foreground class again
        with pytest.raises(ValueError, match="neither background nor the foreground label"):
            TrainingRecipe(second_foreground_label=label, second_foreground_share=0.25).second_foreground(LABELS)
    assert recipe.second_foreground(LABELS) == (3, 0.25) and TrainingRecipe().second_foreground(LABELS) is None
    index = {"cases": {e["case_id"]: {} for e in _entries([True])}}
    sampler = recipe_sampler("unused", index, _entries([True]), LABELS, (16, 16, 16), recipe, augment=False)
    assert sampler.second_fg == (3, 0.25)
