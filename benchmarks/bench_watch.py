"""``gunctl watch`` on generated CCTV-like clips: alerts per gun appearance, false alerts,
seconds to alert, latency behind live and CPU fps; frame-by-frame detection as comparison.

Clips (seeded): a static 640x360 scene tiled from gun-free parts of the sample's images; guns
cut from the sample's labelled boxes are pasted in for known intervals, moving slowly (a
person carrying one); gun-free intervals hold distractors (other objects cut from the same
images) moving the same way. Each frame carries its index in a row of black/white blocks in
the top-left corner, so that a detector can be keyed to the ground truth after H.264.

Detectors:
- ``sim`` (default, and the only meaningful one when no trained model is at hand): per
  sampled frame it finds a present gun with probability ``--recall`` (score ~ N(0.72, 0.15),
  box jittered by 4 % of its size), a present distractor with probability ``--fp-distractor``
  (score ~ U(0.35, 0.75)) and a random background box with probability ``--fp-background``
  (score ~ U(0.3, 0.6)). The rows measure tracking and the alert rules, not a model.
- ``--weights PATH``: a real checkpoint through the inference core, for CPU fps and latency
  (and, with a trained model, the real alert figures).

Rows: the alert rules at several (min-hits, alert-threshold) pairs, the defaults marked; the
frame-by-frame row counts every sampled frame with a detection at or above the threshold as
an alert (what a detector without tracking sends). Then norfair against ByteTrack (the
``trackers`` package, when importable) on the same detections: track fragments per gun
appearance (1 is ideal) and time per update.

    .venv/bin/python benchmarks/bench_watch.py [--clips 3] [--weights CKPT] [--json FILE]
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import base_parser, environment, print_table, write_json

SIZE = (640, 360)
FPS = 10
CODE_BITS, CODE_BLOCK = 14, 8  # the frame index, as 8x8 px blocks in the top-left corner


@dataclass
class Clip:
    path: Path
    seconds: float
    guns: list[tuple[float, float]]  # appearance intervals (s)
    frames: dict[int, dict] = field(default_factory=dict)  # index -> {"guns": [...], "others"}


# --- the scene ---------------------------------------------------------------------------------


def _labelled(data: Path) -> list[tuple[Path, list[tuple[int, int, int, int]]]]:
    items = []
    for label in sorted((data / "Labels").glob("*.txt")):
        lines = label.read_text().split("\n")[1:]
        boxes = [tuple(int(float(v)) for v in line.split()[:4]) for line in lines if line.strip()]
        image = next((data / "Images").glob(label.stem + ".*"), None)
        if image is not None and boxes:
            items.append((image, boxes))
    return items


def _crops(data: Path, rng: random.Random):
    """Guns (labelled boxes) and gun-free patches (for the scene and the distractors)."""
    from PIL import Image

    guns, free = [], []
    for image_path, boxes in rng.sample(_labelled(data), 80):
        with Image.open(image_path) as image:
            image = image.convert("RGB")
        for x1, y1, x2, y2 in boxes:
            if x2 - x1 >= 24 and y2 - y1 >= 16:
                guns.append(image.crop((x1, y1, x2, y2)))
        w, h = image.size
        for _ in range(3):
            pw, ph = rng.randint(40, 90), rng.randint(30, 70)
            if pw >= w or ph >= h:
                continue
            x, y = rng.randint(0, w - pw), rng.randint(0, h - ph)
            if all(x + pw <= a or x >= c or y + ph <= b or y >= d for a, b, c, d in boxes):
                free.append(image.crop((x, y, x + pw, y + ph)))
    return guns, free


def _scene(free, rng: random.Random):
    from PIL import Image, ImageFilter

    scene = Image.new("RGB", SIZE)
    tile = (160, 120)
    for x in range(0, SIZE[0], tile[0]):
        for y in range(0, SIZE[1], tile[1]):
            scene.paste(rng.choice(free).resize(tile), (x, y))
    return scene.filter(ImageFilter.GaussianBlur(2))


def _stamp(pixels: np.ndarray, index: int) -> None:
    for bit in range(CODE_BITS):
        value = 255 if index >> bit & 1 else 0
        pixels[0:CODE_BLOCK, bit * CODE_BLOCK : (bit + 1) * CODE_BLOCK] = value


def read_stamp(image) -> int:
    """The frame index from a decoded frame (uint8 3xHxW tensor)."""
    index = 0
    for bit in range(CODE_BITS):
        block = image[:, 2 : CODE_BLOCK - 2, bit * CODE_BLOCK + 2 : (bit + 1) * CODE_BLOCK - 2]
        index |= int(block.float().mean() > 127) << bit
    return index


def make_clip(folder: Path, data: Path, seed: int, seconds: float = 60.0) -> Clip:
    """Three gun appearances of 4-8 s and three distractor intervals, in alternation."""
    import av

    rng = random.Random(seed)
    guns, free = _crops(data, rng)
    scene = _scene(free, rng)
    plan, t = [], 3.0
    for _ in range(3):
        for kind in ("gun", "other"):
            length = rng.uniform(4, 8)
            plan.append((kind, t, t + length, rng.choice(guns if kind == "gun" else free)))
            t += length + rng.uniform(4, 7)
    seconds = max(seconds, t)
    clip = Clip(folder / f"clip{seed}.mkv", seconds, [(a, b) for k, a, b, _ in plan if k == "gun"])
    with av.open(str(clip.path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        stream.codec_context.gop_size = FPS
        stream.options = {"preset": "ultrafast", "crf": "20"}
        for index in range(int(seconds * FPS)):
            now, frame = index / FPS, scene.copy()
            truth = {"guns": [], "others": []}
            for kind, start, end, crop in plan:
                if start <= now < end:
                    scale = 1.6 if kind == "gun" else 1.2
                    piece = crop.resize((int(crop.width * scale), int(crop.height * scale)))
                    x = int(60 + (now - start) / (end - start) * (SIZE[0] - 200))
                    y = int(SIZE[1] * 0.45)
                    frame.paste(piece, (x, y))
                    box = (x, y, x + piece.width, y + piece.height)
                    truth["guns" if kind == "gun" else "others"].append(box)
            pixels = np.asarray(frame).copy()
            _stamp(pixels, index)
            clip.frames[index] = truth
            video_frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))
    return clip


# --- detectors ---------------------------------------------------------------------------------


class SimDetector:
    """Detections from the ground truth with a detector's errors (see the module's docstring);
    the same frame always gets the same detections (seeded by clip and frame)."""

    threshold, threshold_origin = 0.5, "simulated"

    def __init__(self, clip: Clip, recall: float, fp_distractor: float, fp_background: float):
        self.clip, self.recall = clip, recall
        self.fp_distractor, self.fp_background = fp_distractor, fp_background
        self.seen: dict[int, dict] = {}  # frame index -> its detections (for frame-by-frame)

    def detections(self, index: int) -> dict:
        rng = random.Random(f"{self.clip.path.name}:{index}")  # str seeds are stable
        truth = self.clip.frames.get(index, {"guns": [], "others": []})
        boxes, scores, kinds = [], [], []
        for box in truth["guns"]:
            if rng.random() < self.recall:
                boxes.append(_jitter(box, rng))
                scores.append(min(0.99, max(0.05, rng.gauss(0.72, 0.15))))
                kinds.append("gun")
        for box in truth["others"]:
            if rng.random() < self.fp_distractor:
                boxes.append(_jitter(box, rng))
                scores.append(rng.uniform(0.35, 0.75))
                kinds.append("other")
        if rng.random() < self.fp_background:
            x, y = rng.uniform(0, SIZE[0] - 60), rng.uniform(0, SIZE[1] - 40)
            boxes.append((x, y, x + rng.uniform(20, 60), y + rng.uniform(15, 40)))
            scores.append(rng.uniform(0.3, 0.6))
            kinds.append("background")
        return {"boxes": boxes, "scores": scores, "kinds": kinds}

    def detect(self, images, score_threshold=None, max_detections=None):
        threshold = self.threshold if score_threshold is None else score_threshold
        records = []
        for image in images:
            index = read_stamp(image)
            found = self.detections(index)
            keep = [i for i, s in enumerate(found["scores"]) if s >= threshold]
            self.seen[index] = {k: [found[k][i] for i in keep] for k in found}
            records.append(
                {
                    "width": SIZE[0],
                    "height": SIZE[1],
                    "boxes": [[round(v, 2) for v in found["boxes"][i]] for i in keep],
                    "scores": [round(found["scores"][i], 5) for i in keep],
                    "labels": ["gun"] * len(keep),
                    "label_ids": [1] * len(keep),
                }
            )
        return records


def _jitter(box, rng: random.Random):
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    return tuple(v + rng.gauss(0, 0.04) * s for v, s in zip(box, (w, h, w, h), strict=True))


# --- runs --------------------------------------------------------------------------------------


def run_watch(clip: Clip, detector, out: Path, realtime: bool = False, **rules) -> dict:
    from gunctl.config import WatchConfig
    from gunctl.core.watch.events import read_events
    from gunctl.core.watch.runner import watch

    statuses = []
    config = WatchConfig(sources=(str(clip.path),), out=out, realtime=realtime, **rules)
    started, cpu = time.perf_counter(), time.process_time()
    result = watch(config, detector=detector, on_status=lambda rows: statuses.extend(rows))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    events = read_events(out / "events.jsonl")
    status = result.sources[0]
    latencies = [row.latency for row in statuses if row.latency is not None]
    return {
        "events": [e for e in events if e["event"] == "new"],
        "frames": status.frames_detected,
        "wall": wall,
        "cpu": cpu,
        "latency": statistics.median(latencies) if latencies else status.latency,
    }


def score_alerts(clip: Clip, alerts: list[dict]) -> dict:
    """Alerts per appearance (by the alerted track's first frame), false alerts (a track that
    started outside every appearance), seconds from an appearance's start to its first alert."""
    per, delays, false = [0] * len(clip.guns), [], 0
    for alert in alerts:
        start = alert["first_frame_time"]
        hit = [i for i, (a, b) in enumerate(clip.guns) if a - 0.05 <= start <= b]
        if not hit:
            false += 1
            continue
        i = hit[0]
        per[i] += 1
        if per[i] == 1:
            delays.append(alert["alert_frame_time"] - clip.guns[i][0])
    return {"per_appearance": per, "false": false, "delays": delays}


