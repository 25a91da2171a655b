"""A stop (SIGTERM, or a stop request) is honoured at any point: during a training's last step and final test
pass, between IMP levels, before LMC measures anything, and by the study driver, whose running jobs either
stop at a checkpoint or had finished (and are said to have). Everything resumes to the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
from conftest import make_ticket
from train_util import cifar_subset, needs_cifar

from ettcli.ticket import read_ticket

pytestmark = [needs_cifar, pytest.mark.data]
STEPS = 6  # 300 training images at batch 50: 6 steps an epoch, 1 epoch


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("stops")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ETT_CACHE", str(base / "cache"))
        mp.setenv("ETT_RUNS", str(base / "runs"))
        root = cifar_subset(tmp_path_factory.getbasetemp())
        ticket = base / "r8_80.safetensors"
        make_ticket("cifar_resnet_8_4", sparsity=0.8, seed=1).save(ticket)
        yield {"base": base, "root": root, "ticket": ticket}


def _settings(env, **kw):
    from ettcli.train import TrainSettings

    return TrainSettings(data_root=str(env["root"]), epochs=1, batch_size=50, **kw)


def _sigterm_at(step: int):
    """Hooks that send this process SIGTERM right after training step ``step`` (the handler is the loop's)."""
    from ettcli.train import Hooks

    return Hooks(step=lambda s: os.kill(os.getpid(), signal.SIGTERM) if s == step else None)


def _same(a, b) -> bool:
    wa, wb = dict(read_ticket(a).arrays()), dict(read_ticket(b).arrays())
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_a_signal_in_the_last_step_stops_training_and_the_rerun_finishes_it(env):
    from ettcli.train import Interrupted, train_ticket

    ref = train_ticket(env["ticket"], _settings(env), folder=env["base"] / "train-ref")
    out = env["base"] / "train-stopped"
    with pytest.raises(Interrupted) as info:
        train_ticket(env["ticket"], _settings(env), folder=out, hooks=_sigterm_at(STEPS))
    assert info.value.signum == signal.SIGTERM and info.value.step == "1ep"
    assert (out / "checkpoint.pt").is_file() and not (out / "final.safetensors").exists()
    again = train_ticket(env["ticket"], _settings(env), folder=out)  # resumes: nothing left to train
    assert not again.already_finished
    assert _same(ref.folder / "final.safetensors", out / "final.safetensors")
    assert again.summary["final_test_accuracy"] == ref.summary["final_test_accuracy"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_stop_request_at_the_last_step_is_not_dropped(env):
    from ettcli.train import Hooks, Interrupted, train_ticket

    out = env["base"] / "train-requested"
    with pytest.raises(Interrupted) as info:
        train_ticket(env["ticket"], _settings(env), folder=out, hooks=Hooks(stop=lambda s: s == STEPS))
    assert info.value.signum is None and not (out / "final.safetensors").exists()


def test_a_signal_in_a_levels_last_step_ends_imp_there_and_the_rerun_equals_an_uninterrupted_run(env):
    from ettcli.lottery import ImpSpec, imp
    from ettcli.train import Hooks, Interrupted

    spec = ImpSpec(rewind="2it")
    ref = env["base"] / "imp-ref"
    imp("cifar_resnet_8_4", _settings(env), levels=2, out=ref, spec=spec)
    out = env["base"] / "imp-stopped"
    with pytest.raises(Interrupted) as info:
        imp("cifar_resnet_8_4", _settings(env), levels=2, out=out, spec=spec,
            hooks_for=lambda level: _sigterm_at(STEPS) if level == 1 else Hooks())  # fmt: skip
    assert info.value.signum == signal.SIGTERM and info.value.folder == out / "level_01"
    assert not (out / "level_02").exists()  # the next level never started
    assert (out / "level_00" / "final.safetensors").is_file()  # the finished level is kept
    rows = imp("cifar_resnet_8_4", _settings(env), levels=2, out=out, spec=spec)
    assert [r["already_finished"] for r in rows] == [True, False, False]
    for level in range(3):
        for f in ("ticket.safetensors", "final.safetensors"):
            assert _same(ref / f"level_{level:02d}" / f, out / f"level_{level:02d}" / f), (level, f)


def test_a_signal_while_lmc_trains_its_first_copy_stops_before_the_second(env):
    from ettcli.lmc import run_lmc
    from ettcli.train import Hooks, Interrupted

    out = env["base"] / "lmc"
    kw = {"alphas": 3, "bn_batches": 2, "train_images": 100, "out": out}
    runs = env["base"] / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    with pytest.raises(Interrupted):
        run_lmc(env["ticket"], _settings(env), hooks_for=lambda seed: _sigterm_at(STEPS) if seed == 0 else Hooks(),
                **kw)  # fmt: skip
    made = set(runs.iterdir()) - before
    assert len(made) == 1 and not (out / "lmc.json").exists()  # the second copy never started
    record = run_lmc(env["ticket"], _settings(env), **kw)
    assert len(record["test"]["error"]) == 3 and (out / "lmc.json").is_file()


def test_the_driver_says_which_running_jobs_had_finished_when_it_is_stopped(env):
    """A job finishes in its worker, then the driver is interrupted before it has collected it: the job is
    reported (and logged) as finished, not as stopped at a checkpoint, and is not run again."""
    from test_study_run import study_text

    from ettcli.study.driver import STUDY_LOG, StudyInterrupted, run_study
    from ettcli.study.executors import LocalExecutor
    from ettcli.study.runner import RESULT, job_folder
    from ettcli.study.spec import load_study

    path = env["base"] / "s.toml"
    path.write_text(study_text(env["root"], methods="[]", levels=(1,)))
    study = load_study(path)
    root = env["base"] / "s"
    seen = []

    def on_event(event, counts):
        if event.kind != "started":
            return
        seen.append(event.job.key)
        result = job_folder(root, event.job.key) / RESULT
        deadline = time.monotonic() + 300
        while not result.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        raise KeyboardInterrupt

    with pytest.raises(StudyInterrupted) as info:
        run_study(study, root, LocalExecutor(root, 1), on_event=on_event)
    assert info.value.finished == seen[:1] and info.value.stopped == []
    log = (root / STUDY_LOG).read_text()
    assert f"done {seen[0]}" in log and "interrupted" not in log
    events = [json.loads(x)["event"] for x in (job_folder(root, seen[0]) / "attempts.jsonl").read_text().splitlines()]
    assert events == ["start", "done"]
