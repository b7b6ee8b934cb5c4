"""Instrument identities over time: frame-to-frame association, type votes per track, tip smoothing.

Association is one-to-one (Hungarian) on mask overlap and tip distance: cost = (1 - IoU of the
network-resolution masks) + tip distance / max_distance; a pair is allowed when the masks overlap or
the tips are closer than max_distance (the node may skip frames, so masks of a fast tool may not
overlap). Unmatched instruments start new tracks; a track missed for more than `max_missed`
processed frames is retired. A track's type is the vote accumulated over its whole life: an
instrument does not change type mid-procedure; so is its score (mean P(instrument)), by which a
frame's instruments are ranked when only some may be published (PerceptionConfig.max_instruments).

With `min_frames` > 1 a new track is tentative until it has been seen in that many consecutive frames
(the instruments of the tracker's first frame excepted: there is no history to doubt them); a
tentative track has no id yet, and one missed frame retires it. A speck of tissue that looks like
metal for a frame then never becomes an instrument, at the price of a new instrument appearing
min_frames - 1 frames late.
"""
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

_INFEASIBLE = 1e6
MAX_TRACK_ID = 65535  # ids are published as uint16 (instance images, tips cloud)
PALETTE_SIZE = 10  # distinct overlay colours (visualize.INSTRUMENT_COLORS)


class OneEuroFilter:
    """One-Euro filter (Casiez et al., CHI 2012) for a vector signal: a low-pass filter whose cutoff rises
    with speed, so a still tip stops jittering while a moving one lags little.
    min_cutoff (Hz): smoothing at rest (lower = smoother); beta: how fast the cutoff rises with speed
    (higher = less lag); d_cutoff (Hz): smoothing of the speed estimate."""

    def __init__(self, min_cutoff=1.0, beta=0.05, d_cutoff=1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.value = self.speed = self.time = None

    @staticmethod
    def _alpha(cutoff, dt):
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, value, t):
        value = np.asarray(value, np.float64)
        if not np.all(np.isfinite(value)):
            return value  # nothing to smooth; keep the state for the next finite value
        if self.value is None or t <= self.time:
            self.value, self.speed, self.time = value, np.zeros_like(value), t
            return value
        dt = t - self.time
        speed = (value - self.value) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self.speed = a_d * speed + (1 - a_d) * self.speed
        cutoff = self.min_cutoff + self.beta * float(np.linalg.norm(self.speed))
        a = self._alpha(cutoff, dt)
        self.value = a * value + (1 - a) * self.value
        self.time = t
        return self.value


@dataclass(eq=False)  # tracks are compared by identity (they hold arrays)
class Track:
    track_id: int  # 0 while tentative (see Tracker's min_frames)
    mask: np.ndarray  # network-resolution bool mask of its last detection
    tip: tuple  # last (u, v), input px
    votes_sum: np.ndarray | None  # summed per-frame type votes
    frames: int = 1  # frames whose vote is in votes_sum
    missed: int = 0
    colour: int = 0  # overlay palette index, kept for the track's life
    filters: dict = field(default_factory=dict)
    hits: int = 1  # consecutive frames seen since it started (counted while tentative)
    score_sum: float = 0.0  # summed per-frame scores (mean P(instrument)) of its detections
    scored: int = 0  # frames whose score is in score_sum

    @property
    def confirmed(self):
        return self.track_id > 0

    def type_vote(self):
        """(type id 1..T, score) of the accumulated vote, or (None, 0.0) without a type head."""
        if self.votes_sum is None or self.frames == 0:
            return None, 0.0
        mean = self.votes_sum / self.frames
        best = int(np.argmax(mean))
        return best + 1, float(mean[best])

    def mean_score(self):
        """Mean P(instrument) of its detections over its life (0.0 before any was scored)."""
        return self.score_sum / self.scored if self.scored else 0.0

    def add_score(self, score):
        if math.isfinite(score):  # a region scored NaN (broken probabilities) must not poison the mean
            self.score_sum += score
            self.scored += 1