def frame_by_frame(clip: Clip, detector: SimDetector) -> dict:
    per, false = [0] * len(clip.guns), 0
    delays: dict[int, float] = {}
    for index, found in sorted(detector.seen.items()):
        now = index / FPS
        for kind in found["kinds"]:
            hit = [i for i, (a, b) in enumerate(clip.guns) if a <= now < b]
            if kind == "gun" and hit:
                per[hit[0]] += 1
                delays.setdefault(hit[0], now - clip.guns[hit[0]][0])
            else:
                false += 1
    return {"per_appearance": per, "false": false, "delays": list(delays.values())}


def tracker_comparison(clips: list[Clip], args) -> list[list]:
    """Fragments per appearance (distinct track ids on the true gun's detections) and time per
    update, norfair (gunctl's glue) against ByteTrack (``trackers``) on the same detections."""
    rows = []
    makers = {"norfair (gunctl)": _norfair_ids}
    try:
        import supervision  # noqa: F401
        import trackers  # noqa: F401

        makers["ByteTrack (trackers)"] = _bytetrack_ids
    except ImportError as exc:
        print(f"ByteTrack not measured: {exc}")
    for name, ids_of in makers.items():
        fragments, spent, updates = [], 0.0, 0
        for clip in clips:
            sim = SimDetector(clip, args.recall, args.fp_distractor, args.fp_background)
            step = round(FPS / 5)
            frames = [sim.detections(i) for i in range(0, len(clip.frames), step)]
            for found in frames:
                keep = [i for i, s in enumerate(found["scores"]) if s >= 0.5]
                for key in found:
                    found[key] = [found[key][i] for i in keep]
            started = time.perf_counter()
            ids = ids_of(frames)
            spent += time.perf_counter() - started
            updates += len(frames)
            for a, b in clip.guns:
                seen = {
                    track
                    for k, (found, tracks) in enumerate(zip(frames, ids, strict=True))
                    if a <= k * step / FPS < b
                    for kind, track in zip(found["kinds"], tracks, strict=True)
                    if kind == "gun" and track is not None
                }
                fragments.append(len(seen))
        rows.append(
            [
                name,
                round(statistics.mean(fragments), 2),
                max(fragments),
                round(spent / updates * 1e6, 1),
            ]
        )
    return rows


