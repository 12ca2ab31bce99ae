"""Alert rules and the tracker, fed synthetic detections: every expected value is known from
the input alone (hits, medians, times), not from the code under test."""

from __future__ import annotations

from pathlib import Path

import pytest
from watchkit import RedDetector, background, red_frames, write_clip

from gunctl.core.watch.rules import AlertRules, Track, parse_zone
from gunctl.core.watch.tracking import BoxTracker
from gunctl.errors import UsageError

BOX = (100.0, 50.0, 140.0, 90.0)


def feed(rules: AlertRules, track: Track, scores, t0=0.0, dt=0.2, box=BOX, size=(320, 240)):
    """Hits at t0, t0+dt, ...; the times at which the track alerted."""
    alerts = []
    for i, score in enumerate(scores):
        t = t0 + i * dt
        rules.hit(track, t, score, box)
        if rules.should_alert(track, t, *size):
            alerts.append(round(t, 6))
    return alerts


def test_min_hits_and_median_score():
    rules = AlertRules(min_hits=3, alert_threshold=0.5, cooldown=0)
    assert feed(rules, Track(1, "gun"), [0.9, 0.9, 0.2, 0.9]) == [0.4]  # median(.9,.9,.2)=.9
    rules = AlertRules(min_hits=3, alert_threshold=0.5, cooldown=0)
    # medians: (.3,.9,.4) .4; (.3,.9,.4,.45) .425; (+.6) .45; (+.7) .5 -> alerts at hit 6
    assert feed(rules, Track(2, "gun"), [0.3, 0.9, 0.4, 0.45, 0.6, 0.7]) == [1.0]


def test_min_hit_ratio_holds_back_a_flickering_track():
    """Hits in 3 of 7 frames (0.43 < 0.5) do not alert; a 4th hit makes 4 of 8 (0.5)."""
    rules = AlertRules(min_hits=3, alert_threshold=0.5, cooldown=0, min_hit_ratio=0.5)
    track, alerts = Track(1, "gun"), []
    for frame, hit in enumerate([1, 0, 0, 1, 0, 0, 1, 1]):
        track.frames += 1
        if hit:
            rules.hit(track, frame * 0.2, 0.9, BOX)
            if rules.should_alert(track, frame * 0.2, 320, 240):
                alerts.append(frame)
    assert alerts == [7] and track.hit_ratio == 0.5


def test_one_alert_per_track_and_cooldown_per_source():
    rules = AlertRules(min_hits=2, alert_threshold=0.5, cooldown=10)
    first, second = Track(1, "gun"), Track(2, "gun")
    assert feed(rules, first, [0.9] * 20) == [0.2]  # once, however long it stays
    # a second gun on the same source 1 s later: held back until the cooldown has passed
    assert feed(rules, second, [0.9] * 60, t0=1.0) == [10.2]
    other = AlertRules(min_hits=2, alert_threshold=0.5, cooldown=10)  # another source
    assert feed(other, Track(3, "gun"), [0.9] * 3, t0=1.0) == [1.2]


def test_zones_test_the_bottom_centre_in_pixels_and_fractions():
    door = parse_zone("door:0,0,160,0,160,240,0,240")  # the left half, in pixels
    assert door.fractions is False and door.source is None
    half = parse_zone("half@cam1:0,0,0.5,0,0.5,1,0,1")  # the same, as fractions
    assert half.fractions is True and half.source == "cam1"
    for zone in (door, half):
        rules = AlertRules(min_hits=1, alert_threshold=0.5, cooldown=0, zones=(zone,))
        # bottom centre (150, 90): inside; the box's top-right corner is outside the half
        assert feed(rules, Track(1, "gun"), [0.9], box=(130, 10, 170, 90)) == [0.0]
        assert feed(rules, Track(2, "gun"), [0.9], box=(150, 10, 190, 90)) == []  # (170, 90)
        assert rules.in_zones((130, 10, 170, 90), 320, 240) == [zone.name]
    for bad in ("door", "door:1,2,3,4", "door:a,b,c,d,e,f", ":0,0,1,0,1,1", "d:0,0,1,-1,1,1"):
        with pytest.raises(UsageError, match="--zone"):
            parse_zone(bad)


