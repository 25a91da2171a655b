"""``ett inspect``, ``ett convert`` and ``ett init``: reading, converting and creating tickets."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ettcli.arch import names_help
from ettcli.commands.common import MASKS_HELP, UNITS_HELP, command_line, handle_errors, stdout_console
from ettcli.errors import EttError, final_output

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked", "relative_position_index", "relative_coords_table")
METADATA_SHOWN = 200  # characters of a metadata key or value that the table shows

INSPECT_JSON_HELP = (
    "With --json, one JSON object on stdout: file, arch (canonical name), family, stages (units per stage), "
    "width, block, num_classes, sparsity (fraction of prunable weights whose mask is 0; 0.0 without masks), "
    "density, prunable (count), kept_prunable, total_params (parameters, buffers excluded), kept_params, "
    "stage_sparsity (per stage, stem and head excluded), tensors (name, shape, dtype, numel, prunable, masked, "
    "kept, sparsity, zeros (entries exactly 0, masked or not), role: stem/unit/head, stage, unit, buffer) and metadata (the file's __metadata__)."
)


def summarize(ticket, file: str) -> dict:
    """The facts that ``inspect`` shows, as one JSON-ready dict."""
    spec = ticket.arch
    report = ticket.sparsity_report()
    rows = []
    total_params = kept_params = 0
    zeros = ticket.zero_counts()
    for name, t in spec.tensors.items():
        shape = ticket.tensors[name].shape
        numel = 1
        for d in shape:
            numel *= d
        buffer = name.rsplit(".", 1)[-1] in _BUFFERS
        count = report.tensors.get(name)
        kept = count.kept if count is not None else numel
        if not buffer:
            total_params += numel
            kept_params += kept
        rows.append(
            {
                "name": name,
                "shape": list(shape),
                "dtype": ticket.tensors[name].dtype,
                "numel": numel,
                "prunable": t.prunable,
                "masked": name in ticket.masks,
                "kept": kept,
                "sparsity": count.sparsity if count is not None else 0.0,
                "zeros": zeros[name],
                "role": t.role,
                "stage": t.stage,
                "unit": t.unit,
                "buffer": buffer,
            }
        )
    return {
        "file": file,
        "arch": spec.name,
        "family": spec.family,
        "stages": list(spec.stages),
        "width": spec.width,
        "block": spec.block,
        "num_classes": spec.num_classes,
        "sparsity": report.sparsity,
        "density": report.density,
        "prunable": report.total,
        "kept_prunable": report.kept,
        "total_params": total_params,
        "kept_params": kept_params,
        "stage_sparsity": list(report.stages),
        "tensors": rows,
        "metadata": dict(ticket.metadata),
    }


def _shown(value: str) -> str:
    """A metadata value as the table shows it: long values cut, with how to see them in full."""
    if len(value) <= METADATA_SHOWN:
        return value
    return f"{value[:METADATA_SHOWN]}... ({len(value):,} characters; ett inspect --json shows them in full)"


def _render(info: dict, spec) -> None:
    from rich.table import Table
    from rich.text import Text

    console = stdout_console()
    title = f"{info['file']}: {info['arch']} ({info['family']}, stages {info['stages']}, {info['num_classes']} classes)"
    console.print(Text(title, style="bold"), highlight=False)
    table = Table(show_lines=False)
    for col, just in (
        ("tensor", "left"),
        ("shape", "left"),
        ("params", "right"),
        ("kept", "right"),
        ("zeros", "right"),
        ("sparsity %", "right"),
        ("flags", "left"),
    ):
        table.add_column(col, justify=just)
    group = None
    for r in info["tensors"]:
        if r["buffer"]:
            continue
        key = (r["role"], r["stage"], r["unit"])
        if key != group:
            if group is not None:
                table.add_section()
            group = key
            if r["role"] == "unit":
                ds = " (downsampling)" if spec.has_shortcut(r["stage"], r["unit"]) else ""
                label = f"stage {r['stage'] + 1} {spec.unit_word} {r['unit']}{ds}"
            else:
                label = r["role"]
            table.add_row(f"[bold]{label}[/bold]", "", "", "", "", "", "")
        flags = []
        if r["role"] in ("stem", "head"):
            flags.append(r["role"])
        if r["role"] == "unit" and spec.has_shortcut(r["stage"], r["unit"]):
            flags.append("downsample")
        if r["prunable"]:
            flags.append("masked" if r["masked"] else "dense")
        table.add_row(
            "  " + r["name"],
            "x".join(map(str, r["shape"])),
            f"{r['numel']:,}",
            f"{r['kept']:,}",
            f"{r['zeros']:,}",
            f"{100 * r['sparsity']:.2f}" if r["prunable"] else "-",
            " ".join(flags),
        )
    console.print(table)
    stages = "  ".join(f"stage {i + 1}: {100 * s:.2f}%" for i, s in enumerate(info["stage_sparsity"]))
    console.print(
        f"prunable sparsity {100 * info['sparsity']:.2f}% ({info['kept_prunable']:,} of {info['prunable']:,} "
        f"prunable weights kept)\n"
        f"per stage: {stages}\n"
        f"total parameters {info['total_params']:,}, kept {info['kept_params']:,}"
    )
    unmasked = sum(r["zeros"] for r in info["tensors"] if r["prunable"] and not r["masked"])
    if unmasked:
        console.print(
            f"{unmasked:,} weights of unmasked prunable tensors are exactly 0; "
            "ett convert --masks-from-zeros turns them into masks"
        )
    if info["metadata"]:
        lines = [f"  {_shown(k)}={_shown(v)}" for k, v in sorted(info["metadata"].items())]
        console.print("\n".join(["metadata:", *lines]), markup=False, highlight=False)


HEADS_HELP = (
    "A ViT's attention head count, which its weights do not hold (torchvision, timm, CIFAR ViT): recorded as "
    "ett.heads and used wherever ett builds the network."
)
REWIND_HELP = "open_lth level folders: the rewind step whose model file to read (e.g. 1000it, 2ep218it)."


@handle_errors
def inspect(
    path: Path = typer.Argument(..., help="A ticket (.safetensors, .pt/.pth) or an open_lth level folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout (fields below)."),
    rewind_step: str = typer.Option(None, "--rewind-step", metavar="STEP", help=REWIND_HELP),
    unit_pattern: str = typer.Option(None, "--units", metavar="PATTERN", help=UNITS_HELP),
    masks: Path = typer.Option(None, "--masks", metavar="FILE", help=MASKS_HELP),
) -> None:
    """Show a ticket's architecture, stages and units, and its per-tensor and global sparsity."""
    import numpy  # noqa: F401  (the zeros column needs it; loaded first, it checks the masks too: ettcli.mask)

    from ettcli.arch import units
    from ettcli.ticket import read_ticket

    with units(unit_pattern):
        ticket = read_ticket(path, rewind_step, masks)
    info = summarize(ticket, str(path))
    if as_json:
        typer.echo(json.dumps(info))
    else:
        _render(info, ticket.arch)


