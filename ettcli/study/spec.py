"""Study files: one TOML file describes a whole E-LTH experiment; it is read with ``tomllib`` and checked
completely before anything runs.

Every key is known (:data:`SCHEMA` lists them with what each expects), every value has its type, and
combinations that cannot run (a level past a source's IMP, a transfer that no preset can make, a baseline
matched to IMP tickets that are never found, ...) are refused, each as one line naming the file, the key and
what was expected. ``ett study init --example NAME`` writes a commented file to start from.

The result is a :class:`Study`: plain frozen values (architecture specs, plans already validated), read by
:mod:`ettcli.study.graph` to make the jobs. Torch-free.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ettcli.arch import ArchSpec, parse_arch
from ettcli.errors import EttError

MATCHES = ("global", "layerwise")
LIKES = ("transfers", "imp")
EXECUTORS = ("local", "slurm")
TICKET_SUFFIXES = (".safetensors", ".pt", ".pth")

# section -> key -> what it expects (the help text of every key, and the refusal's "expected ...")
SCHEMA: dict[str, dict[str, str]] = {
    "": {
        "name": "a short name for titles (text)",
        "dataset": "a registered dataset name",
        "data_root": "the folder holding the dataset (text; relative to the study file)",
        "out": "the study folder (text; relative to the study file; default: the file's name without .toml)",
        "seeds": "a non-empty list of distinct integers (every ticket trains once per seed)",
        "sources": "a non-empty list of architecture names, ticket paths, or tables {arch|ticket, levels, rewind}",
        "targets": "a non-empty list of architecture names or stage lists such as [5, 5, 5]",
        "dense": "true or false (train every target dense once per seed: the reference accuracy)",
    },
    "train": {
        "epochs": "a positive integer",
        "batch_size": "a positive integer",
        "lr": "a positive number",
        "milestones": "text such as '80ep,120ep'",
        "weight_decay": "a number, 0 or more",
        "warmup": "text such as '5ep' or '500it'",
        "subset": "a positive integer (train on a seeded, class-balanced subset of this many images)",
        "device": "'auto', 'cpu' or 'cuda'",
        "precision": "'auto', 'fp32', 'bf16' or 'fp16'",
        "compile": "true or false",
        "workers": "an integer, 0 or more",
        "recipe": "a registered training recipe name (default: the family's own, else the dataset's)",
    },
    "imp": {
        "levels": "a positive integer (pruning levels after the dense level 0)",
        "rate": "a number strictly between 0 and 1",
        "rewind": "a step such as '1000it' or '5ep' (default: the family's)",
        "scope": "'global' or 'layerwise'",
        "seed": "an integer (data order of IMP's own trainings and of the targets' rewind runs)",
        "init_seed": "an integer (initialisation of networks named by architecture)",
        "targets": "true or false (also run IMP on every target: the reference curve)",
    },
    "transfer": {
        "levels": "a non-empty list of IMP levels (1 or more), or 'all'",
        "stretch": "a list of stretch presets",
        "squeeze": "a list of squeeze presets",
        "random_copies": "a list of integer seeds (the control: copies' masks shuffled within each tensor)",
        "mappings": "a list of tables {source, target, mapping, name}",
    },
    "baselines": {
        "methods": "a list of ett prune methods",
        "match": "'global' or 'layerwise' (default: each method's own; methods that set their own counts ignore it)",
        "like": "'transfers' (each transferred ticket) or 'imp' (the target's own IMP ticket)",
        "samples_per_class": "a positive integer",
        "seed": "an integer (placement of random baselines, reinit's initialisation)",
    },
    "lmc": {
        "methods": "a non-empty list of the study's ticket kinds: 'imp', 'ett' or a baseline method",
        "levels": "a non-empty list of transferred levels (default: all of them)",
        "seeds": "two distinct seeds from 'seeds' (default: its first two)",
        "alphas": "an integer, 2 or more (points on the path, endpoints included)",
        "bn_batches": "a positive integer (training batches that re-estimate BatchNorm at every point)",
        "bn_reset": "true or false (re-estimate BatchNorm statistics at every point)",
        "bn_data": "'augmented' or 'plain' (the BatchNorm batches as in training, or un-augmented)",
        "train_images": "an integer, 0 or more (un-augmented training images evaluated at every point)",
    },
    "executor": {
        "kind": "'local' or 'slurm'",
        "jobs": "a positive integer (concurrent jobs)",
        "jobs_per_gpu": "a positive integer",
    },
    "slurm": {
        "partition": "text",
        "time": "minutes (an integer) or 'HH:MM:SS'",
        "gpus": "an integer, 0 or more (per job)",
        "cpus": "a positive integer (per job)",
        "mem": "memory per job such as '32G' or a number of GB",
        "array_parallelism": "a positive integer",
        "account": "text",
        "qos": "text",
        "cluster": "'slurm', or 'local' to run the same job arrays through submitit on this machine",
    },
}
_SOURCE_KEYS = {"arch": "an architecture name", "ticket": "a ticket path", "levels": "a positive integer",
                "rewind": "a step such as '1000it'"}  # fmt: skip
_MAPPING_KEYS = {"source": "a source's name", "target": "a target's name", "mapping": "a plan mapping",
                 "name": "a label (text)"}  # fmt: skip


# --- values ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """A network that runs IMP; its tickets are transferred."""

    label: str  # the architecture name, or the ticket file's name without suffix
    spec: ArchSpec
    levels: int
    rewind: str | None  # None: the family's default
    ticket: Path | None = None  # a dense ticket to start from; None: initialise ``spec`` with imp.init_seed


@dataclass(frozen=True)
class Variant:
    """One way to transfer a ticket: a preset (optionally with the random-copies control) or a mapping."""

    label: str  # "append", "append+random-copies-0", or a mapping's name
    verb: str
    preset: str | None = None
    mapping: str | None = None
    random_copies: int | None = None


@dataclass(frozen=True)
class ImpSettings:
    levels: int = 16
    rate: float = 0.2
    rewind: str | None = None
    scope: str = "global"
    seed: int = 0
    init_seed: int = 0
    targets: bool = False


@dataclass(frozen=True)
class Baselines:
    methods: tuple[str, ...] = ()
    match: str | None = None  # None: each method's own default
    like: str = "transfers"
    samples_per_class: int = 10
    seed: int = 0


@dataclass(frozen=True)
class LmcSettings:
    """Linear mode connectivity of chosen tickets: the two copies are the study's own trainings with two seeds."""

    methods: tuple[str, ...] = ("imp", "ett")
    levels: tuple[int, ...] = ()
    seeds: tuple[int, int] = (0, 1)
    alphas: int = 11
    bn_batches: int = 50
    bn_reset: bool = True
    bn_data: str = "augmented"
    train_images: int = 10_000


