"""The command line's measurements in the scene: a table node (its CSV, row for row, one row per kidney,
lesion and uncertain lesion) and one markups line per lesion along its longest 3D diameter (its JSON).

Nothing is measured here: ``segment --measure`` did it in the child process, off the GUI thread, with the
same code and the same numbers as on the command line. The nodes belong to the segmentation they describe
(node references on it), so a rerun into the same segmentation refills its table and moves its lines instead
of adding nodes, and removes the lines of lesions that are gone. The lines sit under the volume's parent
transform, as the segmentation does: the file's coordinates are the volume's own (its IJK-to-RAS), so they
land on the CT wherever the transform puts it.
"""
import csv
import json
from dataclasses import dataclass, field
from typing import List, Tuple

import vtk

from .errors import SegmentationError

TABLE_ROLE = "KidneyTumorSeg.MeasurementTable"
LINE_ROLE = "KidneyTumorSeg.DiameterLine"
LESION_ATTRIBUTE = "KidneyTumorSeg.LesionId"
LPS_TO_RAS = (-1.0, -1.0, 1.0)


@dataclass
class CliMeasurements:
    columns: List[str]
    rows: List[List[str]]
    lines: List[Tuple[str, Tuple[float, ...], Tuple[float, ...]]] = field(default_factory=list)  # id, RAS ends


def readMeasurements(outputs):
    """The files of ``segment --measure``, named by its ``case_done`` event's ``outputs``."""
    missing = [key for key in ("measurements_csv", "measurements_json") if key not in outputs]
    if missing:
        raise SegmentationError(f"The command line wrote no measurements ({', '.join(missing)} missing); "
                                "run again, or turn measurements off.")
    return readMeasurementFiles(outputs["measurements_csv"], outputs["measurements_json"])


def readMeasurementFiles(csvPath, jsonPath):
    """A measurement CSV and JSON (``kidney-tumor-seg segment --measure`` or ``measure``) as CliMeasurements."""
    try:
        with open(csvPath, newline="", encoding="utf-8") as f:
            table = list(csv.reader(f))
        with open(jsonPath, encoding="utf-8") as f:
            lesions = json.load(f)["lesions"]
        lines = []
        for lesion in lesions:
            ends = (lesion.get("lines_lps") or {}).get("longest")
            if ends:
                lines.append((str(lesion["id"]), *(tuple(float(c) * s for c, s in zip(p, LPS_TO_RAS)) for p in ends)))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SegmentationError(f"The measurements could not be read ({type(exc).__name__}: {exc}).") from exc
    if not table:
        raise SegmentationError(f"The measurement table {csvPath} is empty.")
    return CliMeasurements(table[0], table[1:], lines)


def showMeasurements(measured, segmentationNode, volumeNode=None):
    """The table node and diameter lines of ``segmentationNode`` (reused when it has them), filled with
    ``measured``; the lines under ``volumeNode``'s parent transform. Returns (table node, line nodes)."""
    scene = segmentationNode.GetScene()
    prefix = f"{volumeNode.GetName()} " if volumeNode is not None else ""
    table = segmentationNode.GetNodeReference(TABLE_ROLE) or scene.AddNewNodeByClass("vtkMRMLTableNode")
    table.SetName(f"{prefix}kidney measurements")
    fillTable(table, measured.columns, measured.rows)
    segmentationNode.SetNodeReferenceID(TABLE_ROLE, table.GetID())
    transformId = volumeNode.GetTransformNodeID() if volumeNode is not None else None
    return table, updateDiameterLines(segmentationNode, measured.lines, prefix, transformId)


def fillTable(tableNode, columns, rows):
    """Replace the table's content by ``columns`` and ``rows`` (strings, as in the CSV file). Known columns get
    their unit and meaning (``measurement_columns``), which Slicer's table view shows as each cell's tooltip."""
    from KidneyTumorSegLib.measurement_columns import MEANINGS, UNITS

    table = tableNode.GetTable()
    wasModifying = tableNode.StartModify()
    # The names as the header (as Segment Statistics does); else Slicer heads the columns A, B, C and shows
    # the names as an editable first row. Slicer before 5.6.1 has only the older, now deprecated, name.
    useNames = getattr(tableNode, "SetUseColumnTitleAsColumnHeader", None) or tableNode.SetUseColumnNameAsColumnHeader
    useNames(True)
    table.Initialize()
    for c, name in enumerate(columns):
        column = vtk.vtkStringArray()
        column.SetName(name)
        for row in rows:
            column.InsertNextValue(row[c] if c < len(row) else "")
        table.AddColumn(column)
        tableNode.SetColumnUnitLabel(name, UNITS.get(name, ""))
        tableNode.SetColumnDescription(name, MEANINGS.get(name, ""))
    tableNode.Modified()
    tableNode.EndModify(wasModifying)
    return tableNode


def updateDiameterLines(segmentationNode, lines, prefix="", transformNodeId=None):
    """One line node per ``(lesion id, RAS end, RAS end)``: the segmentation's line of that lesion moved, or a
    new one; lines of lesions no longer there are removed from the scene."""
    scene = segmentationNode.GetScene()
    earlier, surplus = {}, []
    for node in referencedNodes(segmentationNode, LINE_ROLE):
        lesionId = node.GetAttribute(LESION_ATTRIBUTE)
        if lesionId in earlier:
            surplus.append(node)
        else:
            earlier[lesionId] = node
    nodes = []
    for lesionId, a, b in lines:
        node = earlier.pop(lesionId, None) or scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode")
        wasModifying = node.StartModify()
        node.SetName(f"{prefix}{lesionId} longest diameter")
        node.SetAttribute(LESION_ATTRIBUTE, lesionId)
        node.RemoveAllControlPoints()
        node.AddControlPoint(vtk.vtkVector3d(*a))
        node.AddControlPoint(vtk.vtkVector3d(*b))
        node.SetAndObserveTransformNodeID(transformNodeId)
        node.EndModify(wasModifying)
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        nodes.append(node)
    for node in list(earlier.values()) + surplus:
        scene.RemoveNode(node)
    segmentationNode.RemoveNodeReferenceIDs(LINE_ROLE)
    for node in nodes:
        segmentationNode.AddNodeReferenceID(LINE_ROLE, node.GetID())
    return nodes


def removeMeasurementNodes(segmentationNode):
    """Remove the table and diameter lines an earlier run made for ``segmentationNode`` (only those)."""
    scene = segmentationNode.GetScene()
    for node in referencedNodes(segmentationNode, TABLE_ROLE) + referencedNodes(segmentationNode, LINE_ROLE):
        scene.RemoveNode(node)
    segmentationNode.RemoveNodeReferenceIDs(TABLE_ROLE)
    segmentationNode.RemoveNodeReferenceIDs(LINE_ROLE)


def referencedNodes(node, role):
    nodes = (node.GetNthNodeReference(role, i) for i in range(node.GetNumberOfNodeReferences(role)))
    return [n for n in nodes if n is not None]