@handle_errors
def convert(
    src: Path = typer.Argument(..., help="Any supported ticket: safetensors, .pt/.pth, open_lth level folder."),
    out: Path = typer.Option(
        ...,
        "-o",
        "--out",
        help="Output: .safetensors (ett ticket) or .pt/.pth (torch state dict); a folder with --open-lth.",
    ),
    open_lth: bool = typer.Option(False, "--open-lth", help="Write an open_lth level folder instead."),
    force: bool = typer.Option(
        False, "--force", help="With --open-lth: replace the level files of a non-empty folder."
    ),
    rewind_step: str = typer.Option(None, "--rewind-step", metavar="STEP", help=REWIND_HELP),
    masks_from_zeros: bool = typer.Option(
        False, "--masks-from-zeros", help="Mask out the exact zeros of prunable tensors (e.g. after prune.remove)."
    ),
    unit_pattern: str = typer.Option(None, "--units", metavar="PATTERN", help=UNITS_HELP),
    masks: Path = typer.Option(None, "--masks", metavar="FILE", help=MASKS_HELP),
    heads: int = typer.Option(None, "--heads", metavar="N", help=HEADS_HELP),
) -> None:
    """Convert a ticket in any supported layout into an ett ticket (or an open_lth level folder)."""
    from ettcli.ticket import output_format, read_ticket

    if force and not open_lth:
        raise EttError("--force replaces the files of an open_lth level folder; it needs --open-lth")
    if not open_lth:
        output_format(out)  # refuse an unknown suffix before reading the source
    from ettcli.arch import units

    with units(unit_pattern):
        ticket = read_ticket(src, rewind_step, masks)
    if masks_from_zeros:
        ticket = ticket.masks_from_zeros()
    if heads is not None:
        ticket = ticket.with_heads(heads)
    if open_lth:
        from ettcli.open_lth import write_open_lth

        with final_output():
            model = write_open_lth(ticket, out, force=force)
            typer.echo(f"wrote open_lth level folder {out} ({ticket.arch.name}, weights in {model.name})")
        return
    meta = {}
    if src.is_file():
        from ettcli.stfile import sha256_file

        meta.setdefault("ett.source_sha256", sha256_file(src))
    meta.setdefault("ett.source", str(src))
    ticket.metadata = {**meta, **ticket.metadata, "ett.command": command_line()}
    with final_output():
        ticket.save(out)
        note = ", a torch state dict without ett metadata" if output_format(out) == "torch" else ""
        typer.echo(f"wrote {out} ({ticket.arch.name}, sparsity {100 * ticket.sparsity():.2f}%{note})")


@handle_errors
def init(
    arch: str = typer.Argument(
        ..., help="Canonical name, e.g. cifar_resnet_20, imagenet_resnet_18, cifar_vgg_16, cifar_vit_6."
    ),
    out: Path = typer.Option(..., "-o", "--out", help="Output .safetensors file (or .pt/.pth)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation."),
    num_classes: int = typer.Option(10, "--num-classes", help="Classifier outputs (1 or more)."),
) -> None:
    """Write a freshly initialised dense ticket (its family's init: open_lth's Kaiming normal and BN gamma ~ U(0,1)
    for the CNNs, torchvision's own for cifar_vit)."""
    from ettcli.arch import parse_arch
    from ettcli.models import init_ticket
    from ettcli.ticket import output_format

    spec = parse_arch(arch, num_classes=num_classes)
    output_format(out)  # a bad -o is refused before the (slow) initialisation
    ticket = init_ticket(spec, seed)
    ticket.metadata["ett.command"] = command_line()
    with final_output():
        ticket.save(out)
        total, _ = ticket.counts()
        typer.echo(f"wrote {out} ({spec.name}, {total:,} prunable weights, dense, seed {seed})")


INSPECT_EPILOG = "Example: ett inspect r20.safetensors --json\n\n" + INSPECT_JSON_HELP
CONVERT_EPILOG = "Example: ett convert level_3/main -o r20_l3.safetensors"
INIT_EPILOG = f"Example: ett init cifar_resnet_20 -o r20.safetensors --seed 0\n\nArchitectures: {names_help()}"


def register(app: typer.Typer) -> None:
    app.command(epilog=INSPECT_EPILOG)(inspect)
    app.command(epilog=CONVERT_EPILOG)(convert)
    app.command(epilog=INIT_EPILOG)(init)
