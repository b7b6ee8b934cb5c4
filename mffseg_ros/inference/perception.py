"""The post-processing the node (and any other caller) runs on segmentation results, without ROS:
instruments, voted and tracked types, tips, stereo 3-D tips and shaft poses, and the images to publish.

    perception = InstrumentPerception(PerceptionConfig())
    frame = perception.process(result_left, result_right, calibration, stamp_s)
    frame.instruments            # [TrackedInstrument], ordered by track id
    frame.labels_image()         # input-resolution images, computed on demand

A caller that renders the 2-D images anyway (the node) splits process() in two, so that the right eye's
instrument search runs while those images are drawn, and the input-resolution maps they need (outline,
parts) are made while the left eye is searched:

    frame = perception.begin(result_left, result_right, calibration, stamp_s, images_first=True,
                             prepare=('parts',))
    frame.labels_image()         # 2-D outputs: ready now
    frame = perception.finish(frame)  # waits for the right eye; adds the 3-D tips and axes

and on the CPU searches the left eye while the right eye is in the network:

    search = functools.partial(perception.search, prepare=('parts',))
    result_left, result_right, searched = segmenter.segment_pair(rgb_left, rgb_right, search)
    frame = perception.begin(result_left, result_right, calibration, stamp_s, images_first=True,
                             searched=searched)
"""
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from mffseg_ros.inference.instruments import (
    DEFAULT_MIN_AREA,
    DEFAULT_MIN_PART_AREA,
    DEFAULT_MIN_SCORE,
    SOURCE_CODES,
    UNKNOWN_TYPE,
    find_instruments,
)
from mffseg_ros.inference.stereo import match_instruments
from mffseg_ros.inference.tip_disparity import tip_disparity
from mffseg_ros.inference.tracking import Tracker

NAN3 = (math.nan, math.nan, math.nan)
LABEL_MODES = ('instance', 'pixel')


@dataclass(frozen=True)
class PerceptionConfig:
    """min_instance_area, min_part_area: input px. min_instrument_score: a region whose mean P(instrument)
    is below it is no instrument. min_type_score: below it a type is UNKNOWN_TYPE.
    labels_mode: 'instance' paints each instrument with its voted type, 'pixel' the raw per-pixel types.
    track_max_missed: processed frames a track survives unseen; track_max_distance: tip gate, fraction
    of the image diagonal; track_min_frames: consecutive frames a new instrument must be seen before it
    is published (1: at once; inference/tracking.py). max_instruments: at most this many instruments
    published per frame (0: no limit), those whose tracks are the most believed (mean score over the
    track's life): a robot with two instrument arms cannot show three. smoothing: One-Euro filter on
    the tips (min_cutoff Hz, beta). min_depth, max_depth (m), max_epipolar_px (input px),
    max_area_ratio: stereo matching."""
    min_instance_area: float = DEFAULT_MIN_AREA
    min_part_area: float = DEFAULT_MIN_PART_AREA
    min_instrument_score: float = DEFAULT_MIN_SCORE
    min_type_score: float = 0.5
    labels_mode: str = 'instance'
    track_max_missed: int = 5
    track_max_distance: float = 0.2
    track_min_frames: int = 1
    max_instruments: int = 0
    smoothing: bool = False
    smoothing_min_cutoff: float = 1.0
    smoothing_beta: float = 0.05
    min_depth: float = 0.01
    max_depth: float = 0.3
    max_epipolar_px: float = 10.0
    max_area_ratio: float = 3.0


@dataclass
class TrackedInstrument:
    """One instrument of a processed frame, as published (positions in input pixels, metres)."""
    track_id: int
    type_id: int  # 1..7, or UNKNOWN_TYPE
    type_score: float  # the track's accumulated vote for type_id
    score: float  # mean P(instrument) over its pixels
    area_px: float
    tip: tuple  # (u, v) left image
    source: str
    axis_point: tuple  # (u, v) a point on the shaft axis
    axis_dir: tuple  # (du, dv) unit, towards the tip
    xyz: tuple = NAN3  # tip, left optical frame (m); NaN without 3-D
    axis_xyz: tuple | None = None  # unit 3-D shaft axis pointing to the tip
    index: int = 0  # value in the frame's network-resolution instance map
    colour: int = 0  # overlay palette index of its track (stable, distinct among live tracks)

    @property
    def source_code(self):
        return SOURCE_CODES[self.source]