def _norfair_ids(frames) -> list[list]:
    from gunctl.core.watch.tracking import BoxTracker

    tracker, out = BoxTracker(timeout_frames=10), []
    for found in frames:
        seen = tracker.update(found["boxes"], found["scores"], [1] * len(found["boxes"]))
        by_box = {s.box: s.id for s in seen if s.hit}
        out.append([by_box.get(tuple(float(v) for v in b)) for b in found["boxes"]])
    return out


def _bytetrack_ids(frames) -> list[list]:
    import supervision as sv
    import trackers

    tracker = trackers.ByteTrackTracker(lost_track_buffer=10, frame_rate=5)
    out = []
    for found in frames:
        n = len(found["boxes"])
        detections = sv.Detections(
            xyxy=np.array(found["boxes"], dtype=float).reshape(n, 4),
            confidence=np.array(found["scores"], dtype=float),
            class_id=np.ones(n, dtype=int),
        )
        result = tracker.update(detections)
        ids = {}
        for box, track in zip(result.xyxy, result.tracker_id, strict=True):
            ids[tuple(np.round(box, 3))] = int(track) if track >= 0 else None
        out.append([ids.get(tuple(np.round(np.array(b, dtype=float), 3))) for b in found["boxes"]])
    return out


def _cell_per(per: list[int]) -> str:
    return "/".join(map(str, per))


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--weights", type=Path, default=None, help="a real checkpoint")
    parser.add_argument("--recall", type=float, default=0.75)
    parser.add_argument("--fp-distractor", type=float, default=0.25)
    parser.add_argument("--fp-background", type=float, default=0.05)
    args = parser.parse_args()
    from gunctl.config import WatchConfig

    defaults = WatchConfig()
    figures: dict = {
        "environment": environment(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp:
        root = Path(tmp)
        clips = [make_clip(root, args.data, seed) for seed in range(args.clips)]
        print(
            f"{len(clips)} clips, {sum(len(c.guns) for c in clips)} gun appearances, "
            f"{sum(c.seconds for c in clips):.0f} s of video at {FPS} fps, {SIZE[0]}x{SIZE[1]}"
        )
        table = []
        grid = [
            (1, 0.0, 0.5),
            (2, 0.0, 0.5),
            (3, 0.0, 0.5),
            (3, 0.0, 0.6),
            (5, 0.0, 0.5),
            (3, 0.4, 0.5),
            (3, 0.5, 0.4),
            (3, 0.5, 0.5),
            (3, 0.5, 0.6),
            (3, 0.6, 0.5),
        ]
        default = (defaults.min_hits, defaults.min_hit_ratio, defaults.alert_threshold)
        for min_hits, ratio, threshold in grid:
            scores, fbf = [], []
            for clip in clips:
                sim = SimDetector(clip, args.recall, args.fp_distractor, args.fp_background)
                out = root / f"out-{clip.path.stem}-{min_hits}-{ratio}-{threshold}"
                run = run_watch(
                    clip,
                    sim,
                    out,
                    min_hits=min_hits,
                    min_hit_ratio=ratio,
                    alert_threshold=threshold,
                )
                scores.append(score_alerts(clip, run["events"]))
                if (min_hits, ratio, threshold) == default:
                    fbf.append(frame_by_frame(clip, sim))
            label = f"tracked, hits {min_hits}, ratio {ratio}, median >= {threshold}"
            if (min_hits, ratio, threshold) == default:
                label += " (defaults)"
            table.append(_row(label, scores))
            if fbf:
                frame_row = _row("frame by frame, no tracking (score >= 0.5)", fbf)
        table.append(frame_row)
        print_table(
            ["rule", "alerts per appearance", "exactly 1", "false alerts", "median s to alert"],
            table,
            title=f"alerts ({args.clips} clips, simulated detector: recall {args.recall}, "
            f"distractor FP {args.fp_distractor}, background FP {args.fp_background})",
        )
        figures["alerts"] = table
        trackers_rows = tracker_comparison(clips, args)
        print_table(
            ["tracker", "fragments per appearance", "worst", "us per update"],
            trackers_rows,
            title="trackers on the same detections (5 fps, IoU matching, 2 s to lose a track)",
        )
        figures["trackers"] = trackers_rows
        if args.weights is not None:
            figures["model"] = _model_rows(clips[0], args.weights, root)
    write_json(args.json, figures)


def _row(label: str, scores: list[dict]) -> list:
    per = [n for s in scores for n in s["per_appearance"]]
    delays = [d for s in scores for d in s["delays"]]
    return [
        label,
        _cell_per(per),
        f"{sum(n == 1 for n in per)}/{len(per)}",
        sum(s["false"] for s in scores),
        round(statistics.median(delays), 2) if delays else "-",
    ]


def _model_rows(clip: Clip, weights: Path, root: Path) -> dict:
    """A real checkpoint through the inference core: CPU fps reading as fast as it can, and
    latency behind live with --realtime (the clip as a camera delivers it)."""
    from gunctl.core.inference import load_detector

    detector = load_detector(weights, device="cpu")
    fast = run_watch(clip, detector, root / "model-fast")
    live = run_watch(clip, detector, root / "model-live", realtime=True)
    rows = [
        ["as fast as it goes (file)", fast["frames"], round(fast["frames"] / fast["wall"], 2),
         round(fast["frames"] / fast["cpu"], 2), "-"],
        ["--realtime (as a camera)", live["frames"], round(live["frames"] / live["wall"], 2),
         round(live["frames"] / live["cpu"], 2),
         round(live["latency"], 3) if live["latency"] is not None else "-"],
    ]  # fmt: skip
    print_table(
        ["mode", "frames detected", "fps (wall)", "fps per CPU-s", "latency behind live (s)"],
        rows,
        title=f"{weights} ({detector.identity.get('model')}) on {SIZE[0]}x{SIZE[1]}, "
        f"{len(fast['events'])} alerts",
    )
    return {"rows": rows, "alerts_fast": score_alerts(clip, fast["events"])}


if __name__ == "__main__":
    main()
