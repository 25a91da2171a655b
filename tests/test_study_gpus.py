"""Which GPUs a local study uses: MIG instances listed one by one, and several jobs per GPU without MPS."""

from __future__ import annotations

import os
import warnings

import pytest

from ettcli.errors import EttWarning
from ettcli.study.executors import LocalExecutor, visible_gpus

SMI_MIG = """GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-5d1a0f6e-0000-0000-0000-000000000000)
  MIG 3g.40gb     Device  0: (UUID: MIG-2b7c0a1e-1111-5555-8888-000000000001)
  MIG 3g.40gb     Device  1: (UUID: MIG-2b7c0a1e-1111-5555-8888-000000000002)
GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-5d1a0f6e-0000-0000-0000-000000000001)
"""


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    """A real ``nvidia-smi`` executable on PATH that prints the given ``-L`` listing."""

    def install(listing: str):
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "listing.txt").write_text(listing)
        smi = bin_dir / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\ncat '{bin_dir / 'listing.txt'}'\n")
        smi.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    return install


def test_mig_instances_are_listed_as_their_uuids(fake_smi):
    fake_smi(SMI_MIG)
    assert visible_gpus("auto") == [
        "MIG-2b7c0a1e-1111-5555-8888-000000000001",
        "MIG-2b7c0a1e-1111-5555-8888-000000000002",
        "1",
    ]
    fake_smi("GPU 0: NVIDIA H100 (UUID: GPU-a)\nGPU 1: NVIDIA H100 (UUID: GPU-b)\n")
    assert visible_gpus("auto") == ["0", "1"]
    assert visible_gpus("cpu") == []


def test_several_jobs_per_gpu_without_mps_are_warned_about(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    pipes = tmp_path / "mps"
    pipes.mkdir()
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(pipes))
    with pytest.warns(EttWarning, match="without the CUDA MPS daemon"):
        ex = LocalExecutor(tmp_path, jobs=None, jobs_per_gpu=4, device="auto")
    assert ex.slot_gpus == ["0"] * 4
    (pipes / "control").touch()  # the daemon's pipe
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LocalExecutor(tmp_path, jobs=None, jobs_per_gpu=4, device="auto")
        LocalExecutor(tmp_path, jobs=None, jobs_per_gpu=1, device="auto")


@pytest.mark.data
def test_calibration_times_the_steps_after_its_warm_up(tmp_path, tmp_path_factory, monkeypatch):
    """The rate comes from the steps after the warm-up alone: the steps before it (on a GPU: CUDA's start,
    cuDNN autotuning, compiling) are left out however long they take. The clock is a step counter here:
    each warm-up step takes 100 "seconds", each later one 1."""
    from train_util import cifar_subset, needs_cifar

    if needs_cifar.args[0]:
        pytest.skip(needs_cifar.kwargs["reason"])
    import ettcli.models as models
    from ettcli.study import costs
    from ettcli.study.spec import load_study

    monkeypatch.setenv("ETT_CACHE", str(tmp_path / "cache"))
    root = cifar_subset(tmp_path_factory.getbasetemp())
    spec = tmp_path / "s.toml"
    spec.write_text(
        f'name = "c"\ndataset = "cifar10"\ndata_root = "{root}"\nseeds = [0]\nsources = ["cifar_resnet_14_4"]\n'
        'targets = ["resnet-8"]\n[train]\nbatch_size = 50\nsubset = 300\ndevice = "cpu"\n'
        '[imp]\nlevels = 1\nrewind = "0it"\n[transfer]\nlevels = [1]\n'
    )
    study = load_study(spec)
    clock = {"t": 0.0, "calls": 0}
    apply = models.Masker.apply

    def step_clock(self):  # called once when the model is built, then once per step
        clock["calls"] += 1
        clock["t"] += 100.0 if clock["calls"] <= 5 else 1.0
        apply(self)

    class StepTime:
        @staticmethod
        def perf_counter():
            return clock["t"]

    monkeypatch.setattr(models.Masker, "apply", step_clock)
    monkeypatch.setattr(costs, "time", StepTime)
    rate = costs.calibrate(study, ["cifar_resnet_14_4"], threads=1, steps=6, warmup=4)["cifar_resnet_14_4"]
    assert rate == 6 * 50 / 6.0  # steps 5 to 10: 6 steps of 50 images in 6 "seconds"
    assert costs.cached_throughput(study, ["cifar_resnet_14_4"], 1) == {"cifar_resnet_14_4": rate}
