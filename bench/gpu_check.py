"""One-command GPU check: the CUDA tests, ``ett train``'s loop against a plain loop, study throughput, a real training.

On a machine with one GPU, within about 8 minutes (``--budget``; a part that would not fit is skipped), in the
order 1, 2, 5, 3, 4 (the training first: its 160-epoch projection matters most):

1. **environment**: torch, CUDA, cuDNN and driver versions, the GPU, its capability against the build's
   arch list (the preflight ``ett train`` runs), the precision ``auto`` picks;
2. **tests**: the tests marked ``gpu`` (among them: stop mid-epoch, resume on the GPU, bit-identical under
   ``--deterministic``), with the CIFAR-10 copy handed to them through ``$ETT_TEST_CIFAR``;
3. **loop**: ``ett train`` (through ``train_ticket``, so cuDNN autotuning and TF32 are set as in a real run)
   on a CIFAR ResNet-20, eager, compiled and compiled with CUDA graphs (``reduce-overhead``), against a plain
   open_lth-style loop (PIL transforms in a DataLoader, fp32) in the same run; images/s of the second epoch,
   compile seconds apart;
4. **study**: the aggregate training throughput of 1, 4 and 8 ResNet-20 jobs sharing the GPU through
   ``ett study run``'s local executor (``--jobs N --jobs-per-gpu N``), with MPS's state;
5. **training**: a short real training of a dense CIFAR ResNet-20 on the full CIFAR-10 copy (``--epochs``,
   the recipe's schedule compressed to that length), its accuracy, and the 160-epoch wall time it implies
   against the 3-minute goal (``--epochs 160`` trains the whole recipe instead).

Without a GPU it runs the CPU parts (environment; the GPU-path tests that run on a CPU; the loop
comparison, eager, on a few thousand images) and lists every GPU part as skipped. It writes
``gpu_check.json`` and ``gpu_check.md`` into ``--out``.

    python bench/gpu_check.py                          # data: $ETT_DATA, else ../shared/data
    python bench/gpu_check.py --data .data/cifar10     # train/ and test/ folders, or the folder of cifar10-jpeg.tar.gz
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARBALL = "cifar10-jpeg.tar.gz"
GOAL_SECONDS = 180  # CIFAR ResNet-20, 160 epochs


class Check:
    """The parts' results, the time budget, and the two reports."""

    def __init__(self, budget: float, out: Path):
        self.t0, self.budget, self.out = time.monotonic(), budget, out
        self.parts: list[dict] = []

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def part(self, name: str, fn, *, gpu: bool, have_gpu: bool, needs: float = 0.0, **kw) -> dict | None:
        if gpu and not have_gpu:
            return self._add(name, "skipped", "GPU part: no CUDA device here")
        if needs and self.left() < needs:
            return self._add(name, "skipped", f"time budget: about {needs:.0f} s needed, {self.left():.0f} s left")
        print(f"--- {name}", flush=True)
        t = time.monotonic()
        try:
            data = fn(**kw)
        except Exception as exc:  # one part failing must not hide the others' results
            return self._add(name, "failed", f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}")
        return self._add(name, "ran", None, data, time.monotonic() - t)

    def _add(self, name, status, reason, data=None, seconds=None) -> dict:
        row = {"part": name, "status": status, "reason": reason, "seconds": seconds, "data": data or {}}
        self.parts.append(row)
        print(f"{name}: {status}" + (f" ({reason})" if reason else f" in {seconds:.0f} s"), flush=True)
        return row

    def write(self, env: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        report = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), **env}
        report["parts"] = self.parts
        (self.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(report))


# --- data ------------------------------------------------------------------------------------------------------
def find_data(arg: str | None, tmp: Path) -> tuple[Path | None, Path | None, str]:
    """(image folders for training, what the tests read, a description); Nones when there is no copy."""
    where = Path(arg or os.environ.get("ETT_DATA") or ROOT.parent / "shared" / "data").expanduser()
    tarball = where if where.is_file() else where / TARBALL
    if (where / "train").is_dir() and (where / "test").is_dir():
        return where, where, f"image folders in {where}"
    if tarball.is_file():
        t = time.monotonic()
        with tarfile.open(tarball, "r:gz") as tar:
            tar.extractall(tmp / "cifar10", filter="data")
        return tmp / "cifar10", tarball, f"{tarball}, extracted in {time.monotonic() - t:.1f} s"
    return None, None, f"no CIFAR-10 copy at {where} (give --data or $ETT_DATA)"


