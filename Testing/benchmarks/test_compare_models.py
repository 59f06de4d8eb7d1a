"""benchmarks/compare_models.py: the comparison table and the ship rule of decision 54, on figures made up here
so that every total and every verdict is known."""
import json
from pathlib import Path

import pytest

from benchmarks.compare_models import load, main, ship_rule, table, tumor_dice_difference
from benchmarks.lesion_errors import COLUMNS, FALSE_IN, NEAR_MM
from KidneyTumorSegLib.atomic import write_csv

CASES = ("example_ct", "ircadb_1.1", "totalseg_s0009")


def _write(root, name, dice, outside, liver, tumor, found=True, false_ml=(2.0, 3.5)):
    real, card, conf = (root / name / d for d in ("real", "card", "conf"))
    for d in (real, card, conf):
        d.mkdir(parents=True)
    cases = [{"case": c, "kidney_dice": k, "outside_kidneys_ml": o, "masses_ml": o + 1.0,
              "in_liver_spleen_ml": None if c == "example_ct" else l, "both_found": found}
             for c, k, o, l in zip(CASES, dice, outside, liver)]
    (real / "real_ct.json").write_text(json.dumps({"model": name, "cases": cases}))
    held = {"mean": {"tumor": {"dice": tumor}, "cyst": {"dice": 0.2}}, "tumor_dice_by_size": {"2-4cm": {"mean": 0.1}},
            "cyst_dice_cases_with_cyst": {"mean": 0.05}}
    (card / "registry_metrics.json").write_text(json.dumps({"held_out_synthetic": held}))
    lesions = [{"volume_ml": v, "true": False} for v in false_ml]
    (conf / "confidence_threshold.json").write_text(json.dumps({"groups": {"false_synthetic": lesions}}))
    return [str(real), str(card), str(conf)]


@pytest.fixture
def base(tmp_path):
    return load("v2", _write(tmp_path, "v2", (0.90, 0.80, 0.90), (12.0, 25.0, 0.0), (0, 0.1, 0.0), 0.25))


def test_the_table_has_one_column_per_model_with_the_totals(tmp_path, base):
    other = load("ep", _write(tmp_path, "ep", (0.91, 0.82, 0.92), (10.0, 20.0, 1.5), (0, 0.0, 0.0), 0.40))
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in table([base, other]).splitlines()}
    assert rows["check"] == ["v2", "ep |"]
    assert rows["the same, total, mL"] == ["37.0", "31.5 |"]
    assert rows["all predicted tumor + cyst, total, mL"] == ["40.0", "34.5 |"]
    assert rows["real-CT lesion in the liver or spleen, mL"] == ["– / 0.1 / 0.0", "– / 0.0 / 0.0 |"]
    assert rows["held-out synthetic tumor Dice (2-4 cm)"][1] == "0.400 (0.100) |"
    assert rows["false lesion on the synthetic confidence set"][0] == "5.5 mL in 2"
    assert rows["held-out synthetic foreground in the liver or spleen, mean mL"] == ["–", "– |"]  # older cards
    held = json.loads((tmp_path / "ep" / "card" / "registry_metrics.json").read_text())
    held["held_out_synthetic"]["in_liver_spleen_ml"] = {"n": 24, "mean_ml": 24.7, "max_ml": 230.0,
                                                        "cases_over_10_ml": 5}
    (tmp_path / "ep" / "card" / "registry_metrics.json").write_text(json.dumps(held))
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:]
            for line in table([base, load("ep", [str(tmp_path / "ep" / d) for d in ("real", "card", "conf")])])
            .splitlines()}
    assert rows["held-out synthetic foreground in the liver or spleen, mean mL"][1] == "24.7 (5 of 24 > 10 mL) |"


def test_a_model_better_on_every_point_is_shipped(tmp_path, base):
    good = load("ep", _write(tmp_path, "ep", (0.91, 0.82, 0.92), (10.0, 20.0, 1.5), (0, 0.0, 1.0), 0.40))
    assert all(ship_rule(good, base).values())


@pytest.mark.parametrize("change, failed", [
    (dict(outside=(12.0, 25.0, 0.0)), "(a)"),          # as much false lesion as the baseline: not less
    (dict(liver=(0, 1.2, 0.0)), "(b)"),
    (dict(dice=(0.90, 0.79, 0.90)), "(c)"),
    (dict(found=False), "(c)"),
    (dict(tumor=0.24), "(d)"),
])
def test_each_point_fails_on_its_own(tmp_path, base, change, failed):
    figures = dict(dice=(0.91, 0.82, 0.92), outside=(10.0, 20.0, 1.5), liver=(0, 0.0, 1.0), tumor=0.40)
    figures.update(change)
    rule = ship_rule(load("x", _write(tmp_path, "x", **figures)), base)
    assert [text[:3] for text, ok in rule.items() if not ok] == [failed]


