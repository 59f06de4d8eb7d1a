"""The Slicer logic (KidneyTumorSegSlicer) with slicer-core: the Slicer path gives the CLI's result, on any
volume orientation, leaves the input alone, and leaves an existing output as it was when a run fails or is
cancelled (test_run_lifecycle.py: closing the scene, removing nodes, measurements from the CLI process;
test_logic_import.py: importing a label map)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from KidneyTumorSegLib.labels import color_float, segment_name, terminology
from KidneyTumorSegLib.models import registry_path
from KidneyTumorSegSlicer.errors import SegmentationCancelled, SegmentationError
from KidneyTumorSegSlicer.logic import KidneyTumorSegMRMLLogic as KidneyTumorSegLogic
from mrml_helpers import LPS_TO_RAS, add_volume, centroids_ras, exported, kits_labels, matrix, segments, tag
from mrml_helpers import module_scene  # noqa: F401  (the fixture "scene": one scene for this module)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ct(shared_data):
    img = sitk.ReadImage(str(shared_data / "ct" / "example_ct.nii.gz"))
    affine = np.eye(4)
    affine[:3, :3] = np.reshape(img.GetDirection(), (3, 3)) * np.asarray(img.GetSpacing())
    affine[:3, 3] = img.GetOrigin()
    return shared_data / "ct" / "example_ct.nii.gz", sitk.GetArrayFromImage(img), LPS_TO_RAS @ affine


def snapshot(seg_node):
    s = seg_node.GetSegmentation()
    return ([(s.GetNthSegmentID(i), s.GetNthSegment(i).GetName()) for i in range(s.GetNumberOfSegments())],
            s.GetMTime(), seg_node.GetMTime())


@pytest.fixture(scope="module")
def run(scene, ct, model_dir, tmp_path_factory):
    """The CT as a volume node, one Slicer run on it, what the input looked like before, and the CLI's own
    result for the NIfTI file (run beside the Slicer run: two processes, less waiting). Fast mode for both:
    a quarter less compute, and it checks that the mode reaches the CLI. The shipped default model when it is
    installed (real kidney and tumor segments), else the tiny random one."""
    path, array, ras = ct
    model = "default" if registry_path() is not None else str(model_dir)
    cli_out = tmp_path_factory.mktemp("cli")
    pythonpath = os.pathsep.join([str(ROOT / "KidneyTumorSeg"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=pythonpath)
    cli_run = subprocess.Popen(
        [sys.executable, "-m", "KidneyTumorSegLib.cli", "segment", str(path), "-o", str(cli_out),
         "--model", model, "--device", "cpu", "--fast"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    volume = add_volume(scene, array, ras)
    before = (slicer.util.arrayFromVolume(volume).copy(), matrix(volume), volume.GetMTime(),
              volume.GetImageData().GetMTime())
    tmp = tmp_path_factory.mktemp("run_tmp")
    progress = []
    # An output node without display node: no 3D surface (slow on random-weight blobs; tested below).
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "CT segmentation")
    try:
        seg = KidneyTumorSegLogic(tempDir=str(tmp)).segment(
            volume, output, model=model, device="cpu", mode="fast",
            progress=lambda f, t: progress.append((f, t)))
    finally:
        _, err = cli_run.communicate()
    assert cli_run.returncode == 0, err[-2000:]
    assert seg is output
    cli_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(cli_out / "example_ct.nii.gz")))
    return volume, seg, before, progress, tmp, cli_labels


def crop_volume(scene, ct, transform=None, flip_i=False, name="crop"):
    """A real-CT block with both kidneys (a tenth of the compute of the whole CT), optionally with its
    i axis flipped (same physical image) or moved by an RAS ``transform`` (a physically rotated patient)."""
    _, array, ras = ct
    start = np.array([20, 15, 60])  # (i, j, k)
    block = array[60:112, 15:67, 20:96]
    ijk_to_ras = ras.copy()
    ijk_to_ras[:3, 3] = (ras @ np.r_[start, 1.0])[:3]
    if flip_i:
        nx = block.shape[2]
        block = block[:, :, ::-1]
        ijk_to_ras = ijk_to_ras @ np.array([[-1.0, 0, 0, nx - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    if transform is not None:
        ijk_to_ras = transform @ ijk_to_ras
    return add_volume(scene, block, ijk_to_ras, name)


def segment_plain(scene, volume, model_dir, logic=None):
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    return (logic or KidneyTumorSegLogic()).segment(volume, output, model=str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def crop_run(scene, ct, model_dir):
    """The crop, its segmentation, and the warnings of that run (model_dir has no models_entry.json)."""
    volume = crop_volume(scene, ct)
    logic = KidneyTumorSegLogic()
    return volume, segment_plain(scene, volume, model_dir, logic), logic.job.warnings


def test_result_is_the_clis_voxel_for_voxel(run):
    volume, seg, _, progress, _, cli_labels = run
    np.testing.assert_array_equal(kits_labels(seg, volume), cli_labels)
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and any("Stage 2" in t for _, t in progress)


def test_segment_names_colors_terminology_and_geometry(run):
    volume, seg = run[:2]
    assert segments(seg)
    for s in segments(seg):
        label, side = int(tag(s, "KidneyTumorSeg.Label")), None
        for candidate in ("left", "right"):
            side = candidate if s.GetName().lower().startswith(candidate) else side
        assert s.GetName() == segment_name(label, side)
        np.testing.assert_allclose(s.GetColor(), color_float(label), atol=1e-6)
        assert tag(s, "TerminologyEntry") == terminology(label, side).serialize()
    ref = seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole())
    assert ref is not None and ref.GetID() == volume.GetID()
    labelmap = segments(seg)[0].GetRepresentation("Binary labelmap")
    to_world = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(to_world)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(to_world), matrix(volume), atol=1e-9)


def test_input_node_is_untouched_and_temp_files_removed(run):
    volume, _, (array, ras, mtime, image_mtime), _, tmp, _ = run
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), array)
    np.testing.assert_array_equal(matrix(volume), ras)
    assert (volume.GetMTime(), volume.GetImageData().GetMTime()) == (mtime, image_mtime)
    assert os.listdir(tmp) == []


def test_flipped_volume_gives_segments_in_the_same_physical_places(scene, ct, crop_run, model_dir):
    volume, seg, _ = crop_run
    flipped = crop_volume(scene, ct, flip_i=True, name="flipped")
    expected, got = centroids_ras(seg, volume), centroids_ras(segment_plain(scene, flipped, model_dir), flipped)
    assert expected and sorted(got) == sorted(expected)
    for name in expected:
        assert np.linalg.norm(got[name] - expected[name]) < 0.5 * min(volume.GetSpacing()), name


def test_rotated_volume_gives_rotated_segments(scene, ct, crop_run, model_dir):
    volume, seg, _ = crop_run
    dims = np.array(volume.GetImageData().GetDimensions())
    centre = (matrix(volume) @ np.r_[(dims - 1) / 2.0, 1.0])[:3]
    a, b = np.radians([17.0, -11.0])
    rot = (np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
           @ np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]]))
    move = np.eye(4)
    move[:3, :3], move[:3, 3] = rot, centre - rot @ centre  # rotation about the block centre (RAS)
    rotated = crop_volume(scene, ct, transform=move, name="rotated")
    got = centroids_ras(segment_plain(scene, rotated, model_dir), rotated)
    expected = {k: (move @ np.r_[v, 1.0])[:3] for k, v in centroids_ras(seg, volume).items()}
    assert expected and sorted(got) == sorted(expected)
    for name in expected:
        assert np.linalg.norm(got[name] - expected[name]) < 0.5 * min(volume.GetSpacing()), name


@pytest.fixture
def existing_output(scene, crop_run):
    """An output segmentation that already holds a user's segment."""
    volume = crop_run[0]
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    mask = np.zeros(slicer.util.arrayFromVolume(volume).shape, np.uint8)
    mask[40:50, 40:50, 40:50] = 1
    labelmap = add_volume(scene, mask, matrix(volume), "mask", "vtkMRMLLabelMapVolumeNode")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node)
    scene.RemoveNode(labelmap)
    assert node.GetSegmentation().GetNumberOfSegments() == 1
    return node, mask


def test_cancel_right_after_start_leaves_output_as_it_was(crop_run, existing_output, model_dir, tmp_path):
    volume = crop_run[0]
    node, mask = existing_output
    before = snapshot(node)
    logic = KidneyTumorSegLogic(tempDir=str(tmp_path))
    job = logic.start(volume, node, model=str(model_dir), device="cpu")
    logic.cancel()
    assert job.poll() and job.state == "cancelled"
    with pytest.raises(SegmentationCancelled):
        job.wait()
    assert job.process.returncode is not None and os.listdir(tmp_path) == []
    assert snapshot(node) == before
    np.testing.assert_array_equal(exported(node, volume), mask)


def test_cancel_from_progress_callback_raises_and_keeps_output(crop_run, existing_output, model_dir, tmp_path):
    volume = crop_run[0]
    node, _ = existing_output
    before = snapshot(node)
    logic = KidneyTumorSegLogic(tempDir=str(tmp_path))
    with pytest.raises(SegmentationCancelled):
        logic.segment(volume, node, model=str(model_dir), device="cpu", progress=lambda f, t: logic.cancel())
    assert snapshot(node) == before and os.listdir(tmp_path) == []


def test_cancel_while_the_result_is_imported_changes_nothing(crop_run, existing_output, model_dir, tmp_path):
    """Once the child has finished, Cancel (e.g. clicked during the import's progress update) comes too late:
    it must neither delete the files being read nor turn the imported result into a failure."""
    volume = crop_run[0]
    node, _ = existing_output
    logic, lines, answers = KidneyTumorSegLogic(tempDir=str(tmp_path)), [], []

    def progress(fraction, text):
        if text == "Importing segments":
            answers.append((logic.job.state, logic.cancel(), logic.job.poll()))
            with pytest.raises(SegmentationError, match="wait.. was called while this run's result is being"):
                logic.job.wait()  # it would wait for itself forever

    assert logic.segment(volume, node, model=str(model_dir), device="cpu", progress=progress,
                         log=lines.append) is node
    assert answers == [("importing", False, False)]  # not stopped, not finished by a nested poll
    assert logic.job.state == "done" and logic.job.statusText().startswith("Done:")
    assert "Too late to cancel: the result is being imported." in lines and os.listdir(tmp_path) == []
    assert node.GetSegmentation().GetNumberOfSegments() > 1  # the user's segment and the run's