@dataclass(frozen=True)
class ExecutorSettings:
    kind: str = "local"
    jobs: int | None = None  # default: one per visible GPU (times jobs_per_gpu), else 1
    jobs_per_gpu: int = 1
    slurm: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    path: Path
    name: str
    dataset: str
    num_classes: int
    data_root: str | None
    seeds: tuple[int, ...]
    sources: tuple[Source, ...]
    targets: tuple[ArchSpec, ...]
    levels: tuple[int, ...]  # transferred levels
    transfers: dict  # (source label, target name) -> tuple[Variant, ...]
    baselines: Baselines
    imp: ImpSettings
    train: dict  # TrainSettings fields (no seed, data root, threads)
    dense: bool
    executor: ExecutorSettings
    out: Path
    lmc: LmcSettings | None = None  # None: no [lmc] section

    def max_level(self) -> int:
        return max(self.levels)

    def imp_networks(self) -> list[tuple[str, ArchSpec, Path | None, int, str | None]]:
        """(label, spec, ticket, levels, rewind) of every IMP run: the sources, then targets without one."""
        out = [(s.label, s.spec, s.ticket, s.levels, s.rewind) for s in self.sources]
        if self.imp.targets:
            have = {s.spec for s in self.sources if s.ticket is None}
            out += [(t.name, t, None, self.max_level(), self.imp.rewind) for t in self.targets if t not in have]
        return out


