"""A run's life in the scene (slicer-core, the tiny random-weight model): closing the scene or removing the
run's input or output node cancels it cleanly, Cancel stops the interpreter a launcher such as Slicer's
PythonSlicer started, and the run stops if Slicer dies; measurements come from the command line's process
(--measure) and a rerun into the same segmentation reuses their nodes; the run's warnings reach the status
line, each once."""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import slicer

import KidneyTumorSegLib.measurements as core_measurements
from KidneyTumorSegLib.geometry import Geometry
from KidneyTumorSegSlicer.errors import SegmentationCancelled, SegmentationError
from KidneyTumorSegSlicer.job import SegmentationJob
from KidneyTumorSegSlicer.logic import KidneyTumorSegMRMLLogic
from KidneyTumorSegSlicer.measurementNodes import LINE_ROLE, TABLE_ROLE
from mrml_helpers import LPS_TO_RAS, kits_labels


@pytest.fixture(scope="module")
def kidney_model_dir(tmp_path_factory):
    """Tiny networks whose both stages say "kidney" everywhere: a run gives one known kidney to measure (the
    random stage 2 of ``model_dir`` paints hundreds of specks, each a lesion with its own line)."""
    import torch

    from KidneyTumorSegLib.checkpoint import save_checkpoint
    from KidneyTumorSegLib.networks import STAGE1_TINY, TINY, build_network
    from KidneyTumorSegLib.preprocessing import PreprocessingConfig
    folder = tmp_path_factory.mktemp("kidney_model")
    for name, net, cfg, labels, spacing in [
            ("stage1.pt", "residual_unet", STAGE1_TINY, ["background", "kidney"], (6.0, 6.0, 6.0)),
            ("stage2.pt", "improved_vnet", TINY, ["background", "kidney", "tumor", "cyst"], (5.0, 5.0, 5.0))]:
        model = build_network(net, cfg)
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.bias.copy_(torch.tensor([-5.0, 5.0, -5.0, -5.0][:len(labels)]))
        save_checkpoint(folder / name, net, cfg, model, labels, PreprocessingConfig(target_spacing=spacing),
                        patch_size=(32, 32, 32))
    return folder


@pytest.fixture
def phantom(scene, synth):
    """An oblique phantom CT as a volume node, and its Geometry."""
    labels = synth.labels((24, 32, 36))  # one 32-voxel window per stage: a quick run
    g = Geometry((4.0, 4.5, 5.0), (-100.0, -120.0, 40.0), synth.rotation(4, -3, 8).ravel(), labels.shape[::-1])
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom")
    slicer.util.updateVolumeFromArray(node, synth.ct(labels).astype(np.int16))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(LPS_TO_RAS @ g.affine()))
    return node, g


def test_closing_the_scene_cancels_the_run(scene, phantom, kidney_model_dir, tmp_path):
    volume, _ = phantom
    job = KidneyTumorSegMRMLLogic(tempDir=str(tmp_path)).start(volume, model=str(kidney_model_dir), device="cpu")
    assert job.state == "running"
    scene.Clear(0)  # File > Close Scene
    assert job.state == "cancelled" and job.error == "Cancelled: the scene was closed."
    assert job.process.returncode is not None and os.listdir(tmp_path) == []
    assert job.poll() and scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    with pytest.raises(SegmentationCancelled, match="the scene was closed"):
        job.wait()
    assert job.statusText() == "Cancelled: the scene was closed. The output segmentation was not changed."