def test_the_command_prints_the_verdict_and_refuses_bad_input(tmp_path, base, capsys):
    v2 = _write(tmp_path, "v2b", (0.90, 0.80, 0.90), (12.0, 25.0, 0.0), (0, 0.1, 0.0), 0.25)
    bad = _write(tmp_path, "bad", (0.95, 0.95, 0.95), (20.0, 25.0, 0.0), (0, 0.0, 0.0), 0.5)
    assert main(["--model", "v2", *v2, "--model", "bad", *bad, "--baseline", "v2"]) == 0
    out = capsys.readouterr().out
    assert "FAIL (a) false lesion outside the kidneys 45.0 mL < 37.0" in out and out.rstrip().endswith("DO NOT SHIP")
    with pytest.raises(SystemExit, match="real_ct.json first"):
        main(["--model", "v2", str(tmp_path / "missing"), v2[1]])
    with pytest.raises(SystemExit):
        main(["--model", "v2", *v2, "--baseline", "v3"])
    other = load("o", bad)
    other.cases = other.cases[:2]
    with pytest.raises(SystemExit, match="different real CTs"):
        ship_rule(other, base)


def test_missing_parts_empty_and_mismatched_figures(tmp_path, base):
    folders = _write(tmp_path, "nocyst", (0.91, 0.82, 0.92), (10.0, 20.0, 1.5), (0, 0.0, 0.0), 0.40)
    card = tmp_path / "nocyst" / "card" / "registry_metrics.json"
    held = json.loads(card.read_text())
    held["held_out_synthetic"]["cyst_dice_cases_with_cyst"] = {"n": 0, "mean": None}  # as model_card.py writes it
    del held["held_out_synthetic"]["tumor_dice_by_size"]
    card.write_text(json.dumps(held))
    rows = table([base, load("nocyst", folders)]).splitlines()
    assert "| held-out synthetic cyst Dice (cases with a cyst) | 0.200 (0.050) | 0.200 |" in rows
    assert "| held-out synthetic tumor Dice (2-4 cm) | 0.250 (0.100) | 0.400 |" in rows
    real = tmp_path / "nocyst" / "real" / "real_ct.json"
    cases = json.loads(real.read_text())
    cases["cases"] = cases["cases"][::-1]  # the same CTs in another order: columns would not line up
    real.write_text(json.dumps(cases))
    with pytest.raises(SystemExit, match="different real CTs"):
        table([base, load("nocyst", folders)])
    real.write_text(json.dumps({"cases": []}))
    with pytest.raises(SystemExit, match="no real-CT cases"):
        load("nocyst", folders)


def test_the_held_out_false_tumor_comes_from_lesion_errors_tumor_rows_only(tmp_path, base):
    folders = _write(tmp_path, "am", (0.91, 0.82, 0.92), (10.0, 20.0, 1.5), (0, 0.0, 0.0), 0.40)
    lesions = tmp_path / "am" / "lesion_errors"
    lesions.mkdir()
    rows = []  # in lesion_errors.py's own layout: every false_in_* group counts once, cyst rows not at all
    for case, kind, scale in (("a", "tumor", 1.0), ("b", "tumor", 2.0), ("a", "cyst", 100.0)):
        row = {c: 0.0 for c in COLUMNS}
        row.update(case=case, kind=kind, dice=0.5, false_beyond_near_mm=30.0 * scale)
        row.update({f"false_in_{g}": (i + 1) * scale for i, g in enumerate(FALSE_IN)})
        rows.append(row)
    write_csv(lesions / "lesion_errors.csv", COLUMNS, rows)
    am = load("am", folders + [str(lesions)])
    per_case = sum(i + 1 for i in range(len(FALSE_IN)))
    assert am.false_tumor == {"false": 3.0 * per_case, "on_kidney": 3.0 * (FALSE_IN.index("kidney") + 1), "far": 90.0}
    assert NEAR_MM == 5.0  # the row's label says "over 5 mm"
    table_rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in table([base, am]).splitlines()}
    assert table_rows["held-out false tumor, mL (of it: on kidney tissue; over 5 mm from a true tumor)"] == \
        ["–", f"{3.0 * per_case:,.0f} (3; 90) |"]  # v2 was measured without lesion_errors.py
    with pytest.raises(SystemExit, match="run benchmarks/lesion_errors.py first"):
        load("x", folders + [str(tmp_path / "nowhere")])
    (tmp_path / "other.csv").write_text("case,dice\na,0.5\n")
    with pytest.raises(SystemExit, match="not a lesion_errors.py CSV"):
        load("x", folders + [str(tmp_path / "other.csv")])


