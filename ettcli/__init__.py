"""ett: inspect, stretch, squeeze, train and find elastic lottery tickets.

Importing ``ettcli`` is cheap: nothing here imports torch, and the library functions below are loaded on
first use::

    import ettcli
    ticket = ettcli.read_ticket("r20.safetensors")
    plan = ettcli.make_plan(ticket, "resnet-56", order="interpolate")
    ettcli.stretch(ticket, "resnet-56").save("r56.safetensors")
    ettcli.squeeze("r56.safetensors", "resnet-20", drop="interleave")
    ettcli.prune("r20_rewind.safetensors", "snip", like="r20_level10.safetensors").save("r20_snip.safetensors")
"""

__version__ = "0.1.0"

_LAZY = {
    "read_ticket": "ettcli.ticket",
    "Ticket": "ettcli.ticket",
    "ArchSpec": "ettcli.arch",
    "parse_arch": "ettcli.arch",
    "Plan": "ettcli.plan",
    "make_plan": "ettcli.plan",
    "PRESETS": "ettcli.plan",
    "stretch": "ettcli.transform",
    "squeeze": "ettcli.transform",
    "apply_plan": "ettcli.transform",
    "predict_sparsity": "ettcli.transform",
    "imp": "ettcli.lottery",
    "train_ticket": "ettcli.train",
    "TrainSettings": "ettcli.settings",
    "load_model": "ettcli.models",
    "SparsityReport": "ettcli.sparsity",
    "prune": "ettcli.pruning",
    "PruneOptions": "ettcli.prune_methods",
    "METHODS": "ettcli.prune_methods",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ettcli' has no attribute '{name}'")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