# Stands in for Slicer's PythonSlicer (CTK AppLauncher): it runs the interpreter as a child of its own, passes
# no signal on (SIGTERM ends it alone), and says which pid the interpreter has. The interpreter here only
# sleeps, so that it is surely still running when Cancel comes, however fast the machine.
LAUNCHER = """#!{python}
import os, subprocess, sys
child = subprocess.Popen([{python!r}, "-c", "import time; time.sleep(300)"])
with open({pidfile!r} + ".part", "w") as f:
    f.write(str(child.pid))
os.replace({pidfile!r} + ".part", {pidfile!r})
sys.exit(child.wait())
"""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")  # a zombie has ended; it only waits to be reaped
    return not (stat.is_file() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


@pytest.mark.skipif(os.name == "nt", reason="the stand-in launcher is a POSIX script (Windows: taskkill /T)")
def test_cancel_stops_the_interpreter_that_a_launcher_started(scene, phantom, kidney_model_dir, tmp_path):
    volume, _ = phantom
    pidfile, launcher = tmp_path / "interpreter.pid", tmp_path / "PythonSlicer"
    launcher.write_text(LAUNCHER.format(python=sys.executable, pidfile=str(pidfile)))
    launcher.chmod(0o755)
    (tmp_path / "tmp").mkdir()
    logic = KidneyTumorSegMRMLLogic(python=str(launcher), tempDir=str(tmp_path / "tmp"))
    job = logic.start(volume, model=str(kidney_model_dir), device="cpu")
    deadline = time.monotonic() + 60
    while not pidfile.is_file() and time.monotonic() < deadline:
        time.sleep(0.02)
    interpreter = int(pidfile.read_text())
    try:
        assert job.state == "running" and _alive(interpreter)
        assert os.getpgid(job.process.pid) != os.getpgid(0)  # a group of its own, never this process's
        logic.cancel()
        assert job.state == "cancelled" and os.listdir(tmp_path / "tmp") == []
        assert not _alive(interpreter)  # stopping the launcher alone would leave the segmentation running
    finally:
        if _alive(interpreter):
            os.kill(interpreter, 9)


def test_the_run_stops_if_slicer_dies(scene, phantom, kidney_model_dir, tmp_path):
    """The job holds the child's standard input open; when it closes, as when Slicer crashes, the child
    stops by itself (--stop-when-stdin-closes) instead of running on as an orphan."""
    volume, _ = phantom
    job = KidneyTumorSegMRMLLogic(tempDir=str(tmp_path)).start(volume, model=str(kidney_model_dir), device="cpu")
    job.process.stdin.close()  # what the operating system does to the pipes of a process that died
    assert job.process.wait(timeout=120) == 143
    with pytest.raises(SegmentationError, match=r"Segmentation failed \(stopped\): .*Standard input closed"):
        job.wait()
    assert os.listdir(tmp_path) == [] and scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


@pytest.mark.parametrize("removed", ["input", "output"])
def test_removing_the_runs_input_or_output_cancels_it(scene, phantom, kidney_model_dir, tmp_path, removed):
    volume, _ = phantom
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "kidneys")
    other = scene.AddNewNodeByClass("vtkMRMLTableNode", "unrelated")
    job = KidneyTumorSegMRMLLogic(tempDir=str(tmp_path)).start(volume, output, model=str(kidney_model_dir),
                                                               device="cpu")
    scene.RemoveNode(other)
    assert job.state == "running"  # a node the run does not use changes nothing
    node = volume if removed == "input" else output
    scene.RemoveNode(node)
    assert job.state == "cancelled" and job.error == f"Cancelled: '{node.GetName()}' was removed from the scene."
    assert job.process.returncode is not None and os.listdir(tmp_path) == []
    scene.Clear(0)  # the finished job no longer watches the scene: nothing changes
    assert job.error == f"Cancelled: '{node.GetName()}' was removed from the scene."