# --- reading -----------------------------------------------------------------------------------------------------
class _Checker:
    """Type checks that fail with the file, the dotted key and what was expected, in one line."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str) -> EttError:
        return EttError(f"{self.path}: key '{key}': {problem}")

    def expect(self, key: str, value, what: str) -> EttError:
        shown = repr(value) if not isinstance(value, (dict, list)) or len(repr(value)) < 60 else type(value).__name__
        return self.fail(key, f"expected {what}, got {shown}")

    def known(self, section: str, table: dict, allowed: dict[str, str]) -> None:
        for k in table:
            if k not in allowed:
                dotted = f"{section}.{k}" if section else k
                raise self.fail(dotted, f"unknown key; expected one of: {', '.join(allowed)}")

    def int_(self, key: str, v, what: str, low: int | None = None) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or (low is not None and v < low):
            raise self.expect(key, v, what)
        return v

    def num(self, key: str, v, what: str) -> float:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise self.expect(key, v, what)
        return float(v)

    def str_(self, key: str, v, what: str) -> str:
        if not isinstance(v, str) or not v.strip():
            raise self.expect(key, v, what)
        return v.strip()

    def bool_(self, key: str, v, what: str) -> bool:
        if not isinstance(v, bool):
            raise self.expect(key, v, what)
        return v

    def list_(self, key: str, v, what: str, empty: bool = True) -> list:
        if not isinstance(v, list) or (not empty and not v):
            raise self.expect(key, v, what)
        return v

    def choice(self, key: str, v, choices, what: str) -> str:
        if not isinstance(v, str) or v not in choices:
            raise self.expect(key, v, what)
        return v


def load_study(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Study:
    """Read and check a study file; every problem is an :class:`EttError` naming the file and the key."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise EttError(f"{path}: no such study file; write one with 'ett study init --example cifar10-resnet'")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise EttError(f"{path}: not valid TOML ({exc}); fix the file") from None
    except UnicodeDecodeError:
        raise EttError(f"{path}: not a text file in UTF-8; a study file is TOML") from None
    return parse_study(data, path, out)


def parse_study(data: dict, path: Path, out: str | os.PathLike | None = None) -> Study:
    """Check an already-parsed study table (``path`` names it in messages and anchors relative paths)."""
    c = _Checker(path)
    here = path.resolve().parent
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in data.items() if isinstance(v, dict)}
    for k in sections:
        if k not in SCHEMA or k == "":
            raise c.fail(k, f"unknown section; expected one of: {', '.join(s for s in SCHEMA if s)}")
    for name, table in [("", top), *sections.items()]:
        c.known(name, table, SCHEMA[name])
    for k in ("dataset", "seeds", "sources", "targets"):
        if k not in top:
            raise c.fail(k, f"missing; expected {SCHEMA[''][k]}")

    from ettcli.data import DATASETS

    dataset = c.choice("dataset", top["dataset"], DATASETS, f"one of {DATASETS.choices()}")
    num_classes = DATASETS[dataset].num_classes
    name = c.str_("name", top.get("name", path.stem), SCHEMA[""]["name"])
    data_root = top.get("data_root")
    if data_root is not None:
        data_root = str(here / Path(c.str_("data_root", data_root, SCHEMA[""]["data_root"])).expanduser())
    seeds = tuple(
        c.int_(f"seeds[{i}]", s, "an integer")
        for i, s in enumerate(c.list_("seeds", top["seeds"], SCHEMA[""]["seeds"], empty=False))
    )
    if len(set(seeds)) != len(seeds):
        raise c.expect("seeds", list(seeds), "distinct integers")
    dense = c.bool_("dense", top.get("dense", True), SCHEMA[""]["dense"])

    imp = _imp(c, sections.get("imp", {}))
    train = _train(c, sections.get("train", {}))
    sources = _sources(c, top["sources"], imp, num_classes, here)
    first = sources[0].spec
    for i, s in enumerate(sources):
        if (s.spec.family, s.spec.width, s.spec.block, s.spec.prefix) != (
            first.family,
            first.width,
            first.block,
            first.prefix,
        ):
            raise c.fail(
                f"sources[{i}]",
                f"{s.spec.name} is not of the family and width of {first.name}; tickets transfer within one family "
                "at one width",
            )
    labels = [s.label for s in sources]
    if len(set(labels)) != len(labels):
        raise c.expect("sources", labels, "distinct sources")
    targets = _targets(c, top["targets"], first)
    tr = sections.get("transfer", {})
    levels = _levels(c, tr.get("levels", "all"), sources)
    base = _baselines(c, sections.get("baselines", {}))
    if base.methods and base.like == "imp" and not imp.targets:
        raise c.fail("baselines.like", "'imp' matches each baseline to the target's own IMP ticket, so it needs "
                                       "imp.targets = true; set that or use like = 'transfers'")  # fmt: skip
    transfers = _transfers(c, tr, sources, targets, levels)
    if not any(transfers.values()) and not imp.targets:
        raise c.fail("targets", "no source differs from a target, so nothing is transferred; add targets or sources")
    lmc = _lmc(c, sections["lmc"], seeds, levels, imp, base, transfers) if "lmc" in sections else None
    executor = _executor(c, sections.get("executor", {}), sections.get("slurm", {}))
    out_dir = Path(out) if out is not None else None
    if out_dir is None:
        out_dir = here / c.str_("out", top["out"], SCHEMA[""]["out"]) if "out" in top else path.with_suffix("")
    return Study(
        path=path,
        name=name,
        dataset=dataset,
        num_classes=num_classes,
        data_root=data_root,
        seeds=seeds,
        sources=tuple(sources),
        targets=tuple(targets),
        levels=levels,
        transfers=transfers,
        baselines=base,
        imp=imp,
        train=train,
        dense=dense,
        executor=executor,
        out=out_dir,
        lmc=lmc,
    )


