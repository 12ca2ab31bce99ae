"""`gunctl predict` under torchrun: the inputs shared out across the ranks, one
predictions.jsonl in input order and one summary for the whole job.

Rank 0 reads the command line's inputs once (every rank then works on the same list, with the
same unique output names), probes the videos and deals the items out (``partition``: a video
weighs its frames, so that the ranks finish together); it claims the output folder before any
rank writes into it (which must therefore be one folder that all ranks see: on several
machines, a shared file system). Each rank detects its share with the same ``PredictRun`` as one
process, writing annotated copies into that folder and its records into a part file
(``.predictions.jsonl.part<R>-of-<N>``, each line prefixed with its item's place in the job's
input order). When every rank has finished, the counts and problem lines are gathered, and
rank 0 merges the parts into one predictions.jsonl (renamed into place whole), removes them
and reports for the whole job.

Failures: one found before any work starts (an option, the checkpoint, an --out that exists,
no readable input) is agreed by all ranks and reported once, by rank 0. A rank that fails
later (its disk is full) reports its own one line and exits; torchrun then ends the other
ranks (a rank that finds a peer gone waits for that, quietly, and so does not report a second
failure), so that none reaches the merge: no predictions.jsonl is written, and the parts being
written are left as temporary files (``.predictions.jsonl.part*.tmp``), never under a name
that says complete.

Only small Python objects cross between the ranks, over gloo whatever the device: counts,
problem lines, each rank's list of items.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from gunctl.config import PredictConfig
from gunctl.core import distributed, inputs
from gunctl.core.distributed import DistInfo
from gunctl.core.fileio import atomic_open, open_regular, remove_created
from gunctl.core.inference import load_detector
from gunctl.core.predict import (
    JSONL,
    PredictResult,
    PredictRun,
    check_out,
    claim_out,
    frames_to_predict,
    nothing_read,
    read_found,
)
from gunctl.errors import EXIT_BAD_INPUT, GunctlError, UsageError, cannot_write, first_line

log = logging.getLogger("gunctl")

_COUNTS = ("files", "images", "frames", "with_detection", "detections")
# How long a rank whose peer is gone waits for torchrun to end it before it fails by itself
# (torchrun ends every rank within a second of one failing).
_PEER_GONE_WAIT_S = 60.0


class RankFailed(GunctlError):
    """Another rank's error, as rank 0 reports it (its exit code kept)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class PeerFailed(GunctlError):
    """This rank stops because another one failed; rank 0 says why, so this one says nothing."""

    def __init__(self, exit_code: int):
        super().__init__("")
        self.exit_code = exit_code


@dataclass
class _Plan:
    """Rank 0's reading of the inputs: the items in the job's input order (images, then
    videos, as one process predicts them), each with its video's probe or None."""

    items: list[tuple[inputs.Item, Any]]
    problems: list[str]
    ignored: int
    out: Path | None
    made: list[Path] = field(default_factory=list)  # folders the claim created
    claim: int | None = None  # the locked descriptor of the claimed folder