def test_bad_model_raises_clear_error_and_keeps_output(crop_run, existing_output, tmp_path):
    volume = crop_run[0]
    node, _ = existing_output
    before = snapshot(node)
    (tmp_path / "empty_model").mkdir()
    (tmp_path / "tmp").mkdir()
    logic = KidneyTumorSegLogic(tempDir=str(tmp_path / "tmp"))
    with pytest.raises(SegmentationError, match="model could not be loaded.*lacks stage1.pt"):
        logic.segment(volume, node, model=str(tmp_path / "empty_model"), device="cpu")
    assert snapshot(node) == before and os.listdir(tmp_path / "tmp") == []


def test_an_unverified_model_is_said_once_and_a_damaged_one_refused(crop_run, existing_output, model_dir,
                                                                     tmp_path):
    """Issue #17: the CLI's model checks reach the Slicer user (the job's warnings, the error's message)."""
    volume, _, warnings = crop_run
    assert len(warnings) == 1 and warnings[0].startswith(f"unverified model: {model_dir} has no models_entry.json")
    node, _ = existing_output
    before = snapshot(node)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    entry = {}
    for stage in ("stage1", "stage2"):
        data = (model_dir / f"{stage}.pt").read_bytes()
        entry[stage] = {"file": f"damaged/{stage}.pt", "sha256": hashlib.sha256(data).hexdigest(),
                        "size_bytes": len(data)}
        (damaged / f"{stage}.pt").write_bytes(data[:1000] + bytes(5000) + data[6000:])  # 5,000 zeroed bytes
    (damaged / "models_entry.json").write_text(json.dumps({"damaged": entry}))
    (tmp_path / "tmp").mkdir()
    with pytest.raises(SegmentationError, match=r"^Segmentation failed \(the model could not be loaded or "
                       r"verified\): Model 'damaged': .*stage1.pt does not match its recorded SHA-256"):
        KidneyTumorSegLogic(tempDir=str(tmp_path / "tmp")).segment(volume, node, model=str(damaged), device="cpu")
    assert snapshot(node) == before and os.listdir(tmp_path / "tmp") == []


@pytest.mark.skipif(registry_path() is None, reason="no Resources/Models/models.json installed")
def test_default_model(run):
    """The shipped default model on the real example CT, through the Logic as the self-test runs it: both
    kidneys found (named per side, in 30-600 mL as the self-test checks), the input volume unchanged."""
    volume = run[0]
    before = slicer.util.arrayFromVolume(volume).copy()
    seg = KidneyTumorSegLogic().segment(volume, model="default", mode="fast")
    np.testing.assert_allclose(matrix(seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole())),
                               matrix(volume))
    names = [seg.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(seg.GetSegmentation().GetNumberOfSegments())]
    assert "Right kidney" in names and "Left kidney" in names, names
    labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    for i in range(len(names)):
        ids.InsertNextValue(seg.GetSegmentation().GetNthSegmentID(i))
    slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(seg, ids, labelmap, volume)
    counts = np.bincount(slicer.util.arrayFromVolume(labelmap).ravel(), minlength=len(names) + 1)
    voxel_ml = float(np.prod(labelmap.GetSpacing())) / 1000.0
    for side in ("Right kidney", "Left kidney"):
        assert 30.0 <= counts[names.index(side) + 1] * voxel_ml <= 600.0, (side, counts)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)
