"""The GPU path, checked on a CPU: resume of a checkpoint loaded as a GPU run loads it, the device
preflight against fake capabilities and arch lists, the backend flags, and the compiled step's graphs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import make_ticket
from torch._dynamo.testing import CompileCounter
from train_util import cifar_subset, needs_cifar, needs_cuda

from ettcli import train as train_mod
from ettcli.errors import EttError, EttWarning
from ettcli.runs import RunFolder
from ettcli.ticket import read_ticket
from ettcli.train import (
    Hooks,
    LoopState,
    TrainSettings,
    backend_flags,
    resolve_device,
    resolve_precision,
    train_ticket,
)

WHEEL_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]  # a CUDA 13 wheel


# --- resume: the checkpoint as a GPU run loads it ------------------------------------------------------------
def test_a_checkpoint_loaded_for_another_device_restores_its_rng_state(tmp_path):
    """torch.load(map_location=device) moves every tensor, the CPU RNG state included; set_rng_state then
    refuses it (on CUDA: 'RNG state must be a torch.ByteTensor'). 'meta' stands in for the GPU here."""
    from ettcli.models import model_from_ticket

    ticket = make_ticket("cifar_resnet_8_4", 0.5)
    model = model_from_ticket(ticket)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    run = RunFolder(tmp_path / "run", {"t": 1})
    run.begin(fresh=True)
    torch.manual_seed(123)
    run.save_checkpoint(LoopState(step=7).checkpoint(model, opt, scaler, 1.0))
    expected = torch.rand(4)

    ck = run.load_checkpoint(torch.device("meta"))
    assert ck["rng_cpu"].device.type == "cpu" and ck["rng_cpu"].dtype == torch.uint8
    fresh = model_from_ticket(ticket)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    st = LoopState.restore(ck, fresh, fresh_opt, scaler)
    assert st.step == 7
    assert torch.equal(torch.rand(4), expected)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    momentum = [fresh_opt.state[p]["momentum_buffer"] for p in fresh.parameters()]
    assert all(m.device.type == "cpu" for m in momentum)


# --- the device preflight -------------------------------------------------------------------------------------
@pytest.fixture
def fake_gpu(monkeypatch):
    """A fake CUDA device: set its capability (per index) and the build's arch list."""

    def install(caps, archs=WHEEL_ARCHS, name="Tesla V100-SXM2-16GB"):
        caps = caps if isinstance(caps, dict) else {0: caps}
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(archs))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: caps[0 if i is None else i])

    return install


def test_a_gpu_the_build_has_no_kernels_for_is_refused_even_under_auto(fake_gpu):
    fake_gpu((7, 0))
    for choice in ("auto", "cuda"):
        with pytest.raises(EttError) as exc:
            resolve_device(choice)
        msg = str(exc.value)
        assert "\n" not in msg
        assert "Tesla V100" in msg and "sm_70" in msg and "sm_75" in msg  # what it is, what the build has
        assert "cu126" in msg and "--device cpu" in msg  # which build runs it, or what else to do
    assert resolve_device("cpu") == "cpu"


def test_supported_gpus_pass_the_preflight(fake_gpu):
    for cap in [(7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0), (12, 1)]:
        fake_gpu(cap)
        assert resolve_device("auto") == "cuda", cap
    fake_gpu((10, 3), archs=["sm_80", "sm_90", "compute_90"])  # newer than the build: PTX is compiled for it
    assert resolve_device("cuda") == "cuda"
    fake_gpu((10, 0), archs=["sm_80", "sm_90"])  # no PTX: no kernels
    with pytest.raises(EttError, match="newer PyTorch build"):
        resolve_device("cuda")


def test_cli_refuses_an_unsupported_gpu_with_one_line(fake_gpu, cli, ticket_file, tmp_path):
    from conftest import assert_user_error

    fake_gpu((6, 1), name="NVIDIA GeForce GTX 1080")
    r = cli("train", ticket_file(), "--data-root", tmp_path / "none", "--out", tmp_path / "run")
    assert_user_error(r, "GTX 1080", "sm_61", "not supported by this PyTorch build")
    assert not (tmp_path / "run").exists()