def predict_shared(
    config: PredictConfig,
    on_progress: Callable[[int, int], None] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> PredictResult:
    """This rank's part of the job (``predict.predict``'s arguments); the counts returned are
    the whole job's, on every rank. ``on_progress`` counts this rank's share; ``on_record``
    receives the merged lines on rank 0, in input order, once every rank has finished."""
    info = distributed.from_env()
    distributed.init_process_group(info, torch.device("cpu"))  # gloo: objects only
    try:
        return _predict(config, info, on_progress, on_record)
    finally:
        distributed.destroy_process_group()


def _predict(config, info: DistInfo, on_progress, on_record) -> PredictResult:
    failure, detector, plan = None, None, None
    try:
        detector, plan = _prepare(config, info, on_record)
    except (GunctlError, OSError) as exc:
        failure = exc
    _agree(failure, info)
    if info.is_main:
        try:
            _claim(plan, config)
        except (GunctlError, OSError) as exc:
            failure = exc
    _agree(failure, info)
    try:
        started = time.perf_counter()  # rank 0's clock is the job's: from here to the merge
        dealt = _deal(plan, config, info.world_size) if info.is_main else None
        out, share = _together(distributed.scatter_objects, dealt)
        result = PredictResult(config.checkpoint, out, detector.threshold, str(detector.device))
        result.rank, result.world_size = info.rank, info.world_size
        result.runtime = detector.identity.get("runtime", "torch")
        part = out / part_name(info.rank, info.world_size) if out and config.save_json else None
        _work(config, detector, result, share, part, on_progress if info.is_main else None)
        _add_up(result, _together(distributed.gather_objects, _counts(result)), plan, info)
        if info.is_main:
            _finish(result, plan, part is not None, on_record, started)
    finally:
        if info.is_main and plan.claim is not None:
            os.close(plan.claim)
    if result.images + result.frames == 0:
        raise nothing_read(result) if info.is_main else PeerFailed(EXIT_BAD_INPUT)
    return result


def _prepare(config: PredictConfig, info: DistInfo, on_record):
    """Every rank: the checks and the model on this rank's device; rank 0: the inputs."""
    config.check()
    if on_record is not None and not config.save_json:
        raise UsageError(
            "--json under torchrun prints the merged predictions.jsonl: drop --no-save-json"
        )
    distributed.resolve_device(config.device, info)  # auto, cuda: the GPU of LOCAL_RANK
    detector = load_detector(**config.detector_kwargs())
    log.info(
        "model: %s; score threshold %.4f (%s); runtime %s; %d process(es)",
        config.checkpoint,
        detector.threshold,
        detector.threshold_origin,
        detector.identity.get("runtime", "torch"),
        info.world_size,
    )
    if not info.is_main:
        return detector, None
    out = check_out(config)
    noted = PredictResult(config.checkpoint, out, detector.threshold, str(detector.device))
    images, videos = read_found(inputs.collect(config.sources), config, noted)
    items = [(item, None) for item in images] + videos
    return detector, _Plan(items, noted.problems, noted.ignored, out)


def _claim(plan: _Plan, config: PredictConfig) -> None:
    """Rank 0, before any rank writes: the output folder, made and locked (as one process)."""
    if not plan.items:
        result = PredictResult(config.checkpoint, None, 0.0, "cpu", problems=plan.problems)
        result.ignored = plan.ignored
        raise nothing_read(result)
    if plan.out is not None:
        plan.out, plan.made, plan.claim = claim_out(plan.out, numbered=config.out is None)


def _agree(failure: BaseException | None, info: DistInfo) -> None:
    """Every rank learns whether any rank failed. Rank 0 raises its own error, or the first
    other rank's under its rank number; the others stop quietly with the same exit code."""
    said = None
    if failure is not None:
        said = (_one_line(failure), getattr(failure, "exit_code", EXIT_BAD_INPUT))
    failed = [(r, s) for r, s in enumerate(_together(distributed.gather_objects, said)) if s]
    if not failed:
        return
    rank, (line, code) = failed[0]
    if not info.is_main:
        raise PeerFailed(code)
    if failure is not None:
        raise failure
    raise RankFailed(f"rank {rank}: {line}", code)


def _together(collective, value):
    """A collective of all ranks. When one rank has failed (and said why), the others find its
    connection closed: they wait for torchrun to end them rather than report it again."""
    try:
        return collective(value)
    except RuntimeError as exc:  # gloo: "Connection closed by peer", or a timeout
        time.sleep(_PEER_GONE_WAIT_S)
        raise RankFailed(f"another rank is gone ({first_line(exc)})", EXIT_BAD_INPUT) from None


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError):  # as the CLI's error boundary words it
        return f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc)
    return str(exc)