# --- 1. environment --------------------------------------------------------------------------------------------
def environment() -> dict:
    import torch

    from ettcli.errors import EttError
    from ettcli.train import default_threads, resolve_device, resolve_precision

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores_usable": default_threads(),
    }
    try:
        env["device"] = resolve_device("auto")
        env["precision_auto"] = resolve_precision("auto", env["device"], 0 if env["device"] == "cuda" else None)
    except EttError as exc:
        env["device"], env["preflight_refused"] = "refused", str(exc)
    if not torch.cuda.is_available():
        env["gpu"] = "none (torch.cuda.is_available() is False)"
    else:
        cap = torch.cuda.get_device_capability(0)
        env.update(
            gpu=torch.cuda.get_device_name(0),
            capability=f"{cap[0]}.{cap[1]}",
            arch_list=" ".join(torch.cuda.get_arch_list()),
            cudnn=torch.backends.cudnn.version(),
            gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        )
        smi = shutil.which("nvidia-smi")
        if smi:
            q = "--query-gpu=driver_version,mig.mode.current,compute_mode"
            r = subprocess.run([smi, q, "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            env["driver"], env["mig_mode"], env["compute_mode"] = [
                x.strip() for x in (r.stdout.splitlines() or ["?,?,?"])[0].split(",")
            ][:3]
        from ettcli.study.executors import mps_running

        env["mps_daemon"] = mps_running()
    return env


# --- 2. tests --------------------------------------------------------------------------------------------------
def tests(test_data: Path | None, gpu_run: bool, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if test_data is not None:
        env["ETT_TEST_CIFAR"] = str(test_data)
    if gpu_run:
        select = ["-m", "gpu", "tests/test_train.py", "tests/test_train_gpu_path.py"]
    else:  # the GPU path's checks that run on a CPU
        select = ["-m", "not gpu and not slow", "tests/test_train_gpu_path.py", "tests/test_study_gpus.py"]
        env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *select]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [x for x in p.stdout.splitlines() if x.strip()]
    tail = lines[-1] if lines else p.stderr[-300:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", tail)}
    if p.returncode not in (0, 5) or counts.get("failed") or counts.get("error") or counts.get("errors"):
        failed = [x for x in lines if x.startswith(("FAILED", "ERROR"))]
        raise RuntimeError(f"pytest exit {p.returncode}: {tail}; {'; '.join(failed[:5])}")
    skipped = [x for x in lines if x.startswith("SKIPPED")]
    return {"command": " ".join(cmd[1:]), "summary": tail, **counts, "skipped_reasons": skipped[:10]}


# --- 3. loop ---------------------------------------------------------------------------------------------------
def loop(folder: Path, tmp: Path, device: str, images: int, modes: list[str]) -> dict:
    """ett train (train_ticket) eager and compiled, and the plain loop, on the same number of images."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from train_throughput import plain_loop

    from ettcli.arch import parse_arch
    from ettcli.data import get_dataset, load_memory_dataset
    from ettcli.models import init_ticket
    from ettcli.pruning import magnitude_masks
    from ettcli.train import TrainSettings, train_ticket

    arch = "cifar_resnet_20"
    ticket = init_ticket(parse_arch(arch), seed=0)
    ticket = ticket.with_masks(magnitude_masks(ticket, 0.8))
    rows = []
    threads = None if device == "cuda" else 1
    for mode in modes:  # "eager" or a compile mode
        settings = TrainSettings(
            data_root=str(folder),
            epochs=2,
            subset=images,
            device=device,
            threads=threads,
            compile=mode != "eager",
            compile_mode="default" if mode == "eager" else mode,
        )
        res = train_ticket(ticket, settings, folder=tmp / f"loop-{mode}")
        metrics = [json.loads(x) for x in (res.folder / "metrics.jsonl").read_text().splitlines()]
        s = res.summary
        rows.append(
            {
                "loop": f"ett train, {mode}",
                "precision": s["precision"],
                "images_per_second": metrics[-1]["images_per_second"],
                "compile_seconds": s["compile_seconds"],
                "train_seconds": s["train_seconds"],
                "seconds": s["seconds"],
            }
        )
        print(f"  {rows[-1]}", flush=True)
    data = load_memory_dataset(get_dataset("cifar10"), folder)
    x, y = data.train_x[:images], data.train_y[:images]
    workers = 0 if device == "cpu" else min(8, os.cpu_count() or 1)
    if device == "cpu":
        torch.set_num_threads(1)
    rate = plain_loop(arch, x, y, device, workers)
    rows.append({"loop": f"plain open_lth-style, {workers} workers", "precision": "fp32", "images_per_second": rate})
    print(f"  {rows[-1]}", flush=True)
    for r in rows:
        r["vs_plain"] = r["images_per_second"] / rate
    return {"arch": f"{arch} (80% sparse)", "device": device, "images": images, "batch": 128, "rows": rows}


# --- 4. study --------------------------------------------------------------------------------------------------
STUDY = """name = "gpu-check-{n}"
dataset = "cifar10"
data_root = "{root}"
seeds = {seeds}
dense = true
sources = ["cifar_resnet_20"]
targets = ["resnet-14"]
[train]
epochs = 2
subset = {subset}
device = "cuda"
[imp]
levels = 1
rewind = "0it"
[transfer]
levels = [1]
[executor]
kind = "local"
"""


def study(folder: Path, tmp: Path, counts: list[int], subset: int, left) -> dict:
    """Aggregate images/s of N ResNet-20-family trainings sharing one GPU through ``ett study run``."""
    rows, note = [], ""
    for n in counts:
        timeout = left() - 10
        if timeout < 45:
            note = f"; {n} jobs per GPU and more skipped: time budget"
            break
        base = tmp / f"study-{n}"
        base.mkdir()
        spec = base / "study.toml"
        spec.write_text(STUDY.format(n=n, root=folder, seeds=list(range(n)), subset=subset))
        cmd = [sys.executable, "-m", "ettcli", "study", "run", str(spec), "--out", str(base / "out")]
        cmd += ["--jobs", str(n), "--jobs-per-gpu", str(n)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ETT_RUNS": str(base / "runs")}
        t = time.monotonic()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.monotonic() - t
        if p.returncode != 0:
            raise RuntimeError(f"ett study run with {n} jobs per GPU: exit {p.returncode}: {p.stderr.strip()[-300:]}")
        summaries = [json.loads(f.read_text()) for f in (base / "out").rglob("summary.json")]
        images = sum(s["steps"] * 128 for s in summaries)
        train_s = sum(s["train_seconds"] for s in summaries)
        rows.append(
            {
                "jobs_per_gpu": n,
                "trainings": len(summaries),
                "wall_seconds": wall,
                "images": images,
                "aggregate_images_per_second": images / wall,
                "mean_job_images_per_second": images / train_s if train_s else None,
            }
        )
        print(f"  {rows[-1]}", flush=True)
    return {
        "rows": rows,
        "note": "aggregate: every training's images over the study's wall time (start-up included)" + note,
    }


# --- 5. training -----------------------------------------------------------------------------------------------
def training(folder: Path, tmp: Path, epochs: int, compile_mode: str) -> dict:
    from ettcli.arch import parse_arch
    from ettcli.models import init_ticket
    from ettcli.train import TrainSettings, train_ticket

    ticket = init_ticket(parse_arch("cifar_resnet_20"), seed=0)
    settings = TrainSettings(
        data_root=str(folder), epochs=epochs, device="cuda", compile=compile_mode != "eager", compile_mode=compile_mode
    )
    t = time.monotonic()
    res = train_ticket(ticket, settings, folder=tmp / "training")
    wall = time.monotonic() - t
    s = res.summary
    per_epoch = (s["seconds"] - s["compile_seconds"]) / epochs
    full = s["compile_seconds"] + 160 * per_epoch
    return {
        "arch": "cifar_resnet_20 (dense)",
        "epochs": epochs,
        "compile_mode": compile_mode,
        "precision": s["precision"],
        "test_accuracy": s["final_test_accuracy"],
        "wall_seconds": wall,
        "compile_seconds": s["compile_seconds"],
        "train_seconds": s["train_seconds"],
        "seconds_per_epoch_with_evaluation": per_epoch,
        "images_per_second": s["images_per_second"],
        "projected_160_epoch_seconds": full,
        "goal_seconds": GOAL_SECONDS,
        "meets_goal": full <= GOAL_SECONDS,
    }


# --- report ----------------------------------------------------------------------------------------------------
def markdown(r: dict) -> str:
    env = r["environment"]
    out = [f"# ett GPU check, {r['date']}", "", f"Command: `{r['command']}`", ""]
    out += ["## Environment", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in env.items()]
    out += ["", f"Data: {r['data']}", "", "## Parts", "", "| part | status | seconds | note |", "|---|---|---:|---|"]
    for p in r["parts"]:
        secs = f"{p['seconds']:.0f}" if p["seconds"] is not None else ""
        note = p["reason"] or p["data"].get("summary", "")
        out.append(f"| {p['part']} | {p['status']} | {secs} | {note} |")
    for p in r["parts"]:
        d = p["data"]
        if p["status"] != "ran" or not d:
            continue
        if p["part"] == "loop":
            out += ["", f"## Loop: {d['arch']} on {d['device']}, {d['images']} images, batch {d['batch']}", ""]
            out += ["| loop | precision | images/s (2nd epoch) | vs plain | compile s |", "|---|---|---:|---:|---:|"]
            for x in d["rows"]:
                c = f"{x['compile_seconds']:.1f}" if "compile_seconds" in x else ""
                out.append(
                    f"| {x['loop']} | {x['precision']} | {x['images_per_second']:,.0f} | {x['vs_plain']:.2f}x | {c} |"
                )
        elif p["part"] == "study":
            out += ["", "## Study throughput on one GPU", "", d["note"], ""]
            out += [
                "| jobs per GPU | trainings | wall s | aggregate images/s | per job images/s |",
                "|---:|---:|---:|---:|---:|",
            ]
            for x in d["rows"]:
                per = f"{x['mean_job_images_per_second']:,.0f}" if x["mean_job_images_per_second"] else ""
                out.append(
                    f"| {x['jobs_per_gpu']} | {x['trainings']} | {x['wall_seconds']:.0f} | "
                    f"{x['aggregate_images_per_second']:,.0f} | {per} |"
                )
        elif p["part"] == "training":
            out += ["", "## Training on CIFAR-10", ""] + [f"- {k}: {v}" for k, v in d.items()]
        elif p["part"] == "tests":
            out += ["", "## Tests", "", f"`{d['command']}`: {d['summary']}"] + [f"- {x}" for x in d["skipped_reasons"]]
    skipped = [p["part"] for p in r["parts"] if p["status"] == "skipped"]
    if skipped:
        out += ["", f"Skipped: {'; '.join(skipped)} (reasons in the table above)."]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="CIFAR-10: train/ and test/ image folders, or a folder holding " + TARBALL)
    ap.add_argument("--out", default=str(ROOT / "runs" / "gpu-check"), help="report folder (default runs/gpu-check)")
    ap.add_argument(
        "--budget",
        type=float,
        default=450,
        help="seconds for everything (default 450); parts that would not fit are skipped",
    )
    ap.add_argument("--epochs", type=int, default=10, help="epochs of the real training (default 10; 160: the recipe)")
    ap.add_argument(
        "--loop-images", type=int, default=0, help="images per epoch in the loop part (default: GPU 25600, CPU 2560)"
    )
    args = ap.parse_args()
    import torch

    sys.path.insert(0, str(ROOT))
    have_gpu = torch.cuda.is_available()
    check = Check(args.budget, Path(args.out))
    with tempfile.TemporaryDirectory(prefix="ett-gpu-check-") as d:
        tmp = Path(d)
        os.environ.setdefault("ETT_CACHE", str(tmp / "cache"))
        folder, test_data, data_note = find_data(args.data, tmp)
        env_row = check.part("environment", environment, gpu=False, have_gpu=have_gpu)
        usable = have_gpu and env_row["status"] == "ran" and env_row["data"].get("device") == "cuda"
        no_data = "no CIFAR-10 copy (give --data or $ETT_DATA)"
        check.part(
            "tests", tests, gpu=False, have_gpu=have_gpu, needs=60, test_data=test_data, gpu_run=usable, timeout=240
        )
        if not usable:
            check._add(
                "tests marked gpu",
                "skipped",
                "GPU part: resume on the GPU bit-identical under --deterministic, reduce-overhead through partial "
                "batches, auto precision on the GPU",
            )
        if folder is None:
            for name in ("training", "loop", "study"):
                check._add(name, "skipped", no_data)
        else:
            device = "cuda" if usable else "cpu"
            # the training first: its 160-epoch projection is what the GPU check is for
            check.part(
                "training",
                training,
                gpu=True,
                have_gpu=usable,
                needs=60 + 3 * args.epochs,
                folder=folder,
                tmp=tmp,
                epochs=args.epochs,
                compile_mode="reduce-overhead",
            )
            images = args.loop_images or (25600 if usable else 2560)
            modes = ["eager", "default", "reduce-overhead"] if usable else ["eager"]
            check.part(
                "loop",
                loop,
                gpu=False,
                have_gpu=have_gpu,
                needs=150 if usable else 60,
                folder=folder,
                tmp=tmp,
                device=device,
                images=images,
                modes=modes,
            )
            if not usable:
                check._add(
                    "loop, compiled",
                    "skipped",
                    "GPU part: compiling on a CPU takes minutes; --compile is measured on a GPU",
                )
            check.part(
                "study",
                study,
                gpu=True,
                have_gpu=usable,
                needs=60,
                folder=folder,
                tmp=tmp,
                counts=[1, 4, 8],
                subset=10000,
                left=check.left,
            )
        env = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "environment": env_row["data"],
            "data": data_note,
            "budget_seconds": args.budget,
            "total_seconds": round(time.monotonic() - check.t0, 1),
        }
        check.write(env)
    print()
    print((Path(args.out) / "gpu_check.md").read_text())


if __name__ == "__main__":
    main()
