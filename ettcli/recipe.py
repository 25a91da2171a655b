"""Training recipes: open_lth's defaults, chosen by the dataset, each overridable.

The recipe follows the data a ticket is trained on (CIFAR-10/100: 160 epochs at batch 128, lr 0.1, x0.1 at
80 and 120 epochs; ImageNet: 90 epochs at batch 1024, lr 0.4 with 5 warmup epochs, x0.1 at 30, 60, 80), not
the network: an ImageNet-style ResNet trained on CIFAR-10 gets the CIFAR recipe. What does depend on the
family is kept apart in :data:`FAMILY_DEFAULTS`: the dataset a family is trained on when none is named, and
the rewind step IMP uses (1000 iterations for CIFAR ResNets, 200 for CIFAR VGG, 5 epochs on ImageNet) and
the layers IMP leaves dense (open_lth's CIFAR VGG keeps its classifier dense). A family whose networks do
not train under SGD with step decay names a recipe of its own (the CIFAR ViT: ``vit``, AdamW with warmup and
cosine decay, after Hassani et al. 2021); ``--recipe NAME`` chooses any registered recipe over both.

A :class:`Recipe` is a frozen dataclass in epochs and steps; the learning-rate schedule it describes is a
pure function of the iteration (:meth:`Recipe.lr_at`), so starting at a rewind step or resuming from a
checkpoint needs no scheduler state: the schedule is simply evaluated at that iteration.

``--epochs N`` shortens (or lengthens) the whole schedule and keeps its shape: milestones and warmup move
to the same fractions of the new length, e.g. CIFAR's x0.1 at 80 and 120 of 160 epochs becomes x0.1 at 2
and 3 of 4 epochs.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace
from fractions import Fraction

from ettcli.errors import EttError, warn
from ettcli.registry import Registry
from ettcli.steps import Step, parse_step


@dataclass(frozen=True)
class Recipe:
    """One training recipe. Steps are ``Step`` values (``80ep``, ``1000it``, ``2ep218it``)."""

    name: str  # registry name, e.g. "cifar"
    summary: str  # where it comes from, for the run header
    epochs: int  # training length, epochs
    batch_size: int  # images per optimizer step, over all processes
    lr: float  # peak learning rate
    momentum: float  # SGD momentum
    weight_decay: float  # L2 penalty on every parameter (open_lth: BatchNorm included)
    milestones: tuple[Step, ...]  # the lr is multiplied by gamma at each of these steps
    gamma: float  # lr factor at each milestone
    warmup: Step = Step()  # linear warmup from 0 over this many steps
    optimizer: str = "sgd"  # "sgd" (momentum) or "adamw" (betas momentum, 0.999)
    schedule: str = "step"  # "step": x gamma at the milestones; "cosine": cosine decay to 0 after the warmup
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    decay: str = "all"  # weight decay on "all" parameters (open_lth) or on the prunable "matrices" only

    def scaled(self, epochs: int, per_epoch: int) -> Recipe:
        """The same schedule shape over ``epochs`` epochs (milestones and warmup at the same fractions)."""
        if epochs <= 0:
            raise EttError(f"epochs {epochs}: training needs at least 1 epoch")
        if epochs == self.epochs:
            return self
        f = Fraction(epochs, self.epochs)
        return replace(
            self,
            epochs=epochs,
            milestones=tuple(_scale(m, f, per_epoch) for m in self.milestones),
            warmup=_scale(self.warmup, f, per_epoch),
        )

    def total_iterations(self, per_epoch: int) -> int:
        return self.epochs * per_epoch

    def lr_at(self, it: int, per_epoch: int) -> float:
        """The learning rate of iteration ``it`` (0-based), as open_lth computes it."""
        factor = 1.0
        milestones = sorted(m.iterations(per_epoch) for m in self.milestones)
        if milestones:
            factor *= self.gamma ** bisect.bisect(milestones, it)
        warm = self.warmup.iterations(per_epoch)
        if warm:
            factor *= min(1.0, it / warm)
        if self.schedule == "cosine" and it >= warm:
            span = max(self.total_iterations(per_epoch) - warm, 1)
            factor *= 0.5 * (1.0 + math.cos(math.pi * min(it - warm, span) / span))
        return self.lr * factor

    def describe(self) -> str:
        """One line for the start of a run: the recipe's name, origin and every value."""
        ms = ",".join(str(m) for m in self.milestones) or "none"
        warm = f", warmup {self.warmup}" if self.warmup != Step() else ""
        opt = f"SGD lr {self.lr:g} momentum {self.momentum:g}"
        if self.optimizer == "adamw":
            opt = f"AdamW lr {self.lr:g} betas ({self.momentum:g}, 0.999)"
        wd = f"weight decay {self.weight_decay:g}" + (" on weight matrices only" if self.decay == "matrices" else "")
        sched = f"lr x{self.gamma:g} at {ms}"
        if self.schedule == "cosine":
            sched = "cosine decay" + (f", lr x{self.gamma:g} at {ms}" if self.milestones else "")
        smooth = f", label smoothing {self.label_smoothing:g}" if self.label_smoothing else ""
        return (
            f"recipe {self.name} ({self.summary}): {self.epochs} epoch{'s' * (self.epochs != 1)}, batch {self.batch_size}, {opt}, "
            f"{wd}, {sched}{warm}{smooth}"
        )

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "milestones": [str(m) for m in self.milestones],
            "gamma": self.gamma,
            "warmup": str(self.warmup),
            # the fields recipes gained later, only where they differ from open_lth's (run identities unchanged)
            **{k: v for k, v in self._extras().items() if v != _EXTRA_DEFAULTS[k]},
        }

    def _extras(self) -> dict:
        return {
            "optimizer": self.optimizer,
            "schedule": self.schedule,
            "label_smoothing": self.label_smoothing,
            "decay": self.decay,
        }


_EXTRA_DEFAULTS = {"optimizer": "sgd", "schedule": "step", "label_smoothing": 0.0, "decay": "all"}


def _scale(step: Step, f: Fraction, per_epoch: int) -> Step:
    """The step at fraction ``f`` of ``step``, in whole epochs where it falls on one."""
    its = round(step.iterations(per_epoch) * f)
    return Step(its // per_epoch, its % per_epoch)


# torch.compile's modes, as ``--compile-mode`` and a study's ``train.compile_mode`` offer them (how, not what, a
# run trains: a recipe does not carry one)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

RECIPES: Registry[Recipe] = Registry("training recipe")


def register(recipe: Recipe) -> Recipe:
    return RECIPES.register(recipe.name, recipe)


register(Recipe("cifar", "open_lth's CIFAR recipe", 160, 128, 0.1, 0.9, 1e-4, (Step(80), Step(120)), 0.1))
# ViT-Lite/CCT on CIFAR-10 (Hassani et al. 2021, "Escaping the Big Data Paradigm with Compact Transformers"):
# AdamW lr 5.5e-4, weight decay 0.06 on the weight matrices, batch 128, 10 warmup epochs then cosine decay,
# label smoothing 0.1, 200 epochs. Their RandAugment, mixup and cutmix are left out (crop and flip only): see
# docs/vit.md for what that costs.
register(
    Recipe(
        "vit",
        "ViT-Lite/CCT's CIFAR recipe, Hassani et al. 2021, crop and flip only",
        200,
        128,
        5.5e-4,
        0.9,
        0.06,
        (),
        1.0,
        Step(10),
        optimizer="adamw",
        schedule="cosine",
        label_smoothing=0.1,
        decay="matrices",
    )
)
register(
    Recipe(
        "imagenet", "open_lth's ImageNet recipe", 90, 1024, 0.4, 0.9, 1e-4, (Step(30), Step(60), Step(80)), 0.1, Step(5)
    )
)


@dataclass(frozen=True)
class FamilyDefaults:
    """What depends on the network family rather than the data."""

    dataset: str  # trained on when no dataset is named
    rewind: Step  # IMP's default rewind step
    imp_exclude: tuple[str, ...] = ()  # prunable tensors IMP leaves dense (open_lth's pruning_layers_to_ignore)
    recipe: str | None = None  # the family's own training recipe, over the dataset's


class _FamilyDefaults:
    """Each registered family's defaults (``dataset``, ``rewind``, ``imp_exclude`` of its plug-in)."""

    def lookup(self, name: str) -> FamilyDefaults:
        from ettcli.arch import FAMILIES

        family = FAMILIES.lookup(name)
        return FamilyDefaults(
            family.dataset, parse_step(family.rewind), tuple(family.imp_exclude), getattr(family, "recipe", None)
        )


FAMILY_DEFAULTS = _FamilyDefaults()


def recipe_for(dataset: str, family: str | None = None, name: str | None = None) -> Recipe:
    """The recipe a run uses: ``name`` where given (``--recipe``), else the family's own (the CIFAR ViT's
    ``vit``), else the dataset's (its ``recipe`` field names one in :data:`RECIPES`)."""
    from ettcli.data import get_dataset

    if name:
        return RECIPES.lookup(name)
    own = FAMILY_DEFAULTS.lookup(family).recipe if family else None
    return RECIPES.lookup(own or get_dataset(dataset).recipe)


def parse_steps(text: str) -> tuple[Step, ...]:
    """A comma-separated list of steps; a bare number means epochs here (``80,120`` = ``80ep,120ep``)."""
    out = []
    for tok in text.split(","):
        tok = tok.strip()
        if not tok:
            continue
        out.append(Step(int(tok), 0) if tok.isdigit() else parse_step(tok))
    return tuple(out)


def parse_warmup(text: str) -> Step:
    text = text.strip()
    return Step(int(text), 0) if text.isdigit() else parse_step(text)


def customise(
    recipe: Recipe,
    per_epoch: int,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    milestones: str | None = None,
    weight_decay: float | None = None,
    warmup: str | None = None,
) -> Recipe:
    """Apply overrides (``per_epoch``: iterations in one epoch at the final batch size).

    ``epochs`` scales the schedule first, so explicit milestones and a warmup are taken as given. Values
    that cannot train (non-finite or out of range) are an EttError; milestones out of order or past the
    end are accepted with a warning.
    """
    if epochs is not None:
        recipe = recipe.scaled(epochs, per_epoch)
    if batch_size is not None:
        if batch_size <= 0:
            raise EttError(f"batch size {batch_size}: must be at least 1")
        recipe = replace(recipe, batch_size=batch_size)
    if lr is not None:
        if not math.isfinite(lr) or lr <= 0:
            raise EttError(f"learning rate {lr}: must be a positive finite number")
        recipe = replace(recipe, lr=lr)
    if weight_decay is not None:
        if not math.isfinite(weight_decay) or weight_decay < 0:
            raise EttError(f"weight decay {weight_decay}: must be a finite number, 0 or more")
        recipe = replace(recipe, weight_decay=weight_decay)
    if warmup is not None:
        recipe = replace(recipe, warmup=parse_warmup(warmup))
    if milestones is not None:
        steps = parse_steps(milestones)
        its = [m.iterations(per_epoch) for m in steps]
        if its != sorted(its):
            warn(f"milestones {milestones} are not in order; the lr drops at each of them in order of steps")
        end = recipe.total_iterations(per_epoch)
        late = [str(m) for m, i in zip(steps, its) if i >= end]
        if late:
            warn(f"milestone {', '.join(late)} is at or past the end of training ({recipe.epochs}ep); it never applies")
        if steps and recipe.gamma == 1.0:
            warn(
                f"recipe {recipe.name} decays by its schedule, not in steps (gamma 1): milestones {milestones} change nothing"
            )
        recipe = replace(recipe, milestones=steps)
    return recipe