def test_a_stationary_object_found_again_does_not_alert_again():
    rules = AlertRules(min_hits=3, alert_threshold=0.5, cooldown=0)
    drill = Track(1, "gun")
    assert feed(rules, drill, [0.9] * 5) == [0.4]
    rules.ended(drill, 1.0)  # the tracker lost it
    again = Track(2, "gun")  # found again at the same place, as a new track
    assert feed(rules, again, [0.9] * 10, t0=5.0) == []
    assert again.suppressed == "stationary"
    # an object that moves through the same place is not the stationary one
    moving = Track(3, "gun")
    boxes = [(100.0 + 30 * i, 50.0, 140.0 + 30 * i, 90.0) for i in range(5)]
    alerts = []
    for i, box in enumerate(boxes):
        rules.hit(moving, 10 + i * 0.2, 0.9, box)
        alerts += [i] if rules.should_alert(moving, 10 + i * 0.2, 640, 240) else []
    assert alerts == [2]
    # a gun that alerted while moving leaves nothing behind
    rules.ended(moving, 12.0)
    assert len(rules.known_stationary) == 1


def test_tracker_keeps_one_id_for_a_moving_box_and_ends_it_after_the_timeout():
    tracker = BoxTracker(timeout_frames=3)
    ids = set()
    for i in range(6):
        box = [10 + 4 * i, 10, 50 + 4 * i, 50]
        seen = tracker.update([box], [0.9], [1])
        assert len(seen) == 1 and seen[0].hit and seen[0].box == tuple(map(float, box))
        ids.add(seen[0].id)
    assert len(ids) == 1
    ended = []
    for _ in range(6):
        seen = tracker.update([], [], [])
        assert all(not s.hit for s in seen)
        ended += tracker.ended
    assert ended == list(ids)
    seen = tracker.update([[10, 10, 50, 50], [200, 10, 240, 50]], [0.8, 0.7], [1, 1])
    assert len({s.id for s in seen}) == 2 and not ids & {s.id for s in seen}


def test_watch_a_clip_alerts_once_per_appearance(tmp_path: Path, sample_data):
    """A file read in video time: two appearances of the red square (2-4 s and 7-9 s of a
    10 fps clip, sampled at 5 fps), so exactly two `new` events at the third sampled hit of
    each, one `end` each, and both snapshots (clean and annotated) written."""
    from gunctl.config import WatchConfig
    from gunctl.core.watch.events import read_events
    from gunctl.core.watch.runner import watch

    base = background(sample_data)
    frames = red_frames(base, 100, range(20, 40))[:60] + red_frames(base, 40, range(10, 30))
    clip = write_clip(tmp_path / "cam.mkv", frames)
    out = tmp_path / "out"
    config = WatchConfig(sources=(str(clip),), names=("door",), out=out, cooldown=1.0)
    result = watch(config, detector=RedDetector())
    events = read_events(out / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds == ["stream_up", "new", "end", "new", "end", "stream_end"]
    new = [e for e in events if e["event"] == "new"]
    # first red frames: 2.0 s and 7.0 s; hits at 2.0, 2.2, 2.4 -> alert at 2.4 (and 7.4)
    assert [e["alert_frame_time"] for e in new] == pytest.approx([2.4, 7.4], abs=0.01)
    assert [e["first_frame_time"] for e in new] == pytest.approx([2.0, 7.0], abs=0.01)
    assert new[0]["track"] != new[1]["track"] and {e["source"] for e in events} == {"door"}
    assert new[0]["class"] == "gun" and new[0]["score"] == 0.9 and new[0]["hits"] == 3
    for event in new:
        for kind in ("clean", "annotated"):
            assert (out / event["snapshot"][kind]).stat().st_size > 1000
    assert result.alerts == 2 and len({e["id"] for e in events}) == len(events)
