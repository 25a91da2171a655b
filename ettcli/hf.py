"""Hugging Face model folders: read as tickets, and written at a new depth for ``from_pretrained``.

A model folder holds ``config.json`` and its weights as ``model.safetensors``, or as shards listed by
``model.safetensors.index.json`` (``weight_map``: tensor name -> shard file). Reading never imports torch:
every tensor stays a byte range of its shard until it is needed. The config travels with the ticket as
``ett.hf_config`` metadata (carried through transforms and ``ett convert``), so that a transformed ticket
can be written back as a model folder: the family's layer-count field (``num_hidden_layers``, GPT-2's
``n_layer``) set to the target depth, every pruned weight at zero, the folder's other files (tokenizer,
generation config) copied from the source folder. The folder is written beside its final path and renamed
into place, so an interrupted write leaves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ettcli.errors import EttError, commit_point
from ettcli.stfile import Source, read_header, write_error, write_file

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
WEIGHT_FILES = (WEIGHTS, INDEX)


def is_hf_folder(path: Path) -> bool:
    """Whether ``path`` is a folder with config.json and safetensors weights (one file or an index)."""
    return path.is_dir() and (path / CONFIG).is_file() and any((path / f).is_file() for f in WEIGHT_FILES)


def read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise EttError(f"{folder / CONFIG}: not a readable JSON config ({exc}); save the model again") from None
    if not isinstance(config, dict):
        raise EttError(f"{folder / CONFIG}: holds {type(config).__name__}, not a JSON object")
    return config


def read_tensors(folder: Path) -> dict[str, Source]:
    """Every tensor of the folder's weights as a byte range of its file (shards joined by the index)."""
    if (folder / WEIGHTS).is_file():
        header = read_header(folder / WEIGHTS)
        return {name: Source.of_file(folder / WEIGHTS, info) for name, info in header.tensors.items()}
    index_path = folder / INDEX
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EttError(
            f"{index_path}: not a safetensors index with a weight_map ({exc}); save the model again"
        ) from None
    tensors: dict[str, Source] = {}
    headers = {}
    for name, shard in weight_map.items():
        path = folder / str(shard)
        if Path(str(shard)).name != str(shard) or not path.is_file():
            raise EttError(f"{index_path}: '{name}' is in shard '{shard}', which is not a file in {folder}")
        if shard not in headers:
            headers[shard] = read_header(path).tensors
        if name not in headers[shard]:
            raise EttError(f"{index_path}: '{name}' is listed in shard '{shard}' but that file does not hold it")
        tensors[name] = Source.of_file(path, headers[shard][name])
    return tensors


def layers_field(family, config: dict, where: str) -> str:
    """The config field that holds the layer count, as the family names it."""
    field = getattr(family, "layers_field", None)
    if not field:
        raise EttError(f"{where}: {family.name} is not a Hugging Face family; --hf-folder writes transformers models")
    if field not in config:
        raise EttError(f"{where}: the config has no '{field}' (the layer count of a {family.name}); check config.json")
    return field


def hf_config(ticket) -> dict:
    """The source model's config carried by a ticket, or an EttError saying where to get it."""
    text = ticket.metadata.get("ett.hf_config")
    if not text:
        raise EttError(
            "--hf-folder needs the model's config.json: read the source from a Hugging Face model folder "
            "(config.json + model.safetensors), or a ticket converted from one"
        )
    try:
        return json.loads(text)
    except ValueError:
        raise EttError("the ticket's ett.hf_config metadata is not JSON; convert the model folder again") from None


def write_hf_folder(ticket, out: str | os.PathLike, source: Path | None = None) -> Path:
    """Write ``ticket`` as a transformers model folder at ``out`` (a new or empty folder).

    ``config.json`` is the source config with the layer count set to the ticket's depth; ``model.safetensors``
    holds every tensor with its pruned weights at zero (no masks: ``ett convert --masks-from-zeros`` finds
    them again); other files of ``source`` (a model folder) are copied.
    """
    out = Path(out)
    spec = ticket.arch
    config = hf_config(ticket)
    field = layers_field(spec.fam, config, str(out))
    depth = sum(spec.stages)
    old = config[field]
    config[field] = depth
    types = config.get("layer_types")
    if isinstance(types, list) and len(types) != depth:
        if len(set(map(str, types))) > 1:
            raise EttError(f"{out}: the config's layer_types differ by layer ({types[:4]}...); ett cannot resize them")
        config["layer_types"] = types[:1] * depth
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EttError(f"{out}: exists and is not an empty folder; choose a new folder for --hf-folder")
    if not out.parent.is_dir():
        raise EttError(f"{out}: its folder {out.parent} does not exist; create it or choose another path")
    import numpy as np

    entries = []
    for name, src in ticket.tensors.items():
        if name in ticket.masks:
            values = np.array(ticket.array(name))
            values[~ticket.masks[name].array] = 0
            src = Source.of_array(values)
        entries.append((name, src))
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise write_error(out, exc) from None
    try:
        if source is not None and is_hf_folder(source):
            for f in sorted(source.iterdir()):
                if (
                    f.is_file()
                    and f.name != CONFIG
                    and not f.name.startswith(("model.safetensors", "model-", "pytorch_model"))
                ):
                    shutil.copy2(f, tmp / f.name)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        write_file(tmp / WEIGHTS, entries, {"format": "pt", "ett.source_layers": str(old)})
        commit_point()
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise write_error(out, exc) from None
        raise
    return out