def test_auto_precision_follows_the_capability_of_this_process_gpu(fake_gpu):
    fake_gpu({0: (7, 5), 1: (9, 0)})
    assert resolve_precision("auto", "cuda", 0) == "fp16"
    assert resolve_precision("auto", "cuda", 1) == "bf16"  # LOCAL_RANK 1 asks its own GPU, not GPU 0
    fake_gpu((8, 0))
    assert resolve_precision("auto", "cuda", 0) == "bf16"


def test_explicit_bf16_below_sm80_is_kept_with_a_warning(fake_gpu):
    fake_gpu((7, 5))
    with pytest.warns(EttWarning, match="no native bf16"):
        assert resolve_precision("bf16", "cuda", 0) == "bf16"
    fake_gpu((8, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", "cuda", 0) == "bf16"
        assert resolve_precision("fp16", "cuda", 0) == "fp16"


# --- backend flags ------------------------------------------------------------------------------------------------
def test_tf32_is_set_through_the_new_api_alone_and_restored():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark)
    with backend_flags("cuda", deterministic=False):
        assert matmul.fp32_precision == "tf32" and conv.fp32_precision == "tf32"
        assert torch.backends.cudnn.benchmark
        conv.fp32_precision = "ieee"  # what code that wants exact fp32 does; reads must keep working
        assert conv.fp32_precision == "ieee"
    assert (matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark) == before


def test_deterministic_switch_is_on_during_training_only():
    assert not torch.are_deterministic_algorithms_enabled()
    with backend_flags("cuda", deterministic=True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


# --- real training on CIFAR-10 images -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpupath")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ETT_CACHE", str(base / "cache"))
        root = cifar_subset(tmp_path_factory.getbasetemp())
        ticket = base / "r8.safetensors"
        make_ticket("cifar_resnet_8_4", sparsity=0.8, seed=1).save(ticket)
        yield {"root": str(root), "ticket": ticket, "base": base}


def _settings(env, **kw):
    # 300 training images at batch 128: two full batches and a partial one of 44 per epoch
    return TrainSettings(data_root=env["root"], epochs=kw.pop("epochs", 2), batch_size=128, threads=1, **kw)


@pytest.fixture
def counted(monkeypatch):
    """Compile with dynamo's counting backend (graphs captured, then run as they are: no inductor on CPU)."""
    counter = CompileCounter()
    modes = []

    def compile_(module, mode):
        modes.append(mode)
        return torch.compile(module, backend=counter)

    monkeypatch.setattr(train_mod, "_compile", compile_)
    return counter, modes


@needs_cifar
@pytest.mark.data
def test_deterministic_run_trains_with_deterministic_kernels(env, tmp_path):
    seen = []
    hooks = Hooks(step=lambda s: seen.append(torch.are_deterministic_algorithms_enabled()))
    r = train_ticket(env["ticket"], _settings(env, epochs=1, deterministic=True), folder=tmp_path / "d", hooks=hooks)
    assert seen and all(seen) and not torch.are_deterministic_algorithms_enabled()
    assert r.summary["compile_seconds"] == 0.0


@needs_cifar
@pytest.mark.data
def test_compiled_step_keeps_one_graph_through_partial_batches_and_evaluation(env, tmp_path, counted):
    counter, modes = counted
    after_first = []
    hooks = Hooks(step=lambda s: after_first.append(counter.frame_count) if s == 1 else None)
    r = train_ticket(
        env["ticket"], _settings(env, compile=True, compile_mode="reduce-overhead"), folder=tmp_path / "c", hooks=hooks
    )
    assert modes == ["reduce-overhead"]
    assert after_first[0] >= 1
    assert counter.frame_count == after_first[0]  # no recompile for the batch of 44, no graph for evaluation
    s = r.summary
    assert s["compile_seconds"] > 0 and s["train_seconds"] > 0
    assert s["seconds"] >= s["compile_seconds"] + s["train_seconds"]

    # the same images every epoch as without compile: the partial batch trains too (eagerly), same weights
    plain = train_ticket(env["ticket"], _settings(env), folder=tmp_path / "e")
    got, want = read_ticket(r.folder / "final.safetensors"), read_ticket(plain.folder / "final.safetensors")
    for name, arr in want.arrays():
        assert np.array_equal(got.array(name), arr), name
    assert s["final_test_accuracy"] == plain.summary["final_test_accuracy"]


@needs_cifar
@pytest.mark.data
def test_one_worker_compiles_several_networks_in_turn(env, tmp_path, counted):
    """A study worker runs job after job in one process; each network gets its own compiled graph instead
    of exhausting dynamo's recompile limit (shrunk here to 1 so that the second network would reach it)."""
    import torch._dynamo.config as dyn

    counter, _ = counted
    # fail_on_recompile_limit_hit: a silent fall back to eager would raise
    with dyn.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        for i, arch in enumerate(["cifar_resnet_8_4", "cifar_resnet_14_4", "cifar_resnet_8_8"]):
            path = tmp_path / f"{arch}.safetensors"
            make_ticket(arch, sparsity=0.5).save(path)
            r = train_ticket(path, _settings(env, epochs=1, compile=True), folder=tmp_path / arch)
            assert r.summary["steps"] == 3
            assert counter.frame_count >= i + 1


def test_unknown_compile_mode_is_refused(cli, ticket_file, tmp_path):
    from conftest import assert_user_error

    r = cli("train", ticket_file(), "--compile", "--compile-mode", "fast", "--out", tmp_path / "run")
    assert_user_error(r, "compile mode fast", "reduce-overhead")


@needs_cifar
@pytest.mark.data
@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])],
)
def test_interrupted_then_resumed_run_is_bit_identical_under_deterministic(env, tmp_path, device):
    """Stop mid-epoch (a checkpoint at the step), resume in a fresh call, compare with an uninterrupted run.
    On a GPU this is the resume that crashed on the RNG state, and --deterministic makes it bit-identical."""
    from ettcli.train import Interrupted

    settings = _settings(env, deterministic=True, device=device)
    whole = train_ticket(env["ticket"], settings, folder=tmp_path / "whole")
    with pytest.raises(Interrupted) as exc:
        train_ticket(env["ticket"], settings, folder=tmp_path / "cut", hooks=Hooks(stop=lambda s: s == 4))
    assert exc.value.step == "1ep1it"  # 3 steps an epoch: mid-epoch
    resumed = train_ticket(env["ticket"], settings, folder=tmp_path / "cut")
    assert not resumed.already_finished and resumed.summary["device"].startswith(device)
    got, want = read_ticket(resumed.folder / "final.safetensors"), read_ticket(whole.folder / "final.safetensors")
    for name, arr in want.arrays():
        assert np.array_equal(got.array(name), arr), name
    assert resumed.summary["final_test_accuracy"] == whole.summary["final_test_accuracy"]