class Tracker:
    """Assigns stable ids to the instruments of successive frames of one camera."""

    def __init__(self, *, max_missed=5, max_distance=0.2, min_frames=1, smoothing=False, min_cutoff=1.0, beta=0.05):
        """max_distance: tip distance gate as a fraction of the image diagonal; min_frames: consecutive
        frames a new track must be seen before it gets an id (1: at once)."""
        self.max_missed = int(max_missed)
        self.min_frames = int(min_frames)
        self.frames_seen = 0
        self.max_distance = float(max_distance)
        self.smoothing = smoothing
        self.filter_args = dict(min_cutoff=min_cutoff, beta=beta)
        self.tracks = []
        self._next_id = 1

    def reset(self):
        self.tracks = []
        self.frames_seen = 0

    def _new_id(self):
        """The next free id (1..65535, wrapping): an id still held by a live track is skipped."""
        live = {t.track_id for t in self.tracks}
        while self._next_id in live:
            self._next_id = self._next_id % MAX_TRACK_ID + 1
        track_id = self._next_id
        self._next_id = self._next_id % MAX_TRACK_ID + 1
        return track_id

    def _new_colour(self, live_tracks):
        """A palette index no live track uses (the least used one when all are taken)."""
        used = [t.colour for t in live_tracks]
        return min(range(PALETTE_SIZE), key=lambda c: (used.count(c), c))

    def _confirm(self, track, live_tracks):
        track.track_id = self._new_id()
        others = [t for t in live_tracks if isinstance(t, Track) and t.confirmed and t is not track]
        track.colour = self._new_colour(others)

    def update(self, instruments, instance_map, image_size):
        """Associates this frame's instruments (inference/instruments.py) with the tracks; returns the
        Track of each instrument, in the instruments' order (tentative ones, `confirmed` False, included)."""
        self.frames_seen += 1
        diagonal = math.hypot(*image_size)
        gate = self.max_distance * diagonal
        masks = [instance_map == inst.index for inst in instruments]
        areas = [np.count_nonzero(mask) for mask in masks]  # counted once, not once per track
        tracks = [t for t in self.tracks if t.mask.shape == instance_map.shape]  # a new input size: new tracks
        cost = np.full((len(tracks), len(instruments)), _INFEASIBLE)
        for i, track in enumerate(tracks):
            area_t = np.count_nonzero(track.mask)
            for j, (inst, mask, area) in enumerate(zip(instruments, masks, areas)):
                inter = np.count_nonzero(track.mask & mask)
                iou = inter / max(1, area_t + area - inter)
                distance = math.hypot(track.tip[0] - inst.tip[0], track.tip[1] - inst.tip[1])
                if iou > 0 or distance < gate:
                    cost[i, j] = (1.0 - iou) + (distance / gate if gate > 0 else 0.0)
        assigned = [None] * len(instruments)
        matched_tracks = set()
        if cost.size:
            for i, j in zip(*linear_sum_assignment(cost)):
                if cost[i, j] < _INFEASIBLE:
                    assigned[j] = tracks[i]
                    matched_tracks.add(i)
        for j, (inst, mask) in enumerate(zip(instruments, masks)):
            track = assigned[j]
            votes = None if inst.type_votes is None else np.asarray(inst.type_votes, np.float64)
            if votes is not None and not np.all(np.isfinite(votes)):
                votes = None  # a broken vote (NaN probabilities) must not poison the track's type
            if track is None:
                track = Track(0, mask, inst.tip, votes, frames=int(votes is not None))
                assigned[j] = track
            else:
                track.mask, track.tip, track.missed = mask, inst.tip, 0
                track.hits += 1
                if votes is not None:
                    track.votes_sum = votes if track.votes_sum is None else track.votes_sum + votes
                    track.frames += 1
            track.add_score(inst.score)
            if not track.confirmed and (track.hits >= self.min_frames or self.frames_seen == 1):
                self._confirm(track, tracks + assigned)
        for i, track in enumerate(tracks):
            if i not in matched_tracks:
                track.missed += 1
        # A tentative track is a candidate only while it is seen in every frame.
        alive = [t for i, t in enumerate(tracks)
                 if i in matched_tracks or (t.confirmed and t.missed <= self.max_missed)]
        new = [t for t in assigned if t not in alive]
        self.tracks = alive + new
        return assigned

    def smooth(self, track, key, value, t):
        """`value` (2-D tip, 3-D tip, ...) through the track's One-Euro filter for `key` when smoothing is on."""
        if not self.smoothing or t is None:
            return value
        filt = track.filters.setdefault(key, OneEuroFilter(**self.filter_args))
        return tuple(float(x) for x in filt(value, t))
