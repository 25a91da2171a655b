"""Output paths and write failures: special files are never replaced, a failed write leaves nothing behind."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import subprocess
import sys

import pytest
from conftest import ROOT, assert_user_error

from ettcli.errors import EttError


def _special(tmp_path, kind: str):
    path = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        try:  # a node with /dev/null's numbers, so the test never touches the real one
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("creating a device node needs root")
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    else:
        path.mkdir()
    return path


@pytest.mark.parametrize(
    "kind, word", [("fifo", "a fifo"), ("device", "a character device"), ("socket", "a socket"), ("folder", "a folder")]
)
def test_output_onto_a_special_file_is_refused_and_it_stays(tmp_path, cli, ticket_file, kind, word):
    src = ticket_file("cifar_resnet_14_4")
    target = _special(tmp_path, kind)
    mode = target.lstat().st_mode
    for args in (
        ("convert", src, "-o", target),
        ("init", "cifar_resnet_8_4", "-o", target),
        ("stretch", src, "--to", "resnet-20", "-o", target),
    ):
        assert_user_error(cli(*args), str(target), f"is {word}, not a regular file")
        assert target.lstat().st_mode == mode  # still the same kind of file
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, kind])
    from ettcli.stfile import check_output

    with pytest.raises(EttError, match="not a regular file"):
        check_output(target)


def test_output_in_a_missing_folder_is_refused(tmp_path, cli, ticket_file):
    src = ticket_file()
    assert_user_error(cli("convert", src, "-o", tmp_path / "no" / "t.safetensors"), "does not exist")
    assert_user_error(cli("convert", src, "-o", src / "t.safetensors"), "is not a folder")


def test_full_disk_reports_one_line_and_leaves_no_temporary(tmp_path, cli, ticket_file, monkeypatch):
    """fsync is where a full disk (or quota, or NFS) reports the data that did not fit."""
    src = ticket_file()
    before = src.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "out.safetensors"
    assert_user_error(cli("convert", src, "-o", out), str(out), "no space left", "free space")
    assert_user_error(cli("convert", src, "-o", src), "no space left")  # over its own input
    assert_user_error(cli("convert", src, "-o", tmp_path / "out.pt"), "no space left")
    r = cli("convert", src, "--open-lth", "-o", tmp_path / "level")
    assert_user_error(r, "level/mask.pth: cannot write: no space left")
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]  # no temporary, no empty level folder


def _in_small_filesystem(tmp_path, script: str, options: str) -> subprocess.CompletedProcess:
    """Run ``script`` (sh) with a fresh tmpfs mounted on $D, in a private mount namespace (needs unshare)."""
    if not shutil.which("unshare"):
        pytest.skip("unshare is not available")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot create a mount namespace here")
    d = tmp_path / "fs"
    d.mkdir()
    env = {**os.environ, "D": str(d), "PY": sys.executable, "PYTHONPATH": str(ROOT)}
    inner = f'mount -t tmpfs -o {options} tmpfs "$D" || exit 99\n{script}'
    r = subprocess.run(["unshare", "-rm", "sh", "-c", inner], capture_output=True, text=True, env=env, cwd=tmp_path)
    if r.returncode == 99:
        pytest.skip("cannot mount a tmpfs here")
    return r


def _one_error_line(stderr: str, *fragments: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ett: error: "), stderr
    assert ".tmp" not in lines[0]  # the message names the output, not a temporary file
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_a_real_full_filesystem(tmp_path, ticket_file):
    src = ticket_file()  # about 25 kB: does not fit in 16 kB
    script = (
        f'$PY -m ettcli convert {src} -o "$D/t.safetensors"; echo "rc=$?"\n'
        f'$PY -m ettcli convert {src} --open-lth -o "$D/level"; echo "rc=$?"\n'
        'echo "left: $(ls -A "$D")"'
    )
    r = _in_small_filesystem(tmp_path, script, "size=16k")
    assert r.stdout.count("rc=2") == 2, (r.stdout, r.stderr)
    assert "left: \n" in r.stdout or r.stdout.rstrip().endswith("left:"), r.stdout
    for line in r.stderr.splitlines():
        _one_error_line(line, "no space left")


def test_a_read_only_folder(tmp_path, ticket_file):
    src = ticket_file()
    script = (
        f'$PY -m ettcli convert {src} -o "$D/t.safetensors"; echo "rc=$?"\n'
        f'$PY -m ettcli convert {src} --open-lth -o "$D/level"; echo "rc=$?"'
    )
    r = _in_small_filesystem(tmp_path, script, "ro")
    assert r.stdout.split() == ["rc=2", "rc=2"], (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    _one_error_line(lines[0], "t.safetensors: cannot write in", "Read-only file system", "choose a folder")
    _one_error_line(lines[1], "level: cannot write in", "Read-only file system")
