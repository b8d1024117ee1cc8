"""The engine child process: start it, read its output without blocking, stop it with its whole process tree.

Two reader threads put ``(stream, line)`` pairs from the child's stdout and stderr into one queue; the caller
drains the queue from its own thread (a ``qt.QTimer`` in the GUI, a polling loop in the blocking API), so the
caller never waits on a pipe. Stopping signals every process of the child's tree: with psutil the recorded
descendants, and on POSIX also the child's process group (the child is started in a new session), so a
``PythonSlicer`` launcher and the real Python interpreter it starts both go.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

try:  # bundled with most Slicer installations; the process group / taskkill fallback covers the rest
    import psutil
except ImportError:  # pragma: no cover - exercised only without psutil
    psutil = None

STDOUT = "stdout"
STDERR = "stderr"
IS_WINDOWS = os.name == "nt"


class ChildProcess:
    """One child process with non-blocking line output and process-tree termination."""

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.args = [str(a) for a in args]
        kwargs: dict = {
            "stdin": subprocess.DEVNULL,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.PIPE,
            "env": dict(env) if env is not None else None,
            "cwd": cwd,
            "text": True,
            "encoding": "utf-8",
            "errors": "replace",
            "bufsize": 1,
        }
        if IS_WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(
                subprocess, "CREATE_NO_WINDOW", 0
            )
        else:
            kwargs["start_new_session"] = True  # own process group: killpg reaches every descendant
        self.proc = subprocess.Popen(self.args, **kwargs)
        self.pid = self.proc.pid
        self.startTime = time.monotonic()
        self.queue: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self._open = {STDOUT, STDERR}
        self._known: dict[int, object] = {}  # pid -> psutil.Process of every descendant seen
        self._lastRemember = 0.0
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, STDOUT), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, STDERR), daemon=True),
        ]
        for t in self._threads:
            t.start()
        self.remember_descendants()

    # ------------------------------------------------------------------ output
    def _read(self, stream, name: str) -> None:
        try:
            for line in iter(stream.readline, ""):
                self.queue.put((name, line.rstrip("\r\n")))
        except (OSError, ValueError):  # stream closed under us while stopping
            pass
        finally:
            self.queue.put((name, None))

    def read_lines(self, max_lines: int = 1000) -> list[tuple[str, str]]:
        """Lines that arrived since the last call (never waits)."""
        lines: list[tuple[str, str]] = []
        while len(lines) < max_lines:
            try:
                name, line = self.queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._open.discard(name)
            else:
                lines.append((name, line))
        return lines

    def return_code(self) -> int | None:
        return self.proc.poll()

    def finished(self) -> bool:
        """True when the child has exited and both output streams are fully read."""
        return not self._open and self.proc.poll() is not None

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    # ------------------------------------------------------------------ stopping
    def remember_descendants(self) -> None:
        """Record the child's current descendants (so they can be stopped after the child is gone)."""
        if psutil is None:
            return
        try:
            parent = psutil.Process(self.pid)
            procs = [parent, *parent.children(recursive=True)]
        except psutil.Error:
            return
        for p in procs:
            self._known.setdefault(p.pid, p)

    def maybe_remember_descendants(self, interval: float = 1.0) -> None:
        """:meth:`remember_descendants` at most every ``interval`` seconds (cheap: call it every poll)."""
        now = time.monotonic()
        if now - self._lastRemember >= interval:
            self._lastRemember = now
            self.remember_descendants()

    def descendant_pids(self) -> list[int]:
        """Pids of the child and every descendant seen so far (psutil only)."""
        return sorted(self._known)

    def alive_pids(self) -> list[int]:
        """Pids of the recorded tree still running (zombies count as gone)."""
        if psutil is None:
            return [self.pid] if self.proc.poll() is None else []
        alive = []
        for pid, p in self._known.items():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.Error:
                pass
        return sorted(alive)

    def _signal_tree(self, force: bool) -> None:
        self.remember_descendants()
        reaped = self.proc.returncode is not None  # once reaped, the child's pid may be reused
        if psutil is not None:
            for p in list(self._known.values()):
                try:
                    if force:
                        p.kill()
                    else:
                        p.terminate()
                except psutil.Error:
                    pass
        if IS_WINDOWS:
            if psutil is None and not reaped:
                args = ["taskkill", "/T", "/PID", str(self.pid)] + (["/F"] if force else [])
                subprocess.run(args, capture_output=True, check=False)
        elif not reaped or psutil is None:
            try:  # the child's process group: reaches descendants psutil has not seen yet
                os.killpg(self.pid, signal.SIGKILL if force else signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc.poll() is None:
            try:
                if force:
                    self.proc.kill()
                else:
                    self.proc.terminate()
            except OSError:
                pass

    def terminate(self) -> None:
        """Ask the whole tree to stop (SIGTERM: the engine cancels at its next step and exits 130)."""
        self._signal_tree(force=False)

    def kill(self) -> None:
        """Stop the whole tree now (SIGKILL / TerminateProcess)."""
        self._signal_tree(force=True)

    def close(self, timeout: float = 5.0) -> None:
        """Kill whatever is left, reap the child and join the reader threads."""
        if self.proc.poll() is None or self.alive_pids():
            self.kill()
        self.wait(timeout)
        for t in self._threads:
            t.join(timeout)
        for stream in (self.proc.stdout, self.proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


def python_executable(in_slicer_application: bool) -> str:
    """The interpreter for ``-m land`` children: ``PythonSlicer`` in the Slicer application, else this one."""
    if in_slicer_application:
        found = shutil.which("PythonSlicer")
        if found:
            return found
        exe = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
        candidate = Path(sys.executable).with_name(exe)
        if candidate.is_file():
            return str(candidate)
    return sys.executable