def test_a_rule_with_its_own_bounds_replaces_points_a_and_d(tmp_path, base, capsys):
    # base (v2): 37.0 mL outside the kidneys, tumor Dice 0.25; the candidate: 40.0 mL, 0.30
    cand = load("f", _write(tmp_path, "f", (0.91, 0.82, 0.92), (12.0, 28.0, 0.0), (0, 0.0, 0.0), 0.30))
    plain = ship_rule(cand, base)
    assert [t[:3] for t, ok in plain.items() if not ok] == ["(a)"]  # 40.0 is not less than 37.0
    bounded = ship_rule(cand, base, outside_at_most=40.0, tumor_dice_at_least=0.31)
    assert [t[:3] for t, ok in bounded.items() if not ok] == ["(d)"]  # 40.0 <= 40.0 passes; 0.30 < 0.31 fails
    assert "(a) false lesion outside the kidneys 40.0 mL <= 40" in bounded  # the bounds as given
    assert "(d) held-out tumor Dice 0.300 >= 0.31" in bounded
    v2 = [str(tmp_path / "v2" / d) for d in ("real", "card", "conf")]
    f = [str(tmp_path / "f" / d) for d in ("real", "card", "conf")]
    main(["--model", "v2", *v2, "--model", "f", *f, "--baseline", "v2", "--outside-at-most", "40",
          "--tumor-dice-at-least", "0.29"])
    assert capsys.readouterr().out.rstrip().endswith("\nSHIP")
    with pytest.raises(SystemExit):  # bounds without a baseline would be ignored: refused
        main(["--model", "f", *f, "--outside-at-most", "40"])


def _per_case_tumor_dice(folders, dice_by_case):
    card = Path(folders[1]) / "synthetic"
    card.mkdir()
    rows = [{"case": c, "region": r, "dice": d if r == "tumor" else 0.9}
            for c, d in dice_by_case.items() for r in ("kidney", "tumor")]
    rows.append({"case": "case_x", "region": "tumor", "dice": ""})  # no Dice to give: left out
    write_csv(card / "metrics.csv", ["case", "region", "dice"], rows)


def test_the_tumor_dice_difference_is_paired_case_by_case_with_a_bootstrap_interval(tmp_path, capsys):
    v2 = _write(tmp_path, "v2", (0.90, 0.80, 0.90), (12.0, 25.0, 0.0), (0, 0.1, 0.0), 0.25)
    up = _write(tmp_path, "up", (0.91, 0.82, 0.92), (10.0, 20.0, 1.5), (0, 0.0, 0.0), 0.35)
    mixed = _write(tmp_path, "mixed", (0.91, 0.82, 0.92), (10.0, 20.0, 1.5), (0, 0.0, 0.0), 0.25)
    assert tumor_dice_difference(load("up", up), load("v2", v2)) is None  # no per-case figures: nothing claimed
    base = {f"case_{i}": 0.35 + 0.05 * i for i in range(6)}
    _per_case_tumor_dice(v2, base)
    _per_case_tumor_dice(up, {c: d + 0.1 for c, d in base.items()})  # every case exactly 0.1 better
    _per_case_tumor_dice(mixed, {c: d + (0.3 if i % 2 else -0.3) for i, (c, d) in enumerate(base.items())})
    mean, low, high, n = tumor_dice_difference(load("up", up), load("v2", v2))
    assert n == 6 and mean == pytest.approx(0.1) and low == pytest.approx(0.1) and high == pytest.approx(0.1)
    mean, low, high, n = tumor_dice_difference(load("mixed", mixed), load("v2", v2))
    assert mean == pytest.approx(0.0, abs=1e-12) and -0.3 <= low < 0 < high <= 0.3  # +-0.3 each: the mean is 0
    main(["--model", "v2", *v2, "--model", "up", *up, "--baseline", "v2"])
    assert "held-out tumor Dice, up minus v2: +0.100 over 6 cases, paired bootstrap 95 % interval +0.100 to +0.100" \
        in capsys.readouterr().out
    _per_case_tumor_dice(_write(tmp_path, "other", (0.9,) * 3, (1.0,) * 3, (0,) * 3, 0.3), {"case_9": 0.5})
    assert tumor_dice_difference(load("other", [str(tmp_path / "other" / d) for d in ("real", "card")]),
                                 load("v2", v2)) is None  # other cases: not a paired comparison
