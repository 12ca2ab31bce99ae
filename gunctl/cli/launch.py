"""``--nproc N`` (train, predict): the same command again under torchrun on this machine.

torchrun itself (``torch.distributed.run``, its own argument parser and launcher) runs in this
process, so that a failed rank ends the job with that rank's one-line error and exit code, not
with torchrun's report of the failure (a traceback and a table); the ranks print as they do
under ``torchrun`` typed by hand.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

from gunctl.cli.console import error, note
from gunctl.cli.options import option
from gunctl.config import LaunchConfig

Nproc = Annotated[
    int | None, option(LaunchConfig, "nproc", show_default="one process, no torchrun")
]


def under_torchrun() -> bool:
    """Whether this process is one of torchrun's ranks."""
    return "WORLD_SIZE" in os.environ


def relaunch(nproc: int) -> int:
    """Re-run this very command (``sys.argv`` without ``--nproc``) as ``nproc`` ranks of a
    standalone torchrun job; the exit code of the first rank that failed, else 0."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    arguments = [
        "--standalone",
        f"--nproc_per_node={nproc}",
        "--max-restarts=0",
        "-m",
        "gunctl",
        *_without_nproc(sys.argv[1:]),
    ]
    note("running: -m torch.distributed.run " + " ".join(arguments))
    # torchrun's own notices (OMP_NUM_THREADS, rendezvous, the ranks it stops) stay quiet: a
    # rank that fails has said why in one line. Its modules set their loggers' levels when
    # imported (above), so each is quietened by name.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(get_args_parser().parse_args(arguments))
    except ChildFailedError as exc:
        rank, failure = _first_failure(exc.failures)
        if failure.exitcode > 0:
            return failure.exitcode  # the rank has said why
        signal_name = failure.signal_name()
        error(f"rank {rank} ended by {signal_name}" if signal_name else f"rank {rank} failed")
        return 128 - failure.exitcode  # killed by signal N: 128 + N, as a shell says
    except SignalException as exc:  # Ctrl-C or a stop: torchrun has ended the ranks, each of
        return 128 + int(exc.sigval)  # which said "interrupted" (130 for Ctrl-C)
    return 0


def _first_failure(failures: dict) -> tuple:
    """The rank that failed by itself (an exit code of its own), the earliest, else the first
    one ended by a signal: torchrun ends the others with SIGTERM once one has failed."""
    ordered = sorted(failures.items(), key=lambda pair: (pair[1].timestamp, pair[0]))
    return next((pair for pair in ordered if pair[1].exitcode > 0), ordered[0])


def _without_nproc(args: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept
