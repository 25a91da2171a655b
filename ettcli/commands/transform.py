"""``ett plan``, ``ett stretch`` and ``ett squeeze``: elastic ticket transforms (never import torch)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from ettcli.commands.common import MASKS_HELP, UNITS_HELP, command_line, handle_errors
from ettcli.errors import EttError, final_output
from ettcli.plan import default_preset, preset_help, presets_for

Order = Enum("Order", {name: name for name in presets_for("stretch")}, type=str)
Drop = Enum("Drop", {name: name for name in presets_for("squeeze")}, type=str)

TO_HELP = "Target: canonical name (cifar_resnet_56) or short name in the source's family (resnet-56, vgg-19)."
STAGES_HELP = "Target stage lengths instead of --to, e.g. 5,5,5 (any depth)."
MAPPING_HELP = "Explicit plan, e.g. '0:0;1:1,2;2:3,4' (stage-local src:dst; stages joined by '|')."
RANDOM_HELP = "Control: shuffle the masks of second and later copies of each unit within each tensor (seed)."

PLAN_JSON_HELP = """\
With --json, one JSON object on stdout: source, target (canonical names), verb, preset (null for
--mapping), mapping (the plan in the grammar), stages (per stage: stage (1-based), source_units,
target_units, fill (source unit of each target position), targets (source unit -> positions), replicated,
dropped, source_sparsity, target_sparsity), source_sparsity and target_sparsity (global, prunable weights).
"""


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _sparsity_lines(src, dst) -> list[str]:
    w = max(len(src.arch), len(dst.arch), 8)
    lines = [f"{'sparsity':<10} {src.arch:>{w}} {dst.arch:>{w}}"]
    for s, (a, b) in enumerate(zip(src.stages, dst.stages)):
        lines.append(f"{'stage ' + str(s + 1):<10} {_pct(a):>{w}} {_pct(b):>{w}}")
    lines.append(f"{'global':<10} {_pct(src.sparsity):>{w}} {_pct(dst.sparsity):>{w}}")
    lines.append(f"{'kept':<10} {src.kept:>{w},} {dst.kept:>{w},}")
    return lines


def _plan_info(plan, src_report, dst_report) -> dict:
    stages = []
    for s in range(len(plan.fill)):
        stages.append(
            {
                "stage": s + 1,
                "source_units": plan.source.stages[s],
                "target_units": plan.target.stages[s],
                "fill": list(plan.fill[s]),
                "targets": {str(i): list(plan.targets(s, i)) for i in range(plan.source.stages[s])},
                "replicated": plan.replicated(s),
                "dropped": plan.dropped(s),
                "source_sparsity": src_report.stages[s],
                "target_sparsity": dst_report.stages[s],
            }
        )
    return {
        "source": plan.source.name,
        "target": plan.target.name,
        "verb": plan.verb,
        "preset": plan.preset,
        "mapping": plan.mapping,
        "stages": stages,
        "source_sparsity": src_report.sparsity,
        "target_sparsity": dst_report.sparsity,
    }


def _plan_lines(plan) -> list[str]:
    word = plan.source.unit_word
    how = f"preset {plan.preset}" if plan.preset else "explicit mapping"
    lines = [f"plan {plan.source.name} -> {plan.target.name} ({plan.verb or 'transform'}, {how})"]
    for s in range(len(plan.fill)):
        n, m = plan.source.stages[s], plan.target.stages[s]
        lines.append(f"stage {s + 1}: {n} -> {m} {word}s")
        for i in range(n):
            dst = plan.targets(s, i)
            if not dst:
                note = "dropped"
                where = "-"
            else:
                where = ", ".join(map(str, dst))
                note = f"replicated x{len(dst)}" if len(dst) > 1 else ""
                if i == 0 and plan.source.is_fixed(s, 0):
                    note = "kept (first unit)"
            lines.append(f"  {word} {i:<3} -> {where:<24} {note}".rstrip())
        rep, drop = plan.replicated(s), plan.dropped(s)
        lines.append(
            f"  replicated: {', '.join(map(str, rep)) or 'none'}; dropped: {', '.join(map(str, drop)) or 'none'}"
        )
    lines.append(f"mapping: {plan.mapping}")
    return lines


def _plan(src, to, stages, order, drop, mapping, verb, unit_pattern=None, masks=None):
    """Read the source ticket and make the plan (the verb, where given, restricts the direction)."""
    from ettcli.arch import units
    from ettcli.plan import make_plan
    from ettcli.ticket import read_ticket

    with units(unit_pattern):
        ticket = read_ticket(src, masks=masks)
    plan = make_plan(
        ticket.arch,
        to,
        verb=verb,
        order=order.value if order else None,
        drop=drop.value if drop else None,
        mapping=mapping,
        stages=stages,
    )
    return ticket, plan


def _run(
    verb, src, to, stages, preset_enum, mapping, random_copies, out, unit_pattern=None, masks=None, hf_folder=None
) -> None:
    from ettcli.transform import apply_plan, default_output, predict_sparsity, save_transformed, source_report

    option = "--order" if verb == "stretch" else "--drop"
    preset = preset_enum.value if preset_enum else None
    if mapping is not None and preset is not None:
        raise EttError(f"give {option} or --mapping, not both")
    if mapping is None and preset is None:
        preset = default_preset(verb)
    ticket, plan = _plan(
        src,
        to,
        stages,
        Order(preset) if verb == "stretch" and preset else None,
        Drop(preset) if verb == "squeeze" and preset else None,
        mapping,
        verb,
        unit_pattern,
        masks,
    )
    if hf_folder is None:
        out = out or default_output(src, plan.target)
    target = apply_plan(ticket, plan, random_copies, hash_source=False)
    target.metadata["ett.command"] = command_line()
    if hf_folder is not None:
        from ettcli.hf import hf_config, layers_field

        layers_field(plan.target.fam, hf_config(target), str(hf_folder))  # refused before anything is written
    with final_output():  # once the file is in place the command has succeeded, even if interrupted now
        written = []
        if hf_folder is not None:
            from ettcli.hf import write_hf_folder

            write_hf_folder(target, hf_folder, ticket.path)
            written.append(f"model folder {hf_folder}")
        if out is not None:
            save_transformed(target, out, ticket.path)
            written.insert(0, str(out))
        how = f"{option[2:]} {plan.preset}" if plan.preset else "explicit mapping"
        extra = f", random copies (seed {random_copies})" if random_copies is not None else ""
        lines = [
            f"wrote {' and '.join(written)} ({plan.source.name} -> {plan.target.name}, {verb}, {how}{extra})",
            f"plan: {plan.mapping}",
            *_sparsity_lines(source_report(ticket), predict_sparsity(ticket, plan)),
        ]
        typer.echo("\n".join(lines))


PLAN_EPILOG = "Example: ett plan r20.safetensors --to resnet-56 --order append\n\n" + PLAN_JSON_HELP
STRETCH_EPILOG = "Example: ett stretch r20.safetensors --to resnet-56 -o r56.safetensors"
SQUEEZE_EPILOG = "Example: ett squeeze r56.safetensors --to resnet-32 --drop interleave -o r32.safetensors"
OUT_HELP = "Output file (default: SRC_to_TARGET.safetensors beside SRC, unless --hf-folder); may be SRC itself."
HF_FOLDER_HELP = (
    "Also or instead write a Hugging Face model folder (a new or empty folder): config.json with the layer count "
    "updated, model.safetensors with pruned weights at zero; loads with from_pretrained."
)


@handle_errors
def plan(
    src: Path = typer.Argument(..., help="Source ticket (.safetensors, .pt/.pth, open_lth level folder)."),
    to: str = typer.Option(None, "--to", metavar="TARGET", help=TO_HELP),
    stages: str = typer.Option(None, "--stages", metavar="N,N,...", help=STAGES_HELP),
    order: Order = typer.Option(None, "--order", help=f"Stretch preset. {preset_help('stretch')}."),
    drop: Drop = typer.Option(None, "--drop", help=f"Squeeze preset. {preset_help('squeeze')}."),
    mapping: str = typer.Option(None, "--mapping", metavar="MAPPING", help=MAPPING_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout (fields below)."),
    unit_pattern: str = typer.Option(None, "--units", metavar="PATTERN", help=UNITS_HELP),
    masks: Path = typer.Option(None, "--masks", metavar="FILE", help=MASKS_HELP),
) -> None:
    """Show which source unit fills which target position, the mapping, and the predicted sparsity."""
    from ettcli.transform import predict_sparsity, source_report

    ticket, p = _plan(src, to, stages, order, drop, mapping, None, unit_pattern, masks)
    src_report, dst_report = source_report(ticket), predict_sparsity(ticket, p)
    if as_json:
        typer.echo(json.dumps(_plan_info(p, src_report, dst_report)))
        return
    typer.echo("\n".join([*_plan_lines(p), *_sparsity_lines(src_report, dst_report)]))


@handle_errors
def stretch(
    src: Path = typer.Argument(..., help="Source ticket (.safetensors, .pt/.pth, open_lth level folder)."),
    to: str = typer.Option(None, "--to", metavar="TARGET", help=TO_HELP),
    stages: str = typer.Option(None, "--stages", metavar="N,N,...", help=STAGES_HELP),
    order: Order = typer.Option(
        None, "--order", help=f"How copies are placed. {preset_help('stretch')}.", show_default=False
    ),
    mapping: str = typer.Option(None, "--mapping", metavar="MAPPING", help=MAPPING_HELP),
    random_copies: int = typer.Option(None, "--random-copies", metavar="SEED", help=RANDOM_HELP),
    out: Path = typer.Option(None, "-o", "--out", help=OUT_HELP),
    unit_pattern: str = typer.Option(None, "--units", metavar="PATTERN", help=UNITS_HELP),
    masks: Path = typer.Option(None, "--masks", metavar="FILE", help=MASKS_HELP),
    hf_folder: Path = typer.Option(None, "--hf-folder", metavar="OUT", help=HF_FOLDER_HELP),
) -> None:
    """Write a deeper ticket of the same family by replicating units (stem, head, unit 0 kept)."""
    _run("stretch", src, to, stages, order, mapping, random_copies, out, unit_pattern, masks, hf_folder)


@handle_errors
def squeeze(
    src: Path = typer.Argument(..., help="Source ticket (.safetensors, .pt/.pth, open_lth level folder)."),
    to: str = typer.Option(None, "--to", metavar="TARGET", help=TO_HELP),
    stages: str = typer.Option(None, "--stages", metavar="N,N,...", help=STAGES_HELP),
    drop: Drop = typer.Option(None, "--drop", help=f"Which units to drop. {preset_help('squeeze')}."),
    mapping: str = typer.Option(None, "--mapping", metavar="MAPPING", help=MAPPING_HELP),
    random_copies: int = typer.Option(None, "--random-copies", metavar="SEED", help=RANDOM_HELP),
    out: Path = typer.Option(None, "-o", "--out", help=OUT_HELP),
    unit_pattern: str = typer.Option(None, "--units", metavar="PATTERN", help=UNITS_HELP),
    masks: Path = typer.Option(None, "--masks", metavar="FILE", help=MASKS_HELP),
    hf_folder: Path = typer.Option(None, "--hf-folder", metavar="OUT", help=HF_FOLDER_HELP),
) -> None:
    """Write a shallower ticket of the same family by dropping units (stem, head, unit 0 kept)."""
    _run("squeeze", src, to, stages, drop, mapping, random_copies, out, unit_pattern, masks, hf_folder)


def register(app: typer.Typer) -> None:
    app.command(epilog=PLAN_EPILOG)(plan)
    app.command(epilog=STRETCH_EPILOG)(stretch)
    app.command(epilog=SQUEEZE_EPILOG)(squeeze)
