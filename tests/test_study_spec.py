"""Study files: every bad file refused with its key before anything runs; the job graph and its keys."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, assert_user_error

from ettcli.study.graph import plan_jobs
from ettcli.study.spec import load_study

HAVE_METHODS = hasattr(__import__("ettcli.pruning", fromlist=["x"]), "METHODS")
needs_methods = pytest.mark.skipif(not HAVE_METHODS, reason="ett prune's methods are not in this build")

BASE = """\
name = "t"
dataset = "cifar10"
seeds = [0]
sources = ["cifar_resnet_14_4"]
targets = ["resnet-20"]

[train]
epochs = 1
batch_size = 50

[imp]
levels = 2
rewind = "2it"

[transfer]
levels = [1, 2]
stretch = ["append"]
"""


TWO = BASE.replace("seeds = [0]", "seeds = [0, 1]")


def write(tmp_path, text: str, name: str = "study.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# (what to change, fragments of the one-line refusal: the key and what was expected)
BAD = [
    ("colour = 1\n" + BASE, ["'colour'", "unknown key", "expected one of: name, dataset"]),
    (BASE + "colour = 1\n", ["'transfer.colour'", "unknown key", "expected one of: levels, stretch"]),
    (BASE.replace("[train]\n", "[train]\nepoch = 3\n"), ["'train.epoch'", "unknown key", "epochs"]),
    (BASE + "[trian]\nepochs = 1\n", ["'trian'", "unknown section"]),
    (BASE.replace('dataset = "cifar10"', 'dataset = "mnist"'), ["'dataset'", "cifar10, cifar100, imagenet"]),
    (BASE.replace('dataset = "cifar10"\n', ""), ["'dataset'", "missing"]),
    (BASE.replace("seeds = [0]", "seeds = []"), ["'seeds'", "non-empty list"]),
    (BASE.replace("seeds = [0]", "seeds = [0, 0]"), ["'seeds'", "distinct"]),
    (BASE.replace("seeds = [0]", 'seeds = ["a"]'), ["'seeds[0]'", "an integer"]),
    (BASE.replace("epochs = 1", 'epochs = "1"'), ["'train.epochs'", "a positive integer", "'1'"]),
    (BASE.replace("epochs = 1", "epochs = 0"), ["'train.epochs'", "a positive integer"]),
    (BASE.replace("epochs = 1", "epochs = true"), ["'train.epochs'", "a positive integer"]),
    (BASE.replace("[train]\n", "[train]\nlr = -1\n"), ["'train.lr'", "a positive number"]),
    (BASE.replace("[train]\n", '[train]\nprecision = "fp8"\n'), ["'train.precision'", "'fp32'"]),
    (BASE.replace("[train]\n", '[train]\nrecipe = "adam"\n'), ["'train.recipe'", "a registered training recipe"]),
    (BASE.replace("[train]\n", '[train]\ndevice = "cpu"\nprecision = "fp16"\n'), ["'train.precision'", "GPU"]),
    (BASE.replace("[train]\n", '[train]\nmilestones = "soon"\n'), ["'train.milestones'", "80ep,120ep"]),
    (BASE.replace("[train]\n", '[train]\ncompile_mode = "fast"\n'), ["'train.compile_mode'", "'reduce-overhead'"]),
    (BASE.replace('rewind = "2it"', 'rewind = "early"'), ["'imp.rewind'", "1000it"]),
    (BASE.replace("levels = 2\n", "levels = 2\nrate = 1.5\n"), ["'imp.rate'", "strictly between 0 and 1"]),
    (BASE.replace("levels = 2\n", 'levels = 2\nscope = "local"\n'), ["'imp.scope'", "'global' or 'layerwise'"]),
    (BASE.replace('["cifar_resnet_14_4"]', '["resnet_fifty"]'), ["'sources[0].arch'", "not an architecture name"]),
    (BASE.replace('["cifar_resnet_14_4"]', '["cifar_resnet_14_4", "cifar_vgg_16"]'), ["'sources[1]'", "family"]),
    (BASE.replace('["cifar_resnet_14_4"]', '["cifar_resnet_14_4", "cifar_resnet_20_8"]'), ["'sources[1]'", "width"]),
    (
        BASE.replace('["cifar_resnet_14_4"]', '[{arch = "cifar_resnet_14_4", depth = 3}]'),
        ["'sources[0].depth'", "unknown key"],
    ),
    (BASE.replace('["cifar_resnet_14_4"]', '["missing/r14.safetensors"]'), ["'sources[0].ticket'", "does not exist"]),
    (BASE.replace('["resnet-20"]', '["vgg-19"]'), ["'targets[0]'", "vgg"]),
    (BASE.replace('["resnet-20"]', "[[3, 3]]"), ["'targets[0]'", "stages"]),
    (BASE.replace('["resnet-20"]', '["resnet-20", "cifar_resnet_20_4"]'), ["'targets[1]'", "listed twice"]),
    (BASE.replace('["resnet-20"]', '["resnet-14"]'), ["'targets'", "nothing is transferred"]),
    (BASE.replace('["cifar_resnet_14_4"]', '["cifar_resnet_8_4"]'), ["'targets[0]'", "only block 0"]),
    (BASE.replace('["resnet-20"]', "[[3, 1, 3]]"), ["'targets[0]'", "lengthens some stages", "transfer.mappings"]),
    (BASE.replace("levels = [1, 2]", "levels = [1, 3]"), ["'transfer.levels'", "past the 2 IMP levels"]),
    (BASE.replace("levels = [1, 2]", "levels = [0]"), ["'transfer.levels[0]'", "1 or more"]),
    (BASE.replace('stretch = ["append"]', 'stretch = ["tail"]'), ["'transfer.stretch[0]'", "interpolate, append"]),
    (
        BASE + 'mappings = [{source = "cifar_resnet_14_4", target = "cifar_resnet_20_4", mapping = "0:0;1:2"}]\n',
        ["'transfer.mappings[0].mapping'"],
    ),  # fmt: skip
    (
        BASE + 'mappings = [{source = "r14", target = "cifar_resnet_20_4", mapping = "0:0"}]\n',
        ["'transfer.mappings[0].source'", "cifar_resnet_14_4"],
    ),  # fmt: skip
    (BASE + '[baselines]\nmethods = ["magic"]\n', ["'baselines.methods"]),
    (BASE + '[baselines]\nmatch = "sideways"\n', ["'baselines.match'", "'global' or 'layerwise'"]),
    (BASE + '[executor]\nkind = "kubernetes"\n', ["'executor.kind'", "'local' or 'slurm'"]),
    (BASE + "[executor]\njobs = 0\n", ["'executor.jobs'", "positive integer"]),
    (BASE + '[slurm]\ntime = "forever"\n', ["'slurm.time'", "HH:MM:SS"]),
    (BASE + '[slurm]\nmem = "lots"\n', ["'slurm.mem'", "32G"]),
    (BASE + "name = [\n", ["not valid TOML"]),
    (BASE + "[lmc]\n", ["'lmc'", "has one; add a seed"]),
    (TWO + '[lmc]\nmethods = ["imp"]\n', ["'lmc.methods[0]'", "one of ett", "imp.targets = true"]),
    (TWO + '[lmc]\nmethods = ["snip"]\n', ["'lmc.methods[0]'", "one of ett"]),
    (TWO + "[lmc]\nmethods = []\n", ["'lmc.methods'", "non-empty list"]),
    (TWO + "[lmc]\nlevels = [3]\n", ["'lmc.levels[0]'", "transferred levels 1, 2"]),
    (TWO + "[lmc]\nseeds = [0, 5]\n", ["'lmc.seeds[1]'", "study's seeds 0, 1"]),
    (TWO + "[lmc]\nseeds = [0]\n", ["'lmc.seeds'", "two distinct seeds"]),
    (TWO + "[lmc]\nalphas = 1\n", ["'lmc.alphas'", "2 or more"]),
    (TWO + '[lmc]\nbn_data = "raw"\n', ["'lmc.bn_data'", "'augmented' or 'plain'"]),
    (TWO + "[lmc]\nbarrier = 1\n", ["'lmc.barrier'", "unknown key", "methods, levels"]),
]


@pytest.mark.parametrize("text,fragments", BAD, ids=[f"bad{i:02d}" for i in range(len(BAD))])
def test_bad_study_files_are_refused_with_their_key(cli, tmp_path, text, fragments):
    path = write(tmp_path, text)
    r = cli("study", "run", path, "--dry-run", "--out", tmp_path / "out")
    assert_user_error(r, str(path), *fragments)
    assert not (tmp_path / "out").exists()  # refused before anything was written


@needs_methods
def test_baselines_matched_to_imp_need_imp_on_the_targets(cli, tmp_path):
    path = write(tmp_path, BASE + '[baselines]\nmethods = ["magnitude"]\nlike = "imp"\n')
    assert_user_error(cli("study", "run", path, "--dry-run"), "'baselines.like'", "imp.targets = true")


def test_missing_study_file_and_bad_options(cli, tmp_path):
    assert_user_error(cli("study", "run", tmp_path / "none.toml"), "no such study file", "ett study init")
    path = write(tmp_path, BASE)
    assert_user_error(cli("study", "run", path, "--jobs", "0"), "--jobs 0")
    assert_user_error(cli("study", "run", path, "--executor", "cloud"), "--executor cloud", "local or slurm")
    assert_user_error(cli("study", "run", path, "--dry-run", "--emit"), "--dry-run or --emit")
    assert_user_error(cli("study", "run", path, "--calibrate"), "--calibrate", "add --dry-run")
    assert not (tmp_path / "t").exists()  # nothing ran
    data = write(tmp_path, BASE.replace('name = "t"', 'name = "t"\ndata_root = "nowhere"'), "d.toml")
    assert_user_error(cli("study", "run", data), "'data_root'", "does not exist")


def test_a_good_file_plans_the_graph_of_the_paper(tmp_path):
    text = BASE.replace("seeds = [0]", "seeds = [0, 1]").replace("levels = 2\n", "levels = 2\ntargets = true\n")
    study = load_study(write(tmp_path, text))
    jobs = plan_jobs(study)
    kinds = [j.kind for j in jobs.values()]
    # IMP on the source and on the target (2 levels each), 2 transfers, dense per seed,
    # ETT trainings per level and seed, IMP tickets of the target for the seed IMP did not train with
    assert kinds.count("imp") == 4 and kinds.count("transfer") == 2 and kinds.count("dense") == 2
    assert kinds.count("train") == 2 * 2 + 2 * 1
    keys = list(jobs)
    for i, job in enumerate(jobs.values()):  # plan order is a topological order
        assert all(keys.index(d) < i for d in job.deps)
    level2 = next(j for j in jobs.values() if j.kind == "imp" and j.spec["level"] == 2)
    assert len(level2.deps) == 1 and jobs[level2.deps[0]].spec["level"] == 1  # IMP levels are sequential


def test_adding_a_seed_keeps_every_key_and_adds_only_trainings(tmp_path):
    before = plan_jobs(load_study(write(tmp_path, BASE, "a.toml")))
    after = plan_jobs(load_study(write(tmp_path, BASE.replace("seeds = [0]", "seeds = [0, 7]"), "b.toml")))
    assert set(before) < set(after)
    assert {after[k].kind for k in set(after) - set(before)} == {"train", "dense"}
    changed = plan_jobs(load_study(write(tmp_path, BASE.replace("epochs = 1", "epochs = 2"), "c.toml")))
    assert not set(changed) & set(before)  # every training changes, and so does every ticket made from them


@needs_methods
def test_job_names_have_no_empty_fields_and_a_folder_named_the_earlier_way_is_kept(tmp_path):
    from ettcli.study.graph import job_key

    text = (
        TWO.replace("levels = 2\n", "levels = 2\ntargets = true\n")
        + '[baselines]\nmethods = ["random"]\nlike = "imp"\n'
    )
    path = write(tmp_path, text)
    jobs = plan_jobs(load_study(path))
    for key in jobs:
        readable = key.split("-", 1)[1].rsplit("-", 1)[0]
        assert "" not in readable.split("-"), key  # no 'random---L01', no trailing '-'
    # a study folder from before, with the baseline's job under its old name ('...-like-imp-'): kept, not redone
    prune = next(j for j in jobs.values() if j.kind == "prune")
    readable = prune.key.split("-", 1)[1].rsplit("-", 1)[0]
    old = job_key("prune", readable + "-", {"kind": "prune", **prune.spec})
    (load_study(path).out / "jobs" / old).mkdir(parents=True)
    again = plan_jobs(load_study(path))
    assert old in again and prune.key not in again
    assert [j for j in again.values() if j.kind == "train" and old in j.deps]  # its trainings follow it


def test_an_lmc_section_adds_one_job_per_chosen_ticket_on_its_two_trainings(tmp_path):
    text = TWO.replace("levels = 2\n", "levels = 2\ntargets = true\n")
    before = plan_jobs(load_study(write(tmp_path, text, "a.toml")))
    study = load_study(write(tmp_path, text + '[lmc]\nmethods = ["imp", "ett"]\nlevels = [2]\n', "b.toml"))
    after = plan_jobs(study)
    assert set(before) < set(after)
    lmc = [after[k] for k in set(after) - set(before)]
    assert {j.kind for j in lmc} == {"lmc"}
    assert sorted(j.row["method"] for j in lmc) == ["ett", "imp"] and {j.row["level"] for j in lmc} == {2}
    imp = next(j for j in lmc if j.row["method"] == "imp")
    first, second = (after[d] for d in imp.deps)
    # IMP's own level-2 training is the seed-0 copy; the seed-1 copy is the ticket's extra training
    assert (
        first.kind == "imp" and first.spec["level"] == 2 and imp.spec["a_path"].endswith("level_02/final.safetensors")
    )
    assert second.kind == "train" and second.row["seed"] == 1 and second.spec["ticket"] == first.key
    ett = next(j for j in lmc if j.row["method"] == "ett")
    assert [after[d].row["seed"] for d in ett.deps] == [0, 1]
    assert len({after[d].spec["ticket"] for d in ett.deps}) == 1


def test_init_writes_an_example_that_plans(cli, tmp_path):
    out = tmp_path / "mine.toml"
    r = cli("study", "init", "--example", "cifar10-resnet", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert out.read_text() == (ROOT / "studies" / "cifar10-resnet.toml").read_text()
    assert "#" in out.read_text()  # commented
    assert_user_error(cli("study", "init", "--example", "cifar10-resnet", "-o", out), "exists", "--force")
    assert_user_error(cli("study", "init", "--example", "mnist"), "unknown example", "cifar10-mini")


@needs_methods
@pytest.mark.parametrize("name", ["cifar10-resnet", "imagenet-resnet", "cifar10-mini", "cifar10-vit-mini"])
def test_shipped_studies_load_and_plan(name):
    study = load_study(ROOT / "studies" / f"{name}.toml")
    jobs = plan_jobs(study)
    assert {"imp", "train", "transfer"} <= {j.kind for j in jobs.values()}


def test_the_study_commands_do_not_import_torch(tmp_path):
    path = write(tmp_path, BASE)
    code = (
        "import sys\n"
        "from ettcli.study.spec import load_study\n"
        "from ettcli.study.graph import plan_jobs\n"
        f"plan_jobs(load_study({str(path)!r}))\n"
        "import ettcli.commands.study\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'matplotlib'))\n"
        "print(bad)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert r.stdout.strip() == "[]", r.stdout


def test_wall_time_estimate_follows_the_graph(tmp_path):
    from ettcli.study.costs import estimate

    study = load_study(write(tmp_path, BASE.replace("seeds = [0]", "seeds = [0, 1, 2]")))
    jobs = plan_jobs(study)
    ips = {"cifar_resnet_14_4": 100.0, "cifar_resnet_20_4": 50.0}
    one = estimate(study, tmp_path / "out", jobs, set(), ips, slots=1)
    many = estimate(study, tmp_path / "out", jobs, set(), ips, slots=100)
    assert one["wall_hours"] == pytest.approx(one["total"]["hours"])  # one slot: everything in a row
    chain = sum(j.cost["images"] + j.cost["eval_images"] / 3 for j in jobs.values() if j.kind == "imp") / 100 / 3600
    longest_after = max(j.cost["images"] + j.cost["eval_images"] / 3 for j in jobs.values() if j.kind == "train")
    assert many["wall_hours"] == pytest.approx(chain + longest_after / 50 / 3600)  # the IMP chain, then one training
    assert one["total"]["flops"] == many["total"]["flops"] > 0


class _OneSlot:
    """An executor with one slot that finishes each job as soon as it is polled (nothing runs)."""

    def __init__(self):
        self.submitted: list[str] = []
        self.current: str | None = None

    def free(self) -> int:
        return 0 if self.current else 1

    def running(self) -> set[str]:
        return {self.current} if self.current else set()

    def submit(self, keys: list[str]) -> None:
        assert len(keys) == 1 and self.current is None
        self.current = keys[0]
        self.submitted.append(keys[0])

    def poll(self):
        done, self.current = self.current, None
        return [(done, "done", None)] if done else []

    def stop(self) -> None:
        pass


def test_the_driver_takes_ready_jobs_in_plan_order_as_the_estimate_assumes(tmp_path):
    from ettcli.study.driver import run_study

    study = load_study(write(tmp_path, BASE.replace("levels = [1, 2]", "levels = [2]")))
    jobs = plan_jobs(study)
    ex = _OneSlot()
    run_study(study, tmp_path / "out", executor=ex, poll=0)
    kinds = [jobs[k].kind for k in ex.submitted]
    # level 2 of IMP became ready after the dense training did, and still goes first: it is earlier in the plan
    # (the transfer then fails in the driver for want of a real ticket, so its training never starts)
    assert kinds == ["imp", "imp", "dense"], kinds
    order = list(jobs)
    assert ex.submitted == sorted(ex.submitted, key=order.index)


def test_the_eta_schedules_the_jobs_left_at_the_measured_speed(tmp_path):
    from ettcli.study.costs import Eta, estimate

    study = load_study(write(tmp_path, TWO))
    jobs = plan_jobs(study)
    out = tmp_path / "out"
    ips = {"cifar_resnet_14_4": 100.0, "cifar_resnet_20_4": 50.0}
    eta = Eta(study, out, jobs, slots=1, threads=1)
    eta.calibrated = ips
    clock = [0.0]
    eta._clock = lambda: clock[0]
    assert eta.seconds() == pytest.approx(estimate(study, out, jobs, set(), ips, slots=1)["wall_hours"] * 3600)
    first = next(iter(jobs))  # IMP level 1: the first job, on the critical path
    full = eta.seconds()
    eta.event("started", first)
    clock[0] = 30.0
    assert eta.seconds() == pytest.approx(full - 30)  # the running job counts for what is left of it
    eta.event("done", first)
    after = estimate(study, out, jobs, {first}, ips, slots=1)["wall_hours"] * 3600
    assert eta.seconds() == pytest.approx(after) and after < full - 30
    # a finished training's measured speed replaces the calibration for its architecture
    dense = next(k for k, j in jobs.items() if j.kind == "dense" and j.cost["arch"] == "cifar_resnet_20_4")
    run = out / "jobs" / dense / "run"
    run.mkdir(parents=True)
    (run / "summary.json").write_text('{"images_per_second": 25.0}')
    eta.event("done", dense)
    assert eta.throughput() == {"cifar_resnet_14_4": 100.0, "cifar_resnet_20_4": 25.0}
    slower = estimate(study, out, jobs, {first, dense}, {**ips, "cifar_resnet_20_4": 25.0}, slots=1)
    assert eta.seconds() == pytest.approx(slower["wall_hours"] * 3600)
    eta.calibrated = {}
    eta.samples.clear()
    assert eta.seconds() is None  # no speed known for an architecture: no estimate


def test_compile_mode_and_deterministic_reach_the_training_settings_only_when_given(tmp_path):
    plain = load_study(write(tmp_path, BASE))
    assert "compile_mode" not in plain.train and "deterministic" not in plain.train  # jobs keep their names
    text = BASE.replace(
        "[train]\n", '[train]\ncompile = true\ncompile_mode = "reduce-overhead"\ndeterministic = true\n'
    )
    study = load_study(write(tmp_path, text, "s2.toml"))
    assert study.train["compile_mode"] == "reduce-overhead" and study.train["deterministic"] is True


def test_every_job_has_its_kinds_typed_spec_and_its_job_file_reads_back_as_it(cli, tmp_path):
    import json

    from ettcli.study.driver import write_jobs
    from ettcli.study.jobs import SPECS, spec_of
    from ettcli.study.runner import JOB, job_folder

    text = (
        TWO.replace("levels = 2\n", "levels = 2\ntargets = true\n") + '[lmc]\nmethods = ["imp", "ett"]\nlevels = [2]\n'
    )
    study = load_study(write(tmp_path, text))
    jobs = plan_jobs(study)
    assert {j.kind for j in jobs.values()} == {"imp", "transfer", "train", "dense", "lmc"}
    write_jobs(study, study.out, jobs)
    for key, job in jobs.items():
        assert type(job.spec) is SPECS[job.kind]
        assert spec_of(json.loads((job_folder(study.out, key) / JOB).read_text())) == job.spec
    # a job file whose spec lacks a field is refused in one line, before the job starts
    key = next(k for k, j in jobs.items() if j.kind == "dense")
    path = job_folder(study.out, key) / JOB
    damaged = json.loads(path.read_text())
    del damaged["spec"]["init_seed"]
    path.write_text(json.dumps(damaged))
    r = cli("study", "job", study.out, key)
    assert_user_error(r, str(path), "not a dense job's spec", "init_seed", "rerun 'ett study run'")
    assert not (job_folder(study.out, key) / "attempts.jsonl").exists()


def test_a_study_names_a_recipe_that_its_jobs_carry(tmp_path):
    study = load_study(write(tmp_path, BASE.replace("[train]\n", '[train]\nrecipe = "vit"\n')))
    assert study.train["recipe"] == "vit"
    jobs = plan_jobs(study)
    imp = next(j for j in jobs.values() if j.kind == "imp")
    assert imp.spec["settings"]["recipe"] == "vit"  # in every job's identity and TrainSettings