def _step(c: _Checker, key: str, v) -> str:
    from ettcli.steps import parse_step

    text = c.str_(key, v, "a step such as '1000it', '5ep' or '2ep218it'")
    try:
        return str(parse_step(text))
    except EttError:
        raise c.expect(key, v, "a step such as '1000it', '5ep' or '2ep218it'") from None


def _imp(c: _Checker, t: dict) -> ImpSettings:
    s = SCHEMA["imp"]
    rate = c.num("imp.rate", t.get("rate", 0.2), s["rate"])
    if not 0 < rate < 1:
        raise c.expect("imp.rate", t["rate"], s["rate"])
    return ImpSettings(
        levels=c.int_("imp.levels", t.get("levels", 16), s["levels"], low=1),
        rate=rate,
        rewind=_step(c, "imp.rewind", t["rewind"]) if "rewind" in t else None,
        scope=c.choice("imp.scope", t.get("scope", "global"), MATCHES, s["scope"]),
        seed=c.int_("imp.seed", t.get("seed", 0), s["seed"]),
        init_seed=c.int_("imp.init_seed", t.get("init_seed", 0), s["init_seed"]),
        targets=c.bool_("imp.targets", t.get("targets", False), s["targets"]),
    )


def _train(c: _Checker, t: dict) -> dict:
    s = SCHEMA["train"]
    out: dict = {}
    for k in ("epochs", "batch_size", "subset"):
        if k in t:
            out[k] = c.int_(f"train.{k}", t[k], s[k], low=1)
    if "workers" in t:
        out["workers"] = c.int_("train.workers", t["workers"], s["workers"], low=0)
    if "lr" in t:
        out["lr"] = c.num("train.lr", t["lr"], s["lr"])
        if out["lr"] <= 0:
            raise c.expect("train.lr", t["lr"], s["lr"])
    if "weight_decay" in t:
        out["weight_decay"] = c.num("train.weight_decay", t["weight_decay"], s["weight_decay"])
        if out["weight_decay"] < 0:
            raise c.expect("train.weight_decay", t["weight_decay"], s["weight_decay"])
    if "milestones" in t:
        from ettcli.recipe import parse_steps

        text = c.str_("train.milestones", t["milestones"], s["milestones"])
        try:
            out["milestones"] = ",".join(str(m) for m in parse_steps(text))
        except EttError:
            raise c.expect("train.milestones", t["milestones"], s["milestones"]) from None
    if "warmup" in t:
        from ettcli.recipe import parse_warmup

        text = c.str_("train.warmup", t["warmup"], s["warmup"])
        try:
            out["warmup"] = str(parse_warmup(text))
        except EttError:
            raise c.expect("train.warmup", t["warmup"], s["warmup"]) from None
    if "recipe" in t:
        from ettcli.recipe import RECIPES

        out["recipe"] = c.choice("train.recipe", t["recipe"], tuple(RECIPES), s["recipe"])
    out["device"] = c.choice("train.device", t.get("device", "auto"), ("auto", "cpu", "cuda"), s["device"])
    out["precision"] = c.choice(
        "train.precision", t.get("precision", "auto"), ("auto", "fp32", "bf16", "fp16"), s["precision"]
    )
    if out["precision"] == "fp16" and out["device"] == "cpu":
        raise c.fail("train.precision", "fp16 needs a GPU; expected 'auto', 'fp32' or 'bf16' with device 'cpu'")
    out["compile"] = c.bool_("train.compile", t.get("compile", False), s["compile"])
    return out


def _arch(c: _Checker, key: str, name, num_classes: int, like: ArchSpec | None = None) -> ArchSpec:
    text = c.str_(key, name, "an architecture name such as cifar_resnet_20")
    try:
        return parse_arch(text, like=like, num_classes=num_classes)
    except EttError as exc:
        raise c.fail(key, f"{exc}") from None


def _sources(c: _Checker, raw, imp: ImpSettings, num_classes: int, here: Path) -> list[Source]:
    items = c.list_("sources", raw, SCHEMA[""]["sources"], empty=False)
    out = []
    for i, item in enumerate(items):
        key = f"sources[{i}]"
        if isinstance(item, str):
            item = {"ticket": item} if _looks_like_path(item) else {"arch": item}
        if not isinstance(item, dict):
            raise c.expect(key, item, "an architecture name, a ticket path or a table {arch|ticket, levels, rewind}")
        c.known(key, item, _SOURCE_KEYS)
        if ("arch" in item) == ("ticket" in item):
            raise c.fail(key, "expected exactly one of 'arch' (initialised with imp.init_seed) or 'ticket'")
        levels = c.int_(f"{key}.levels", item.get("levels", imp.levels), "a positive integer", low=1)
        rewind = _step(c, f"{key}.rewind", item["rewind"]) if "rewind" in item else imp.rewind
        if "arch" in item:
            spec = _arch(c, f"{key}.arch", item["arch"], num_classes)
            out.append(Source(spec.name, spec, levels, rewind))
            continue
        ticket = here / Path(c.str_(f"{key}.ticket", item["ticket"], "a ticket path")).expanduser()
        if not ticket.exists():
            raise c.fail(f"{key}.ticket", f"{ticket} does not exist; expected a dense ticket (e.g. from ett init)")
        from ettcli.ticket import read_ticket

        try:
            tk = read_ticket(ticket)
        except EttError as exc:
            raise c.fail(f"{key}.ticket", str(exc)) from None
        if tk.masks:
            raise c.fail(f"{key}.ticket", f"{ticket} has masks; expected a dense ticket (IMP starts dense)")
        if tk.arch.num_classes != num_classes:
            raise c.fail(f"{key}.ticket", f"{ticket} has {tk.arch.num_classes} outputs; the dataset has {num_classes}")
        out.append(Source(ticket.name.split(".")[0], tk.arch, levels, rewind, ticket.resolve()))
    return out


def _looks_like_path(text: str) -> bool:
    return "/" in text or text.lower().endswith(TICKET_SUFFIXES)


