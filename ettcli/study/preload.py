"""Imported once by the local executor's fork server, so that each job process starts with torch and the
training core already loaded (a fork instead of a 3-5 s import per job)."""

import torch  # noqa: F401

import ettcli.lottery  # noqa: F401
import ettcli.study.runner  # noqa: F401
import ettcli.train  # noqa: F401
