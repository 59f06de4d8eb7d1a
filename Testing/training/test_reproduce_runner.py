"""training.reproduce's step runner: steps run once, side by side with --jobs 2, failures reported."""
import json
import sys
import time

import pytest

from training.reproduce import Runner, StepError


def _sleeper(tag_file, seconds):
    # prints its start and end times: overlap shows that two steps ran at the same time
    code = (f"import time,sys; print('start', time.time()); sys.stdout.flush(); time.sleep({seconds}); "
            f"print('end', time.time()); open({str(tag_file)!r}, 'w').write('x')")
    return [sys.executable, "-c", code]


def test_two_steps_run_side_by_side_and_are_marked_done(tmp_path):
    run = Runner(tmp_path / "work")
    steps = [(f"s{i}", {"i": i}, lambda tag, threads, i=i: run.run(_sleeper(tmp_path / f"{i}.done", 1.5), tag,
                                                                     threads)) for i in (1, 2)]
    t0 = time.perf_counter()
    run.steps(steps, jobs=2)
    assert time.perf_counter() - t0 < 2.9  # 2 x 1.5 s one after the other would take >= 3 s
    assert (tmp_path / "1.done").is_file() and (tmp_path / "2.done").is_file()
    log = (tmp_path / "work" / "reproduce.log").read_text(encoding="utf-8").splitlines()
    assert any(line.startswith("[s1] start") for line in log) and any(line.startswith("[s2] end") for line in log)
    for i in (1, 2):
        assert json.loads((tmp_path / "work" / "steps" / f"s{i}.json").read_text())["settings"] == {"i": i}
    (tmp_path / "1.done").unlink()
    run.steps(steps, jobs=2)  # done steps are skipped
    assert not (tmp_path / "1.done").exists()


def test_a_failing_step_is_reported_after_the_other_finished(tmp_path):
    run = Runner(tmp_path / "work")
    fail = [sys.executable, "-c", "import sys; sys.exit(3)"]
    steps = [("bad", {}, lambda tag, threads: run.run(fail, tag, threads)),
             ("good", {}, lambda tag, threads: run.run(_sleeper(tmp_path / "good.done", 0.5), tag, threads))]
    with pytest.raises(StepError, match="exit 3"):
        run.steps(steps, jobs=2)
    assert (tmp_path / "good.done").is_file()
    assert (tmp_path / "work" / "steps" / "good.json").is_file()
    assert not (tmp_path / "work" / "steps" / "bad.json").exists()  # rerun later