def _targets(c: _Checker, raw, first: ArchSpec) -> list[ArchSpec]:
    from ettcli.plan import resolve_target

    out = []
    for i, item in enumerate(c.list_("targets", raw, SCHEMA[""]["targets"], empty=False)):
        key = f"targets[{i}]"
        try:
            if isinstance(item, str):
                spec = resolve_target(first, to=item.strip())
            elif isinstance(item, list) and item and all(isinstance(x, int) and not isinstance(x, bool) for x in item):
                spec = resolve_target(first, stages=tuple(item))
            else:
                raise c.expect(key, item, "an architecture name or a list of stage lengths such as [5, 5, 5]")
        except EttError as exc:
            raise c.fail(key, str(exc)) from None
        if spec in out:
            raise c.fail(key, f"{spec.name} is listed twice; expected distinct targets")
        out.append(spec)
    return out


def _levels(c: _Checker, raw, sources: list[Source]) -> tuple[int, ...]:
    most = min(s.levels for s in sources)
    if raw == "all":
        return tuple(range(1, most + 1))
    items = c.list_("transfer.levels", raw, SCHEMA["transfer"]["levels"], empty=False)
    levels = tuple(sorted({c.int_(f"transfer.levels[{i}]", v, "an integer, 1 or more", low=1)
                           for i, v in enumerate(items)}))  # fmt: skip
    for s in sources:
        if levels[-1] > s.levels:
            raise c.fail(
                "transfer.levels",
                f"level {levels[-1]} is past the {s.levels} IMP levels of source {s.label}; expected levels up to "
                f"{s.levels} (or raise that source's levels)",
            )
    return levels


def _baselines(c: _Checker, t: dict) -> Baselines:
    s = SCHEMA["baselines"]
    methods = tuple(
        c.str_(f"baselines.methods[{i}]", m, "a method name")
        for i, m in enumerate(c.list_("baselines.methods", t.get("methods", []), s["methods"]))
    )
    if methods:
        known = _methods()
        if not known:
            raise c.fail("baselines.methods", "this build of ett has no pruning methods (ett prune); expected []")
        for i, m in enumerate(methods):
            if m not in known:
                raise c.expect(f"baselines.methods[{i}]", m, f"one of {', '.join(known)}")
    if len(set(methods)) != len(methods):
        raise c.expect("baselines.methods", list(methods), "distinct methods")
    return Baselines(
        methods=methods,
        match=c.choice("baselines.match", t["match"], MATCHES, s["match"]) if "match" in t else None,
        like=c.choice("baselines.like", t.get("like", "transfers"), LIKES, s["like"]),
        samples_per_class=c.int_("baselines.samples_per_class", t.get("samples_per_class", 10), s["samples_per_class"], low=1),
        seed=c.int_("baselines.seed", t.get("seed", 0), s["seed"]),
    )  # fmt: skip


def _methods() -> list[str]:
    """The pruning methods ``ett prune`` knows (its registry)."""
    try:
        from ettcli.pruning import METHODS
    except ImportError:
        return []
    return list(METHODS)


