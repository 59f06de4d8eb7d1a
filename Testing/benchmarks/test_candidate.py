"""benchmarks/candidate.py: the held-out sets it paints and the benchmark steps it runs (and skips on resume)."""
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "candidate.py"
_spec = importlib.util.spec_from_file_location("benchmarks_candidate", _SCRIPT)
cand = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cand
_spec.loader.exec_module(cand)


def _maps(argv):
    start = argv.index("--anatomy") + 1
    end = next((i for i in range(start, len(argv)) if argv[i].startswith("--")), len(argv))
    return [int(re.search(r"FLARE22_Tr_(\d{4})", a).group(1)) for a in argv[start:end]]


def _value(argv, flag):
    return argv[argv.index(flag) + 1]


def test_the_test_set_uses_no_training_map_and_leaves_out_the_training_cases(tmp_path):
    (name_t, test), (name_c, conf), (name_o, contact) = cand.set_commands(tmp_path / "DATA", tmp_path / "SETS",
                                                                          Path("/d"))
    assert (name_t, name_c, name_o) == ("test", "conf", "contact")
    assert _maps(test) == list(range(43, 51)) and _maps(conf) == [49, 50]  # training uses maps 0001-0042
    assert _value(test, "--exclude") == str(tmp_path / "DATA") and "--exclude" not in conf
    assert (_value(test, "-n"), _value(test, "--seed"), _value(conf, "-n"), _value(conf, "--seed")) == \
        ("24", "7", "12", "99")
    assert _value(test, "-o") == str(tmp_path / "SETS" / "test") and _value(test, "--kits23") == "/d/kits23/labels"
    assert not any(a.startswith("--bowel") or a == "--large-organs" for a in test + conf)  # the card's sets: plain
    # the contact set is the test set's command with --organ-contact, into a folder of its own
    assert contact[-1] == "--organ-contact" and _value(contact, "-o") == str(tmp_path / "SETS" / "contact")
    assert [a for a in contact[:-1] if a != str(tmp_path / "SETS" / "contact")] == \
        [a for a in test if a != str(tmp_path / "SETS" / "test")]


def test_the_card_documents_the_same_test_set():
    card = (_SCRIPT.parents[1] / "Resources" / "Models" / "README.md").read_text(encoding="utf-8")
    assert "FLARE22_Tr_00{43..50}.nii.gz -o TEST -n 24 --seed 7 --exclude DATA" in card
    assert "FLARE22 maps 0049 and 0050, seed 99" in card


def _figures(out: Path) -> None:
    for rel in ("real/real_ct.json", "card/registry_metrics.json", "conf/confidence_threshold.json",
                "lesion_errors/lesion_errors.md"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("{}")


def _sets(root: Path) -> Path:
    for folder in ("test", "conf", "contact"):
        (root / folder).mkdir(parents=True)
        (root / folder / "synthetic.json").write_text(json.dumps({"cases": {}}))
    return root


def test_measure_resumes_runs_only_missing_steps_and_always_compares(tmp_path, monkeypatch):
    calls = []
    def fake_run(name, argv, log, capture_to=None):
        calls.append(name)
        if capture_to is not None:
            capture_to.write_text("table")
    monkeypatch.setattr(cand, "_run", fake_run)
    out, sets = tmp_path / "OUT", _sets(tmp_path / "SETS")
    _figures(out)
    (out / "conf" / "confidence_threshold.json").unlink()  # the run stopped before the confidence step
    assert cand.main(["measure", "--model", str(tmp_path / "F"), "--sets", str(sets), "-o", str(out)]) == 0
    assert calls == ["conf", "compare", "contact_card", "contact_lesions", "contact"]
    calls.clear()
    cand.main(["measure", "--model", "F", "--sets", str(sets), "-o", str(out), "--again"])
    assert calls == ["real", "card", "conf", "lesion_errors", "compare", "contact_card", "contact_lesions", "contact"]


def test_measure_compares_with_a_baseline_under_its_own_name(tmp_path):
    steps = cand.measure_commands("/r/release/F", tmp_path / "S", tmp_path / "F", baseline=("v4", tmp_path / "B"))
    assert [s[0] for s in steps] == ["real", "card", "conf", "lesion_errors", "compare", "contact_card",
                                     "contact_lesions", "contact"]
    contact = steps[5][2]
    assert _value(contact, "--synthetic") == str(tmp_path / "S" / "contact")
    assert _value(contact, "-o") == str(tmp_path / "F" / "contact" / "card")
    compare = steps[4][2]
    assert compare[compare.index("--model") + 1] == "F" and compare[-2:] == ["--baseline", "v4"]
    assert str(tmp_path / "B" / "card") in compare
    card = steps[1][2]
    assert _value(card, "--synthetic") == str(tmp_path / "S" / "test") and _value(card, "--model") == "/r/release/F"


def test_bad_input_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="no synthetic.json there"):
        cand.main(["sets", "--train-data", str(tmp_path), "-o", str(tmp_path / "S")])
    with pytest.raises(SystemExit, match="make the sets first"):
        cand.main(["measure", "--model", "default", "--sets", str(tmp_path), "-o", str(tmp_path / "O")])
    sets = _sets(tmp_path / "SETS")
    with pytest.raises(SystemExit, match="has that name too"):
        cand.main(["measure", "--model", "default", "--sets", str(sets), "-o", str(tmp_path / "O"),
                   "--baseline", "default", str(tmp_path / "B")])
    with pytest.raises(SystemExit, match="lacks .*real_ct.json"):
        cand.main(["measure", "--model", "F", "--sets", str(sets), "-o", str(tmp_path / "O"),
                   "--baseline", "v4", str(tmp_path / "B")])
    _figures(tmp_path / "B")
    (tmp_path / "B" / "lesion_errors" / "lesion_errors.md").unlink()  # a baseline measured only in part
    with pytest.raises(SystemExit, match="lacks .*lesion_errors.md"):
        cand.main(["measure", "--model", "F", "--sets", str(sets), "-o", str(tmp_path / "O"),
                   "--baseline", "v4", str(tmp_path / "B")])
    with pytest.raises(SystemExit, match="give --baseline"):
        cand.main(["measure", "--model", "F", "--sets", str(sets), "-o", str(tmp_path / "O"),
                   "--tumor-dice-at-least", "0.4"])