@dataclass
class FramePerception:
    """One processed frame: the instruments and, on demand, its images at the input resolution."""
    result: object  # the left SegmentationResult
    instruments: list
    instance_map: np.ndarray  # network resolution, values = TrackedInstrument.index
    labels_mode: str = 'instance'
    stereo_error: str | None = None  # why 3-D failed for this frame (2-D outputs are unaffected)
    _cache: dict = field(default_factory=dict, repr=False)
    _stereo: Any = field(default=None, repr=False)  # _PendingStereo until InstrumentPerception.finish

    def _once(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _index_image(self):
        """The instance map at the input resolution, made once (every painted image is a table
        lookup in it). Indices above 255 (never seen: hundreds of instruments) would need uint16."""
        def make():
            index = self.instance_map if self.instance_map.max(initial=0) > 255 else self.instance_map.astype(np.uint8)
            return self.result.upsample(index)
        return self._once('index', make)

    def paint(self, value, dtype=np.uint8):
        """Input-resolution image with each instrument's pixels set to value(instrument), 0 elsewhere
        (the instance map upsampled inside the instrument outline, then a table lookup)."""
        index = self._index_image()
        lut = np.zeros(max(int(index.max(initial=0)), max([i.index for i in self.instruments], default=0)) + 1, dtype)
        for inst in self.instruments:
            lut[inst.index] = value(inst)
        if index.dtype == np.uint8 and np.dtype(dtype) in (np.uint8, np.uint16):  # cv2.LUT: 2x numpy's take
            table = np.zeros(256, dtype)
            table[:len(lut)] = lut
            return cv2.LUT(index, table)
        return lut[index]

    def instance_ids_image(self):
        """uint16 input-resolution image of track ids (0 = background)."""
        return self._once('instances', lambda: self.paint(lambda i: i.track_id, np.uint16))

    def labels_image(self):
        """uint8 input-resolution type labels: voted types per instrument, or raw per-pixel types."""
        def make():
            if self.labels_mode == 'pixel' and self.result.net_type is not None:
                return self.result.type
            return self.paint(lambda i: i.type_id)
        return self._once('labels', make)

    def parts_image(self):
        if self.result.net_parts is None:
            return np.zeros(self.result.size, np.uint8)
        return self.result.parts

    def present_types(self):
        """Type ids (incl. UNKNOWN_TYPE) of this frame's instruments, ascending."""
        return sorted({i.type_id for i in self.instruments})

    def type_mask(self, type_id):
        """mono8 0/255 mask of the instruments voted `type_id` (whatever labels_mode is)."""
        return self.paint(lambda i: 255 if i.type_id == type_id else 0)


@dataclass
class _Searched:
    """InstrumentPerception.search(): one eye's instruments and the limits they were found with."""
    result: Any
    limits: dict
    found: list
    instance_map: np.ndarray


@dataclass
class _PendingStereo:
    """What finish() needs from begin(): the left eye's instruments in find_instruments' order (with
    their tracks) and the right eye's search, running or still to start."""
    found: list
    tracks: list
    instruments: list  # TrackedInstrument per found instrument, tentative tracks included
    right: Any
    calibration: Any
    stamp: float | None
    right_job: Any  # Future of find_instruments(right)


class InstrumentPerception:
    """Stateful per camera stream (the tracker): one object per node / per replayed sequence."""

    def __init__(self, config=None):
        config = config or PerceptionConfig()
        self.config = config
        self.tracker = self._new_tracker(config)
        # The right eye's instruments are found on a second thread. Its search is mostly Python (the GIL
        # lets one thread run it at a time) with some OpenCV, which releases the GIL: next to the left
        # eye's own search it saves ~3 ms a pair; next to the images the node draws (OpenCV) 1.5-5 ms
        # (bench_postprocess, docs/BENCHMARKS.md).
        self._right_eye = ThreadPoolExecutor(max_workers=1, thread_name_prefix='mffseg-right-eye')

    @staticmethod
    def _new_tracker(cfg):
        return Tracker(max_missed=cfg.track_max_missed, max_distance=cfg.track_max_distance,
                       min_frames=cfg.track_min_frames, smoothing=cfg.smoothing,
                       min_cutoff=cfg.smoothing_min_cutoff, beta=cfg.smoothing_beta)

    def reconfigure(self, config):
        """New parameters; tracks survive unless a tracking parameter changed."""
        old, self.config = self.config, config
        tracking = ('track_max_missed', 'track_max_distance', 'track_min_frames', 'smoothing', 'smoothing_min_cutoff',
                    'smoothing_beta')
        if any(getattr(old, k) != getattr(config, k) for k in tracking):
            next_id = self.tracker._next_id  # new ids continue: consumers never see an old id reused
            self.tracker = self._new_tracker(config)
            self.tracker._next_id = next_id

    def reset(self):
        self.tracker.reset()

    def process(self, left, right=None, calibration=None, stamp=None):
        """left/right: SegmentationResult of the two eyes (right optional); calibration: a
        stereo.StereoCalibration for 3-D (optional); stamp: seconds, for tip smoothing."""
        return self.finish(self.begin(left, right, calibration, stamp))

    def _limits(self):
        cfg = self.config
        return {'min_area': cfg.min_instance_area, 'min_part_area': cfg.min_part_area,
                'min_score': cfg.min_instrument_score}

    def search(self, left, prepare=()):
        """The left eye's instruments, found ahead of begin() (which takes them as `searched`), and its
        input-resolution maps `prepare` (SegmentationResult.prepare): what Segmenter.segment_pair runs on
        its second thread while the right eye is in the network. Stateless: the tracks move in begin()."""
        limits = self._limits()
        found, instance_map = find_instruments(left, **limits)
        left.prepare(prepare)
        return _Searched(left, limits, found, instance_map)

    def begin(self, left, right=None, calibration=None, stamp=None, *, images_first=False, prepare=(),
              searched=None):
        """process() up to its 2-D outputs: instruments, tracks, tips and every image are final; the 3-D
        tips and axes come with finish(frame). The right eye's search starts now, next to the left eye's;
        with images_first (the caller draws the frame's images between begin and finish) once the left
        eye's is done, so that it runs while they are drawn. `prepare`: the left result's input-resolution
        maps the caller's images will need (SegmentationResult.prepare: e.g. ('outline',) for labels or
        instances, ('parts',) for the parts image or the overlay), made on the second thread while the
        left eye is searched: OpenCV work beside Python work, where that thread would otherwise wait.
        `searched`: search(left) made earlier, used unless the limits changed since."""
        cfg = self.config
        limits = self._limits()
        if searched is not None and (searched.result is not left or searched.limits != limits):
            searched = None  # another frame's, or parameters changed meanwhile: search again
        if prepare:
            left.check_preparable(prepare)  # here: the thread's errors would only resurface when a map is asked for
            self._right_eye.submit(left.prepare, tuple(prepare))
        stereo = right is not None and calibration is not None

        def search_right_eye():
            return self._right_eye.submit(find_instruments, right, geometry_only=True, **limits)

        right_job = search_right_eye() if stereo and not images_first else None
        found, instance_map = (searched.found, searched.instance_map) if searched else find_instruments(left, **limits)
        tracks = self.tracker.update(found, instance_map, left.size)
        instruments = []
        for inst, track in zip(found, tracks):
            type_id, type_score = track.type_vote()
            if type_id is None:  # no type head: every instrument is of unknown type
                type_id, type_score = UNKNOWN_TYPE, 0.0
            elif not type_score >= cfg.min_type_score:  # NaN included
                type_id = UNKNOWN_TYPE
            tip = self.tracker.smooth(track, 'tip', inst.tip, stamp)
            instruments.append(TrackedInstrument(track.track_id, type_id, type_score, inst.score, inst.area_px,
                                                 tuple(tip), inst.source, inst.axis_point, inst.axis_dir,
                                                 index=inst.index, colour=track.colour))
        if stereo and right_job is None:
            right_job = search_right_eye()
        frame = FramePerception(left, _published(instruments, tracks, cfg.max_instruments), instance_map,
                                cfg.labels_mode)
        if stereo:
            frame._stereo = _PendingStereo(found, tracks, instruments, right, calibration, stamp, right_job)
        return frame

    def finish(self, frame):
        """The frame of begin() with its 3-D: waits for the right eye, matches the instruments of the two
        eyes and triangulates their tips and axes (a frame without stereo comes back as it is)."""
        pending, frame._stereo = frame._stereo, None
        if pending is None:
            return frame
        try:
            found_right, map_right = pending.right_job.result()  # always collected: its errors are this frame's
            right, left = pending.right, frame.result
            if tuple(right.size) != tuple(left.size) or right.net_size != left.net_size:
                raise ValueError(f'left {left.size} and right {right.size} images differ in size')
            if pending.found:
                instruments = self._add_3d(pending.instruments, pending.found, frame.instance_map, left, right,
                                           found_right, map_right, pending.calibration, pending.tracks,
                                           pending.stamp)
                frame.instruments = _published(instruments, pending.tracks, self.config.max_instruments)
        except Exception as e:  # noqa: BLE001 - a 3-D failure must never cost the frame's 2-D outputs
            frame.stereo_error = f'{type(e).__name__}: {e}'
        return frame

    def _add_3d(self, instruments, found, instance_map, left, right, found_right, map_right, calibration, tracks,
                stamp):
        cfg = self.config
        net_scale = right.scale[0]  # input px per network px, horizontally (the disparity's direction)
        matches = match_instruments(found, found_right, calibration, left_map=instance_map, right_map=map_right,
                                    net_scale=net_scale, max_epipolar_px=cfg.max_epipolar_px,
                                    min_depth=cfg.min_depth, max_depth=cfg.max_depth,
                                    max_area_ratio=cfg.max_area_ratio,
                                    refine_disparity=_image_disparity(left, right, instance_map))
        out = list(instruments)
        for m in matches:
            xyz = self.tracker.smooth(tracks[m.left], 'xyz', m.tip_xyz, stamp)
            out[m.left] = replace(out[m.left], xyz=tuple(xyz), axis_xyz=m.axis_xyz)
        return out


def _image_disparity(left, right, instance_map):
    """The tips' disparity refined on the two images (tip_disparity.py), or None without them (results
    made from labels). match_instruments uses it where the rig allows (rectified, horizontal)."""
    if left.image is None or right.image is None or left.image.shape != right.image.shape:
        return None
    return lambda instrument, disparity: tip_disparity(left.image, right.image, instance_map, instrument.index,
                                                       instrument.tip, disparity)


def _published(instruments, tracks, limit=0):
    """The instruments a frame publishes, ordered by track id: tentative tracks (track_min_frames) are
    not, neither in the tips nor painted in an instance image. With a `limit` (max_instruments), the
    `limit` whose tracks have the highest mean score over their lives, ties to the older id: a mean over
    the track rather than this frame's score, so that the choice does not hop between two tracks from
    frame to frame, and rather than track age, so that tissue seen first does not outrank a tool."""
    confirmed = [(i, track) for i, track in zip(instruments, tracks) if track.confirmed]
    if limit:
        confirmed = sorted(confirmed, key=lambda p: (-p[1].mean_score(), p[0].track_id))[:limit]
    return sorted((i for i, _ in confirmed), key=lambda i: i.track_id)
