"""GUI-thread cost of LANDSynthesis's Generate path (issue 6: the GUI thread must never block > 100 ms).

Runs Slicer's real MRML and segmentation logic headless (the ``slicer-core`` wheel) and prints the time spent
on the calling (GUI) thread per call, before and after moving work to worker threads:

* masks: a segmentation painted on a CT grid (512 x 512 x 240 at 0.7 x 0.7 x 1.25 mm; lungs + nodules)
  exported to a blank 256 mm reference cube at 1 mm (the model grid). Before: Slicer's per-segment export
  on the GUI thread. After: the GUI thread takes views of the labelmap layers (``gatherSegmentSources``);
  a worker resamples, combines and writes the engine inputs.
* result: a 256^3 int16 raw NRRD (what ``land generate --no-compress`` writes). Before: ``AddArchetypeVolume``
  on the GUI thread. After: a worker reads it into VTK image data (``readResultVolume``); the GUI thread only
  adds the node (``addResultVolume``).

While a worker runs, the main thread ticks every 5 ms and reports its largest delay ("stall"): Python work in
the worker competes for the GIL. On this shared 2-core VM OS scheduling adds to it.

    python benchmarks/bench_slicer_gui.py [--repeats 3] [--oblique DEG]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing"))
sys.path.insert(0, str(REPO / "LANDSynthesis"))


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def in_worker(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(worker seconds, largest main-thread tick delay in seconds, result) of ``fn`` run in a thread."""
    out: dict[str, object] = {}

    def run() -> None:
        t0 = time.perf_counter()
        out["value"] = fn()
        out["seconds"] = time.perf_counter() - t0

    thread = threading.Thread(target=run)
    stall = 0.0
    thread.start()
    while thread.is_alive():
        t0 = time.perf_counter()
        time.sleep(0.005)
        stall = max(stall, time.perf_counter() - t0 - 0.005)
    thread.join()
    return out["seconds"], stall, out["value"]  # type: ignore[return-value]


def ms(values: list[float]) -> str:
    return f"median {1000 * statistics.median(values):6.1f} ms, max {1000 * max(values):6.1f} ms"


def ct_case(slicer, logic, angle_deg: float):
    """A CT grid with lungs and three nodules painted on it, and the blank model-grid reference."""
    from LANDSynthesisLib import segments
    from slicer_fixtures import geometry_matrix

    shape = (240, 512, 512)
    m = geometry_matrix(spacing=(0.7, 0.7, 1.25), origin=(0, 0, 0), angle_deg=angle_deg)
    m[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ m[:3, :3]  # LPS axial, as CT series load
    m[:3, 3] = -m[:3, :3] @ ((np.array(shape[::-1]) - 1) / 2.0)
    ct = slicer.util.addVolumeFromArray(np.full(shape, -1000, np.int16), m, name="CT")
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "masks")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    lung = np.zeros(shape, np.uint8)
    for ci in (150, 362):  # two lung ellipsoids (voxel units)
        lung |= (((i - ci) / 90.0) ** 2 + ((j - 256) / 150.0) ** 2 + ((k - 120) / 90.0) ** 2 <= 1).astype(
            np.uint8
        )
    slicer.util.updateSegmentBinaryLabelmapFromArray(lung, seg, segments.addLungSegment(seg), ct)
    for n, (ci, cj, ck, r) in enumerate([(150, 230, 120, 12), (362, 300, 100, 20), (140, 300, 150, 7)]):
        ball = (((i - ci) ** 2 + (j - cj) ** 2 + ((k - ck) * 1.25 / 0.7) ** 2) <= r * r).astype(np.uint8)
        sid = segments.addNoduleSegment(seg, texture=(1, 3, 5)[n])
        slicer.util.updateSegmentBinaryLabelmapFromArray(ball, seg, sid, ct)
    reference = logic.createBlankReference(None)  # 256^3 at 1 mm when no model is given
    return ct, seg, reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--oblique", type=float, default=0.0, help="rotate the CT grid by DEG degrees")
    args = parser.parse_args(argv)

    from slicer_fixtures import start_headless_slicer

    core, restore = start_headless_slicer()
    slicer = core.slicer
    from LANDSynthesisLib.logic import (
        LANDSynthesisLogic,
        combineMasks,
        materializeMasks,
        readResultVolume,
        writeEngineInputs,
    )

    logic = LANDSynthesisLogic()
    ct, seg, ref = ct_case(slicer, logic, args.oblique)
    shape = tuple(reversed(ref.GetImageData().GetDimensions()))
    ijk_to_ras = np.array(slicer.util.arrayFromVTKMatrix(_matrix(ref)))
    print(
        f"segmentation on {ct.GetImageData().GetDimensions()} (oblique {args.oblique:g} deg), "
        f"reference {shape[::-1]}, {seg.GetSegmentation().GetNumberOfSegments()} segments, "
        f"{args.repeats} repeats"
    )

    # ---------------------------------------------------------------- masks: before
    export_times: list[float] = []
    for _ in range(args.repeats):
        sources, _ = logic.gatherSegmentSources(seg, ref, forceExport=True)
        for source in sources:
            export_times.append(timed(lambda s=source: logic.exportSegmentSource(seg, ref, s))[0])
    print(f"BEFORE  per-segment Slicer export on the GUI thread:      {ms(export_times)}")

    # ---------------------------------------------------------------- masks: after
    gather_times, worker_times, stalls = [], [], []
    for _ in range(args.repeats):
        seconds, (sources, layers) = timed(lambda: logic.gatherSegmentSources(seg, ref))
        gather_times.append(seconds)
        assert all(s.layerKey for s in sources)
        with tempfile.TemporaryDirectory() as folder:

            def prepare(sources=sources, layers=layers, folder=folder):
                lungs, nodules = materializeMasks(sources, layers, shape)
                inputs = combineMasks(lungs, nodules, ijk_to_ras, shape)
                writeEngineInputs(inputs, folder)
                return inputs

            seconds, stall, inputs = in_worker(prepare)
        worker_times.append(seconds)
        stalls.append(stall)
    exported = logic.maskInputs(seg, ref, forceExport=True)
    same = np.array_equal(exported.lung, inputs.lung) and np.array_equal(exported.nodules, inputs.nodules)
    print(f"AFTER   GUI thread, layer views (all segments, one call):  {ms(gather_times)}")
    print(f"        worker: resample + combine + write inputs:         {ms(worker_times)}")
    print(f"        main-thread stall while the worker runs:           {ms(stalls)}")
    print(f"        worker masks identical to Slicer's export: {same}")

    # ---------------------------------------------------------------- result loading
    from land.imaging.io import write_volume
    from land.imaging.volume import Volume

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "synthetic_ct.nrrd"
        rng = np.random.default_rng(0)
        ct_array = rng.integers(-1000, 1000, size=(256, 256, 256), dtype=np.int16)
        write_volume(path, Volume(ct_array, (1.0, 1.0, 1.0), (-127.5, -127.5, -127.5)), {"seed": "0"},
                     compress=False)  # fmt: skip
        archetype = []
        for _ in range(args.repeats):
            seconds, node = timed(lambda: core.volumes.AddArchetypeVolume(str(path), "archetype", 0))
            archetype.append(seconds)
            slicer.mrmlScene.RemoveNode(node)
        print(f"BEFORE  AddArchetypeVolume 256^3 raw NRRD (GUI thread):    {ms(archetype)}")
        reads, read_stalls, adds = [], [], []
        for _ in range(args.repeats):
            seconds, stall, loaded = in_worker(lambda: readResultVolume(path, ijk_to_ras, shape))
            reads.append(seconds)
            read_stalls.append(stall)
            seconds, node = timed(lambda loaded=loaded: logic.addResultVolume(loaded, "SYNTHETIC CT bench"))
            adds.append(seconds)
            assert np.array_equal(slicer.util.arrayFromVolume(node), ct_array)
            slicer.mrmlScene.RemoveNode(node)
        print(f"AFTER   GUI thread, addResultVolume:                       {ms(adds)}")
        print(f"        worker: readResultVolume:                          {ms(reads)}")
        print(f"        main-thread stall while the worker reads:          {ms(read_stalls)}")
    restore()
    return 0


def _matrix(node):
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return m


if __name__ == "__main__":
    raise SystemExit(main())
