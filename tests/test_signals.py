"""SIGTERM, SIGHUP and SIGINT during a write: real processes, real signals, nothing left behind.

The child is the real CLI; the only addition is a pause inside the write (``os.fsync`` waits), so that the
signal provably arrives while the temporary file exists.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from ettcli.ticket import read_ticket

# Runs the CLI with a pause in the write (PAUSE=fsync) or a signal to itself right after the output is renamed
# into place (PAUSE=replace); tells the test it got there by creating the file named in READY.
CHILD = """
import os, signal, sys, time
from pathlib import Path
ready, where = Path(os.environ["READY"]), os.environ["PAUSE"]
if where == "fsync":
    real_fsync = os.fsync
    def fsync(fd):
        ready.touch()
        time.sleep(120)
        real_fsync(fd)
    os.fsync = fsync
else:
    real_replace = os.replace
    def replace(a, b):
        real_replace(a, b)
        os.kill(os.getpid(), signal.SIGTERM)
    os.replace = replace
sys.argv[0] = "ett"
from ettcli.cli import main
main()
"""


def _run(tmp_path, args, pause: str, send: int | None = None) -> subprocess.CompletedProcess:
    ready = tmp_path / "ready"
    env = {**os.environ, "READY": str(ready), "PAUSE": pause, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if send is not None:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out, err = proc.communicate()
                pytest.fail(f"the write never started: {err}")
            time.sleep(0.01)
        proc.send_signal(send)
    out, err = proc.communicate(timeout=120)
    ready.unlink(missing_ok=True)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_during_a_write_removes_the_temporary_and_keeps_the_input(tmp_path, ticket_file, sig):
    src = ticket_file("cifar_resnet_14_4")
    before = _digest(src)
    cases = [("convert", src, "-o", src)]  # over its own input
    if sig == signal.SIGTERM:  # every kind of write; the other signals take the same path
        cases += [
            ("stretch", src, "--to", "resnet-20", "-o", tmp_path / "r20.safetensors"),
            ("convert", src, "-o", tmp_path / "t.pt"),
            ("convert", src, "--open-lth", "-o", tmp_path / "level"),
        ]
    for args in cases:
        r = _run(tmp_path, args, "fsync", sig)
        assert r.returncode == 128 + sig, (args, r.returncode, r.stderr)
        assert r.stderr.strip() == f"ett: interrupted by {signal.Signals(sig).name}", r.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == [src.name], args  # no .*.tmp, no level folder
        assert _digest(src) == before


def test_a_signal_after_the_output_is_in_place_is_not_a_failure(tmp_path, ticket_file):
    src = ticket_file("cifar_resnet_14_4")
    for out in (tmp_path / "r20.safetensors", tmp_path / "r20.pt"):
        r = _run(tmp_path, ["stretch", src, "--to", "resnet-20", "-o", out], "replace")
        assert r.returncode == 0, (r.returncode, r.stderr)
        assert r.stdout.startswith(f"wrote {out}")
        assert r.stderr.strip() == "ett: SIGTERM arrived after the output was complete; it is kept"
        assert read_ticket(out).arch.name == "cifar_resnet_20_4"
    r = _run(tmp_path, ["convert", src, "--open-lth", "-o", tmp_path / "level"], "replace")
    assert r.returncode == 0 and "it is kept" in r.stderr, r.stderr
    assert sorted(p.name for p in (tmp_path / "level").iterdir()) == ["hparams.log", "mask.pth", "model_ep0_it0.pth"]


def _bert_folder(folder, layers: int = 2, hidden: int = 8):
    """A Hugging Face model folder with a BERT's names and shapes (config.json + model.safetensors), numpy only."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    shapes = {"bert.embeddings.word_embeddings.weight": (50, hidden), "bert.embeddings.LayerNorm.weight": (hidden,)}
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."
        shapes.update(
            {
                p + "attention.self.query.weight": (hidden, hidden),
                p + "attention.output.LayerNorm.weight": (hidden,),
                p + "intermediate.dense.weight": (4 * hidden, hidden),
                p + "output.dense.weight": (hidden, 4 * hidden),
            }
        )
    rng = np.random.default_rng(0)
    folder.mkdir()
    save_file(
        {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}, str(folder / "model.safetensors")
    )
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": layers}))
    return folder


def test_a_signal_while_a_model_folder_is_written_leaves_no_folder(tmp_path):
    src = _bert_folder(tmp_path / "src")
    r = _run(tmp_path, ["stretch", src, "--to", "bert-4", "--hf-folder", tmp_path / "out"], "fsync", signal.SIGTERM)
    assert r.returncode == 128 + signal.SIGTERM, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no out, no temporary folder
    r = _run(tmp_path, ["stretch", src, "--to", "bert-4", "--hf-folder", tmp_path / "out"], "replace")
    assert r.returncode == 0 and "it is kept" in r.stderr, r.stderr
    assert read_ticket(tmp_path / "out").arch.stages == (4,)
