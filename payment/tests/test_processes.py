"""payshift/processes.py: the one process table and the supervisor the dev stack, bench and chaos run share."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from payshift.processes import ProcessError, Supervisor, Topology, manage_command

PY = sys.executable
CHILD_IGNORING_SIGTERM = (
    "import signal, subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print(1, flush=True); time.sleep(120)'])\n"
    "time.sleep(120)\n"
)


def _wait(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent (an orphan's new parent may reap it late)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_table_keeps_the_public_command_lines(tmp_path: Path) -> None:
    topology = Topology(web_port=8000, sandbox_port=8100, beat_schedule=tmp_path / "beat",
                        celery_nodes={"w1": "w1@x", "w2": "w2@x"})
    commands = topology.commands()
    assert list(commands) == ["sandbox", "web", "w1", "w2", "beat", "qcluster"]
    assert commands["web"][1:4] == ["-m", "gunicorn", "payshift.wsgi:application"]
    for worker in ("w1", "w2"):
        assert commands[worker][1:6] == ["-m", "celery", "-A", "payshift", "worker"]
        assert "-Q" not in commands[worker]  # a worker consumes every queue
    assert commands["beat"][1:6] == ["-m", "celery", "-A", "payshift", "beat"]
    assert commands["qcluster"][1:] == [str(Path(__file__).resolve().parents[2] / "manage.py"), "qcluster"]
    assert commands["sandbox"][1:3] == ["-m", "payshift.sandbox"]
    assert "beat" not in Topology(web_port=1, sandbox_port=2).commands()


def test_manage_command_works_without_a_checkout(tmp_path: Path) -> None:
    """An installed package has no manage.py: the same program runs from the package."""
    env = {"PATH": os.environ.get("PATH", ""), "PAYSHIFT_VAR_DIR": str(tmp_path / "var")}
    result = subprocess.run([*manage_command(checkout=None), "check"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stderr
    assert "System check identified" in result.stdout + result.stderr


def test_restart_dead_restarts_then_gives_up(tmp_path: Path) -> None:
    supervisor = Supervisor(os.environ, cwd=tmp_path, log_dir=tmp_path)
    supervisor.start("flaky", [PY, "-c", "import sys; print('bye'); sys.exit(3)"])
    try:
        for _ in range(2):
            _wait(lambda: supervisor.dead() == ["flaky"])
            assert supervisor.restart_dead(limit=2, window=60) == []
        _wait(lambda: supervisor.dead() == ["flaky"])
        assert supervisor.restart_dead(limit=2, window=60) == ["flaky"]
        assert [code for _, code in supervisor.procs["flaky"].exits] == [3, 3]
        assert (tmp_path / "flaky.log").read_text().count("bye") == 3
    finally:
        supervisor.stop_all(timeout=2)


def test_stop_is_warm_first_then_kills_the_whole_group(tmp_path: Path) -> None:
    supervisor = Supervisor(os.environ, cwd=tmp_path, log_dir=tmp_path)
    supervisor.start("parent", [PY, "-c", CHILD_IGNORING_SIGTERM])
    _wait(lambda: "1" in (tmp_path / "parent.log").read_text())
    pids = supervisor.pids("parent")
    assert len(pids) == 2
    started = time.monotonic()
    supervisor.stop("parent", timeout=2)
    assert time.monotonic() - started < 10
    _wait(lambda: not [pid for pid in pids if _alive(pid)], 5)  # the child ignored SIGTERM: SIGKILL got it
    assert "parent" not in supervisor.procs


def test_kill_holds_a_process_down_until_restarted(tmp_path: Path) -> None:
    supervisor = Supervisor(os.environ, cwd=tmp_path, log_dir=tmp_path)
    supervisor.start("worker", [PY, "-c", "import time; time.sleep(120)"])
    try:
        supervisor.kill("worker")
        assert not supervisor.procs["worker"].running()
        assert supervisor.dead() == [] and supervisor.restart_dead() == []  # not restarted behind the caller
        supervisor.restart("worker")
        assert supervisor.procs["worker"].running() and not supervisor.procs["worker"].held_down
    finally:
        supervisor.stop_all(timeout=2)


def test_waiting_for_health_fails_at_once_when_a_process_exits(tmp_path: Path) -> None:
    supervisor = Supervisor(os.environ, cwd=tmp_path, log_dir=tmp_path)
    supervisor.start("web", [PY, "-c", "import sys; print('cannot bind'); sys.exit(1)"])
    started = time.monotonic()
    with pytest.raises(ProcessError, match=r"web is not running(.|\n)*cannot bind"):
        supervisor.wait_healthy({"web": "http://127.0.0.1:9/healthz"}, timeout=60)
    assert time.monotonic() - started < 20
    supervisor.stop_all(timeout=2)