def partition(weights: list[int], ranks: int) -> list[list[int]]:
    """The indices of ``weights`` dealt to ``ranks`` shares of about equal weight: the heaviest
    first, each to the share that weighs least so far (the lower rank on a tie), each share
    then in input order. Items of equal weight go round in turn: 0, 1, 0, 1..."""
    loads = [(0, rank) for rank in range(ranks)]
    shares: list[list[int]] = [[] for _ in range(ranks)]
    for index in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        load, rank = heapq.heappop(loads)
        shares[rank].append(index)
        heapq.heappush(loads, (load + weights[index], rank))
    return [sorted(share) for share in shares]


def _deal(plan: _Plan, config: PredictConfig, ranks: int) -> list:
    """(output folder, [(place in input order, item, video probe or None)]) for each rank."""
    weights = [
        1 if video is None else frames_to_predict(video, config.vid_stride)
        for _, video in plan.items
    ]
    return [(plan.out, [(i, *plan.items[i]) for i in share]) for share in partition(weights, ranks)]


def part_name(rank: int, world_size: int) -> str:
    """A rank's records, beside the output (hidden; never a name an annotated copy takes:
    those end in an image or video suffix)."""
    return f".{JSONL}.part{rank}-of-{world_size}"


def _work(config, detector, result, share, part: Path | None, on_progress) -> None:
    total = sum(
        1 if video is None else frames_to_predict(video, config.vid_stride) for _, _, video in share
    )
    run = PredictRun(config, detector, result, result.out, on_progress, None, total)
    run.order = {item: place for place, item, _ in share}
    images = [item for _, item, video in share if video is None]
    videos = [(item, video) for _, item, video in share if video is not None]
    run.write(images, videos, part)


def _counts(result: PredictResult) -> dict[str, Any]:
    return {**{name: getattr(result, name) for name in _COUNTS}, "problems": result.problems}


def _add_up(result: PredictResult, counts: list[dict], plan: _Plan | None, info: DistInfo):
    """The whole job's counts on every rank; rank 0 names the problems the others met (it
    named its own, and those of reading the inputs, as it met them)."""
    for name in _COUNTS:
        setattr(result, name, sum(count[name] for count in counts))
    problems = list(plan.problems) if plan is not None else []
    for rank, count in enumerate(counts):
        for line in count["problems"]:
            if rank != info.rank and info.is_main:
                log.warning("%s", line)
            problems.append(line)
    result.problems = problems
    result.ignored = plan.ignored if plan is not None else 0


def _finish(result: PredictResult, plan: _Plan, merge: bool, on_record, started: float) -> None:
    """Rank 0, once every rank has finished: the merged predictions.jsonl, no parts left."""
    out, ranks = result.out, result.world_size
    try:
        if merge and result.images + result.frames:
            merge_parts(out, ranks, on_record)
    finally:
        if merge:
            for rank in range(ranks):
                (out / part_name(rank, ranks)).unlink(missing_ok=True)
        result.seconds = time.perf_counter() - started
        if plan.made and result.images + result.frames == 0:
            shutil.rmtree(out, ignore_errors=True)  # nothing read: leave nothing behind
            remove_created(plan.made)


def merge_parts(out: Path, ranks: int, on_record=None) -> None:
    """The ranks' parts (each in input order already) merged into ``out/predictions.jsonl``,
    written whole or not at all; ``on_record`` receives each line."""
    target = out / JSONL
    try:
        with contextlib.ExitStack() as stack:
            parts = [
                stack.enter_context(open_regular(out / part_name(rank, ranks)))
                for rank in range(ranks)
            ]
            handle = stack.enter_context(atomic_open(target))
            for _, line in heapq.merge(*map(_keyed, parts), key=lambda pair: pair[0]):
                handle.write(line)
                if on_record is not None:
                    on_record(json.loads(line))
    except OSError as exc:
        raise cannot_write(target, exc) from None


def _keyed(part: BinaryIO) -> Iterator[tuple[int, bytes]]:
    for raw in part:
        place, _, line = raw.partition(b" ")
        yield int(place), line
