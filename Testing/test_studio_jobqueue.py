"""The class's one queue of generation jobs (``land_studio.jobqueue``): arrival order, one slot per GPU (one
on a CPU), places shown to the waiting, entries of processes that died dropped, several processes at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LANDStudio"))

import pytest  # noqa: E402

pytest.importorskip("psutil")
from land_studio.jobqueue import JobQueue  # noqa: E402


def test_one_slot_in_arrival_order(tmp_path):
    q = JobQueue(tmp_path, slots=1)
    a, b, c = q.join("a"), q.join("b"), q.join("c")
    assert [q.status(x)["slot"] for x in (a, b, c)] == [0, None, None]
    assert [q.status(x)["ahead"] for x in (a, b, c)] == [0, 1, 2]
    assert q.status(c)["running"] == 1 and q.status(c)["waiting"] == 2
    q.leave(b)  # a waiting job cancelled: the one behind it moves up
    assert q.status(c)["ahead"] == 1 and q.status(c)["slot"] is None
    q.leave(a)  # the running one ends: the next holds the slot
    assert q.status(c)["slot"] == 0 and q.status(c)["ahead"] == 0
    assert q.status(a)["gone"]


def test_one_slot_per_gpu(tmp_path):
    q = JobQueue(tmp_path, slots=2)
    a, b, c = q.join(), q.join(), q.join()
    assert [q.status(x)["slot"] for x in (a, b, c)] == [0, 1, None]
    q.leave(a)
    assert q.status(c)["slot"] == 0  # the freed GPU
    with pytest.raises(ValueError):
        JobQueue(tmp_path / "x", slots=0)


def test_a_dead_process_holds_no_slot_and_processes_share_the_queue(tmp_path):
    lib = Path(__file__).resolve().parents[1] / "LANDStudio"
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(lib)!r})
        from land_studio.jobqueue import JobQueue
        q = JobQueue({str(tmp_path)!r})
        entry = q.join("child")
        print(entry, q.status(entry)["slot"], flush=True)
        sys.stdin.read()  # hold the slot until told to go
    """)
    q = JobQueue(tmp_path, slots=1)
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        entry, slot = child.stdout.readline().split()
        assert slot == "0"
        mine = q.join("parent")
        assert q.status(mine)["slot"] is None and q.status(mine)["ahead"] == 1  # the other process runs
        child.kill()  # a page that crashed: its entry goes at the next look
        child.wait(30)
        assert q.status(mine)["slot"] == 0
        assert q.status(entry)["gone"]
        assert [e["label"] for e in q.snapshot()["entries"]] == ["parent"]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