def _transfers(c: _Checker, t: dict, sources, targets, levels) -> dict:
    from ettcli.plan import PRESETS, make_plan

    s = SCHEMA["transfer"]
    presets = {}
    for verb in ("stretch", "squeeze"):
        default = [p for p in PRESETS if PRESETS[p].verb == verb and PRESETS[p].default]
        names = c.list_(f"transfer.{verb}", t.get(verb, default), s[verb])
        for i, p in enumerate(names):
            if not isinstance(p, str) or p not in PRESETS or PRESETS[p].verb != verb:
                choices = ", ".join(n for n in PRESETS if PRESETS[n].verb == verb)
                raise c.expect(f"transfer.{verb}[{i}]", p, f"a {verb} preset: one of {choices}")
        presets[verb] = tuple(dict.fromkeys(names))
    copies = tuple(
        c.int_(f"transfer.random_copies[{i}]", v, "an integer seed")
        for i, v in enumerate(c.list_("transfer.random_copies", t.get("random_copies", []), s["random_copies"]))
    )
    mappings: dict[tuple[str, str], list[Variant]] = {}
    by_label = {x.label: x for x in sources}
    by_name = {x.name: x for x in targets}
    for i, m in enumerate(c.list_("transfer.mappings", t.get("mappings", []), s["mappings"])):
        key = f"transfer.mappings[{i}]"
        if not isinstance(m, dict):
            raise c.expect(key, m, s["mappings"])
        c.known(key, m, _MAPPING_KEYS)
        for k in ("source", "target", "mapping"):
            if k not in m:
                raise c.fail(f"{key}.{k}", f"missing; expected {_MAPPING_KEYS[k]}")
        src = by_label.get(m["source"])
        if src is None:
            raise c.expect(f"{key}.source", m["source"], f"one of the sources: {', '.join(by_label)}")
        try:
            tgt = parse_arch(str(m["target"]), like=src.spec) if m["target"] not in by_name else by_name[m["target"]]
        except EttError:
            tgt = None
        if tgt is None or tgt not in targets:
            raise c.expect(f"{key}.target", m["target"], f"one of the targets: {', '.join(by_name)}")
        text = c.str_(f"{key}.mapping", m["mapping"], "a plan mapping such as '0:0;1:1,2;2:3,4'")
        label = c.str_(f"{key}.name", m.get("name", "mapping"), "a label")
        try:
            plan = make_plan(src.spec, tgt, mapping=text)
        except EttError as exc:
            raise c.fail(f"{key}.mapping", str(exc)) from None
        verb = "stretch" if sum(tgt.stages) >= sum(src.spec.stages) else "squeeze"
        mappings.setdefault((src.label, tgt.name), []).append(Variant(label, verb, mapping=plan.mapping))

    out: dict[tuple[str, str], tuple[Variant, ...]] = {}
    for si, src in enumerate(sources):
        for ti, tgt in enumerate(targets):
            if tgt == src.spec:
                continue  # a network's own tickets are its IMP curve
            variants = list(mappings.get((src.label, tgt.name), []))
            grows = all(b >= a for a, b in zip(src.spec.stages, tgt.stages))
            shrinks = all(b <= a for a, b in zip(src.spec.stages, tgt.stages))
            verb = "stretch" if grows else "squeeze" if shrinks else None
            if verb is None and not variants:
                raise c.fail(
                    f"targets[{ti}]",
                    f"{src.spec.name} -> {tgt.name} lengthens some stages and shortens others; expected a "
                    "transfer.mappings entry for this pair",
                )
            if verb is not None:
                for p in presets[verb]:
                    try:
                        make_plan(src.spec, tgt, verb=verb, **{"order" if verb == "stretch" else "drop": p})
                    except EttError as exc:
                        raise c.fail(f"targets[{ti}]", f"cannot transfer from sources[{si}]: {exc}") from None
                    variants.append(Variant(p, verb, preset=p))
                    if verb == "stretch":
                        variants += [Variant(f"{p}+random-copies-{r}", verb, preset=p, random_copies=r) for r in copies]
            out[(src.label, tgt.name)] = tuple(variants)
    return out