def test_a_failing_step_stops_with_its_output_and_log(tmp_path):
    log = tmp_path / "x.log"
    with pytest.raises(SystemExit, match=r"(?s)\[x\] failed \(exit 3\).*boom"):
        cand._run("x", ["-c", "import sys; print('boom'); sys.exit(3)"], log, capture_to=tmp_path / "never.md")
    assert "boom" in log.read_text() and not (tmp_path / "never.md").exists()
    cand._run("y", ["-c", "print('table')"], tmp_path / "y.log", capture_to=tmp_path / "y.md")
    assert (tmp_path / "y.md").read_text().strip() == "table"


def test_an_out_folder_of_another_model_is_refused_and_relative_paths_are_made_absolute(tmp_path, monkeypatch):
    steps = []
    monkeypatch.setattr(cand, "_run", lambda name, argv, log, capture_to=None: steps.append(argv) or (
        capture_to.write_text("table") if capture_to else None))
    monkeypatch.chdir(tmp_path)
    _sets(tmp_path / "SETS")
    assert cand.main(["measure", "--model", "default", "--sets", "SETS", "-o", "OUT"]) == 0
    assert str(tmp_path / "SETS" / "test") in steps[1] and str(tmp_path / "OUT" / "card") in steps[1]
    with pytest.raises(SystemExit, match="holds the figures of"):
        cand.main(["measure", "--model", "other", "--sets", "SETS", "-o", "OUT"])
    assert cand.main(["measure", "--model", "other", "--sets", "SETS", "-o", "OUT", "--again"]) == 0
    assert json.loads((tmp_path / "OUT" / "candidate.json").read_text())["model"] == "other"


def test_the_rule_bounds_reach_compare_models(tmp_path, monkeypatch):
    steps = []
    monkeypatch.setattr(cand, "_run", lambda name, argv, log, capture_to=None: steps.append(argv) or (
        capture_to.write_text("table") if capture_to else None))
    sets = _sets(tmp_path / "SETS")
    _figures(tmp_path / "B")
    cand.main(["measure", "--model", "F", "--sets", str(sets), "-o", str(tmp_path / "O"), "--baseline", "v4",
               str(tmp_path / "B"), "--outside-at-most", "34.4", "--tumor-dice-at-least", "0.387"])
    compare = next(argv for argv in steps if argv[0].endswith("compare_models.py"))
    assert compare[-2:] == ["--outside-at-most=34.4", "--tumor-dice-at-least=0.387"]
    assert str(tmp_path / "B" / "lesion_errors") in compare
