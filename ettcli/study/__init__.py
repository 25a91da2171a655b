"""Studies: the whole elastic-ticket experiment as one resumable job graph.

A study file (TOML, :mod:`ettcli.study.spec`) names the data, the source networks that run IMP, the target
networks their tickets are stretched or squeezed to, the baselines matched to each transferred ticket, the
seeds and the training recipe. :func:`~ettcli.study.graph.plan_jobs` turns it into jobs, each named by a hash
of its inputs and settings; :func:`~ettcli.study.driver.run_study` runs the jobs that are missing through an
executor (local processes or Slurm through submitit); :mod:`ettcli.study.report` and
:mod:`ettcli.study.plot` turn ``results.jsonl`` into the paper's tables and figures.

Library use::

    from ettcli.study import load_study, plan_jobs, run_study
    study = load_study("studies/cifar10-mini.toml")
    run_study(study, "out/mini")

Nothing here imports torch; the jobs import it where they train.
"""

from __future__ import annotations

_LAZY = {
    "load_study": "ettcli.study.spec",
    "Study": "ettcli.study.spec",
    "plan_jobs": "ettcli.study.graph",
    "run_study": "ettcli.study.driver",
    "run_job": "ettcli.study.runner",
    "write_report": "ettcli.study.report",
    "plot_study": "ettcli.study.plot",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ettcli.study' has no attribute '{name}'")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