def test_measurements_come_from_the_cli_and_a_rerun_reuses_their_nodes(scene, phantom, kidney_model_dir,
                                                                         monkeypatch):
    volume, g = phantom
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "kidneys")
    logic = KidneyTumorSegMRMLLogic()

    def refuse(*args, **kwargs):
        raise AssertionError("measured in Slicer's process, not the command line's")
    monkeypatch.setattr(core_measurements, "measure", refuse)
    imports, real_import = [], logic.importLabelmap
    monkeypatch.setattr(logic, "importLabelmap",
                        lambda *a, **k: imports.append(k.get("midlineX")) or real_import(*a, **k))
    logic.segment(volume, output, model=str(kidney_model_dir), device="cpu", mode="fast", computeMeasurements=True)
    monkeypatch.undo()
    job = logic.job
    # the segments are sided by the command line's own midline (a number, not "measure again"), as its files
    assert isinstance(job.midlineX, float) and imports == [job.midlineX]
    table, lines = job.tableNode, job.lineNodes
    assert output.GetNodeReference(TABLE_ROLE) is table and table.GetName() == "phantom kidney measurements"
    expected = core_measurements.measure(kits_labels(output, volume), g).to_json_dict()
    t = table.GetTable()
    rows = [{t.GetColumnName(c): t.GetValue(r, c).ToString() for c in range(t.GetNumberOfColumns())}
            for r in range(t.GetNumberOfRows())]
    measured = expected["kidneys"] + expected["lesions"]
    assert measured, "the tiny model found nothing to measure: the test would prove nothing"
    assert [(r["id"], float(r["volume_ml"])) for r in rows] == [(m["id"], m["volume_ml"]) for m in measured]
    assert [n.GetAttribute("KidneyTumorSeg.LesionId") for n in lines] == [m["id"] for m in expected["lesions"]]
    assert job.statusText().startswith(f"Done: {output.GetSegmentation().GetNumberOfSegments()} segments. "
                                       "Measurements: 'phantom kidney measurements'. Warning: unverified model")
    check_warnings_are_shown_once(job)

    ids = (table.GetID(), [n.GetID() for n in lines])
    logic.segment(volume, output, model=str(kidney_model_dir), device="cpu", mode="fast", computeMeasurements=True)
    assert (logic.job.tableNode.GetID(), [n.GetID() for n in logic.job.lineNodes]) == ids
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsLineNode") == len(lines)

    logic.segment(volume, output, model=str(kidney_model_dir), device="cpu", mode="fast")  # no measurements now
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsLineNode") == 0
    assert output.GetNodeReference(TABLE_ROLE) is None and output.GetNumberOfNodeReferences(LINE_ROLE) == 0
    assert logic.job.tableNode is None and "Measurements" not in logic.job.statusText()


def check_warnings_are_shown_once(job):
    """The CLI's 'warning' events (an unverified model; an output the input cannot have) and the warnings of
    its case_done event are the user's: shown in the status line, each once."""
    assert len(job.warnings) == 1 and job.warnings[0].startswith("unverified model")
    skipped = "DICOM SEG not written: the series has no SOP instance UIDs"
    job.handleLine(json.dumps({"event": "warning", "message": skipped}))
    job.handleLine(json.dumps({"event": "case_done", "outputs": job.outputs, "warnings": [skipped]}))
    assert job.warnings == [job.warnings[0], skipped]
    assert job.statusText().endswith(f"Warning: {job.warnings[0]} {skipped}")


def test_an_uncertain_lesion_is_logged_unlike_the_threshold_it_fell_below():
    job = SegmentationJob.__new__(SegmentationJob)  # its case_done handling only: no process
    lines = []
    job.log, job.warnings = lines.append, []
    job._caseDone({"event": "case_done", "min_confidence": 0.57, "uncertain_lesions": [
        {"kind": "tumor", "side": "left", "volume_ml": 9.0, "confidence": 0.567}]})
    assert lines[-1] == "Uncertain tumor (left, 9.0 mL, confidence 0.567): not drawn"
    assert job.uncertain[0]["confidence"] == 0.567
    assert job.unsureBelow is None  # a threshold was applied: what stays is not judged again
    job._caseDone({"event": "case_done", "unsure_below": 0.57})
    assert job.unsureBelow == 0.57


@pytest.mark.parametrize("choice, flag", [(None, "model"), (True, "on"), (False, "off")])
def test_the_logic_command_line_carries_its_options_as_the_cli_reads_them(choice, flag, tmp_path):
    from KidneyTumorSegLib import cli
    from KidneyTumorSegSlicer.job import RunOptions
    options = RunOptions(minConfidence=0.41, cystByDensity=choice, computeMeasurements=True, mode="fast")
    command = KidneyTumorSegMRMLLogic(python="python").commandLine(tmp_path / "ct.nrrd", tmp_path / "out", options)
    args = cli.build_parser().parse_args(command[command.index("segment"):])
    assert (args.cyst_by_density, args.min_confidence, args.measure, args.mode) == (flag, 0.41, True, "fast")
    assert args.input == tmp_path / "ct.nrrd" and args.output == tmp_path / "out"
