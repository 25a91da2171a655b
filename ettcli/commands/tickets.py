"""``ett inspect``, ``ett convert`` and ``ett init``: reading, converting and creating tickets."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ettcli.arch import names_help
from ettcli.commands.common import command_line, handle_errors, stdout_console
from ettcli.errors import EttError

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
METADATA_SHOWN = 200  # characters of a metadata key or value that the table shows

INSPECT_JSON_HELP = (
    "With --json, one JSON object on stdout: file, arch (canonical name), family, stages (units per stage), "
    "width, block, num_classes, sparsity (fraction of prunable weights whose mask is 0; 0.0 without masks), "
    "density, prunable (count), kept_prunable, total_params (parameters, buffers excluded), kept_params, "
    "stage_sparsity (per stage, stem and head excluded), tensors (name, shape, dtype, numel, prunable, masked, "
    "kept, sparsity, role: stem/unit/head, stage, unit, buffer) and metadata (the file's __metadata__)."
)


def summarize(ticket, file: str) -> dict:
    """The facts that ``inspect`` shows, as one JSON-ready dict."""
    spec = ticket.arch
    report = ticket.sparsity_report()
    rows = []
    total_params = kept_params = 0
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
            table.add_row(f"[bold]{label}[/bold]", "", "", "", "", "")
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
    if info["metadata"]:
        lines = [f"  {_shown(k)}={_shown(v)}" for k, v in sorted(info["metadata"].items())]
        console.print("\n".join(["metadata:", *lines]), markup=False, highlight=False)


@handle_errors
def inspect(
    path: Path = typer.Argument(..., help="A ticket (.safetensors, .pt/.pth) or an open_lth level folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout (fields below)."),
) -> None:
    """Show a ticket's architecture, stages and units, and its per-tensor and global sparsity."""
    from ettcli.ticket import read_ticket

    ticket = read_ticket(path)
    info = summarize(ticket, str(path))
    if as_json:
        typer.echo(json.dumps(info))
    else:
        _render(info, ticket.arch)


@handle_errors
def convert(
    src: Path = typer.Argument(..., help="Any supported ticket: safetensors, .pt/.pth, open_lth level folder."),
    out: Path = typer.Option(..., "-o", "--out", help="Output .safetensors file (or folder with --open-lth)."),
    open_lth: bool = typer.Option(False, "--open-lth", help="Write an open_lth level folder instead."),
) -> None:
    """Convert a ticket in any supported layout into an ett ticket (or an open_lth level folder)."""
    from ettcli.ticket import read_ticket, write_open_lth

    ticket = read_ticket(src)
    if open_lth:
        step = ticket.metadata.get("ett.rewind_step", "0ep0it")
        write_open_lth(ticket, out, step)
        typer.echo(f"wrote open_lth level folder {out} ({ticket.arch.name}, rewind step {step})")
        return
    _check_out(out)
    meta = {}
    if src.is_file():
        from ettcli.stfile import sha256_file

        meta.setdefault("ett.source_sha256", sha256_file(src))
    meta.setdefault("ett.source", str(src))
    ticket.metadata = {**meta, **ticket.metadata, "ett.command": command_line()}
    ticket.save(out)
    typer.echo(f"wrote {out} ({ticket.arch.name}, sparsity {100 * ticket.sparsity():.2f}%)")


@handle_errors
def init(
    arch: str = typer.Argument(..., help="Canonical name, e.g. cifar_resnet_20, imagenet_resnet_18, cifar_vgg_16."),
    out: Path = typer.Option(..., "-o", "--out", help="Output .safetensors file."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation."),
    num_classes: int = typer.Option(10, "--num-classes", help="Classifier outputs (1 or more)."),
) -> None:
    """Write a freshly initialised dense ticket (open_lth init: Kaiming normal, BN gamma ~ U(0,1))."""
    from ettcli.arch import parse_arch

    spec = parse_arch(arch, num_classes=num_classes)
    _check_out(out)
    ticket = init_ticket(spec, seed)
    ticket.metadata["ett.command"] = command_line()
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


def init_ticket(spec, seed: int):
    """A dense ticket of ``spec`` with open_lth's initialisation (imports torch)."""
    from ettcli.arch import check_fits_in_memory
    from ettcli.models import build_model
    from ettcli.ticket import Ticket

    check_fits_in_memory(spec)
    try:
        model = build_model(spec, seed=seed)
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc):
            raise
        raise EttError(
            f"not enough memory to build {spec.name} ({spec.num_values:,} parameters and buffers); choose a "
            "smaller width or depth, or free memory"
        ) from None
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return Ticket.from_arrays(
        arrays,
        metadata={"ett.seed": str(seed), "ett.init": "open_lth kaiming_normal", "ett.rewind_step": "0it"},
    )


def _check_out(out: Path) -> None:
    if out.is_dir():
        raise EttError(f"{out}: is a folder; -o takes a .safetensors file path")
    if not out.parent.exists():
        raise EttError(f"{out}: folder {out.parent} does not exist; create it first")