def _lmc(c: _Checker, t: dict, seeds, levels, imp: ImpSettings, base: Baselines, transfers) -> LmcSettings:
    s = SCHEMA["lmc"]
    kinds = ["imp"] if imp.targets else []
    kinds += ["ett"] if any(transfers.values()) else []
    kinds += list(base.methods)
    raw = c.list_("lmc.methods", t.get("methods", [k for k in ("imp", "ett") if k in kinds]), s["methods"], empty=False)
    methods = []
    for i, m in enumerate(raw):
        if m not in kinds:
            why = {"imp": " ('imp' needs imp.targets = true)", "ett": " (this study transfers nothing)"}.get(m, "")
            raise c.expect(
                f"lmc.methods[{i}]", m, f"a kind of ticket this study trains: one of {', '.join(kinds)}{why}"
            )
        methods.append(m)
    if len(set(methods)) != len(methods):
        raise c.expect("lmc.methods", raw, "distinct methods")
    chosen = t.get("levels", list(levels))
    items = c.list_("lmc.levels", chosen, s["levels"], empty=False)
    lv = []
    for i, v in enumerate(items):
        if c.int_(f"lmc.levels[{i}]", v, "an integer, 1 or more", low=1) not in levels:
            raise c.expect(f"lmc.levels[{i}]", v, f"one of the transferred levels {', '.join(map(str, levels))}")
        lv.append(v)
    if "seeds" in t:
        pair = c.list_("lmc.seeds", t["seeds"], s["seeds"])
        if len(pair) != 2:
            raise c.expect("lmc.seeds", pair, s["seeds"])
        pair = [c.int_(f"lmc.seeds[{i}]", v, "an integer") for i, v in enumerate(pair)]
        for i, v in enumerate(pair):
            if v not in seeds:
                raise c.expect(f"lmc.seeds[{i}]", v, f"one of the study's seeds {', '.join(map(str, seeds))}")
        if pair[0] == pair[1]:
            raise c.expect("lmc.seeds", pair, "two distinct seeds")
    elif len(seeds) < 2:
        raise c.fail("lmc", "the path joins two copies trained with different seeds, and 'seeds' has one; add a seed")
    else:
        pair = list(seeds[:2])
    bn_data = c.choice("lmc.bn_data", t.get("bn_data", "augmented"), ("augmented", "plain"), s["bn_data"])
    return LmcSettings(
        methods=tuple(methods),
        levels=tuple(sorted(set(lv))),
        seeds=(pair[0], pair[1]),
        alphas=c.int_("lmc.alphas", t.get("alphas", 11), s["alphas"], low=2),
        bn_batches=c.int_("lmc.bn_batches", t.get("bn_batches", 50), s["bn_batches"], low=1),
        bn_reset=c.bool_("lmc.bn_reset", t.get("bn_reset", True), s["bn_reset"]),
        bn_data=bn_data,
        train_images=c.int_("lmc.train_images", t.get("train_images", 10_000), s["train_images"], low=0),
    )


_MEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([gGmMtT]?)[bB]?\s*$")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{2})(?::(\d{2}))?$")


def _executor(c: _Checker, t: dict, slurm: dict) -> ExecutorSettings:
    s, sl = SCHEMA["executor"], SCHEMA["slurm"]
    out: dict = {}
    for k in ("partition", "account", "qos"):
        if k in slurm:
            out[k] = c.str_(f"slurm.{k}", slurm[k], sl[k])
    if "time" in slurm:
        out["time_min"] = parse_minutes(slurm["time"], c)
    if "gpus" in slurm:
        out["gpus"] = c.int_("slurm.gpus", slurm["gpus"], sl["gpus"], low=0)
    for k in ("cpus", "array_parallelism"):
        if k in slurm:
            out[k] = c.int_(f"slurm.{k}", slurm[k], sl[k], low=1)
    if "mem" in slurm:
        v = slurm["mem"]
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            out["mem_gb"] = float(v)
        else:
            m = _MEM.match(v) if isinstance(v, str) else None
            if not m:
                raise c.expect("slurm.mem", v, sl["mem"])
            factor = {"": 1, "g": 1, "m": 1 / 1024, "t": 1024}[m[2].lower()]
            out["mem_gb"] = float(m[1]) * factor
    out["cluster"] = c.choice("slurm.cluster", slurm.get("cluster", "slurm"), ("slurm", "local"), sl["cluster"])
    return ExecutorSettings(
        kind=c.choice("executor.kind", t.get("kind", "local"), EXECUTORS, s["kind"]),
        jobs=c.int_("executor.jobs", t["jobs"], s["jobs"], low=1) if "jobs" in t else None,
        jobs_per_gpu=c.int_("executor.jobs_per_gpu", t.get("jobs_per_gpu", 1), s["jobs_per_gpu"], low=1),
        slurm=out,
    )


def parse_minutes(v, c: _Checker | None = None) -> int:
    """Slurm time limits: minutes as an integer, or ``[D-]HH:MM[:SS]``."""
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return v
    m = _TIME.match(v.strip()) if isinstance(v, str) else None
    if not m:
        err = f"expected {SCHEMA['slurm']['time']}, got {v!r}"
        raise c.fail("slurm.time", err) if c else EttError(f"time {v!r}: {err}")
    days, hours, minutes, seconds = (int(x) if x else 0 for x in m.groups())
    return max(1, days * 1440 + hours * 60 + minutes + (1 if seconds else 0))