@needs_cuda
@needs_cifar
@pytest.mark.gpu
@pytest.mark.data
def test_gpu_run_compiled_with_cuda_graphs_and_partial_batches(env, tmp_path):
    """The real preflight passes on this GPU, and reduce-overhead (inductor, CUDA graphs) trains through
    partial last batches with pruned weights exactly zero."""
    assert resolve_device("auto") == "cuda"
    settings = _settings(env, device="cuda", compile=True, compile_mode="reduce-overhead")
    r = train_ticket(env["ticket"], settings, folder=tmp_path / "graphs")
    s = r.summary
    assert s["precision"] == resolve_precision("auto", "cuda", 0)
    assert s["compile_seconds"] > 0 and s["steps"] == 6 and np.isfinite(s["final_test_loss"])
    final = read_ticket(r.folder / "final.safetensors")
    for name, mask in final.masks.items():
        assert np.all(final.array(name)[~mask.array] == 0)


@needs_cifar
@pytest.mark.data
def test_ddp_wraps_the_model_before_it_is_compiled(env, tmp_path, monkeypatch):
    """Compiled around DDP, dynamo splits the graph at DDP's buckets so the gradient all-reduce overlaps the
    backward pass; DDP around a compiled model all-reduces after it. Rank 0 of two, in a one-process gloo
    group (every collective completes), is enough to see which wraps which."""
    import torch.distributed as dist

    wrapped = []

    def compile_(module, mode):
        wrapped.append(type(module).__name__)
        return torch.compile(module, backend=CompileCounter())

    monkeypatch.setattr(train_mod, "_compile", compile_)
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    dist.init_process_group("gloo", init_method=(tmp_path / "pg").as_uri(), rank=0, world_size=1)
    try:
        r = train_ticket(env["ticket"], _settings(env, epochs=1, device="cpu", compile=True), folder=tmp_path / "ddp")
    finally:
        dist.destroy_process_group()
    assert wrapped == ["DistributedDataParallel"]
    assert r.summary["world_size"] == 2 and r.summary["steps"] == 3
