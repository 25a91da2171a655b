"""Job locks: one owner at a time, stale locks (dead pid, reused pid, silent other host) are taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from ettcli.locks import JobLock


def test_one_owner_at_a_time(tmp_path):
    a, b = JobLock(tmp_path / "lock"), JobLock(tmp_path / "lock")
    assert a.acquire()
    info = a.owner()
    assert info["host"] == socket.gethostname() and info["pid"] == os.getpid()
    assert a.busy() and not b.acquire()  # the owner (this process) is alive
    a.release()
    assert not (tmp_path / "lock").exists()
    assert b.acquire()
    b.release()


def test_a_dead_owner_leaves_a_stale_lock_that_is_taken_over(tmp_path):
    code = "import sys; from ettcli.locks import JobLock; assert JobLock(sys.argv[1]).acquire()"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "lock")], check=True)  # exits holding the lock
    lock = JobLock(tmp_path / "lock")
    dead = lock.owner()["pid"]
    assert dead != os.getpid() and lock.is_stale() and not lock.busy()
    assert lock.acquire()
    assert lock.owner()["pid"] == os.getpid()
    lock.release()


def test_a_reused_pid_is_recognised(tmp_path):
    lock = JobLock(tmp_path / "lock")
    assert lock.acquire()
    info = lock.owner()
    info["proc_start"] = "1"  # this pid, but a process that started at another time
    (tmp_path / "lock").write_text(json.dumps(info))
    assert JobLock(tmp_path / "lock").is_stale()


def test_another_hosts_lock_is_stale_only_without_heartbeat(tmp_path):
    path = tmp_path / "lock"
    path.write_text(json.dumps({"host": "node-17", "pid": 12, "token": "x"}))
    assert JobLock(path, stale_after=60).busy()
    old = time.time() - 120
    os.utime(path, (old, old))
    lock = JobLock(path, stale_after=60)
    assert lock.is_stale() and lock.acquire()
    lock.release()


def test_heartbeat_keeps_the_lock_fresh(tmp_path):
    lock = JobLock(tmp_path / "lock", stale_after=1.0)
    assert lock.acquire()
    old = time.time() - 100
    os.utime(tmp_path / "lock", (old, old))
    lock.start_heartbeat()
    time.sleep(0.4)
    assert time.time() - (tmp_path / "lock").stat().st_mtime < 5
    lock.release()
