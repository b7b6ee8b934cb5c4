"""The node's parameters: one table of names, defaults, descriptors and ranges, plus validation.

Model and wiring parameters are read-only (changing them needs a restart: a new model or new
subscriptions); the rest can be changed at run time and are validated as a whole before use.
"""
import re
from dataclasses import dataclass, fields, replace

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

from mffseg_ros import topics
from mffseg_ros.errors import MffsegError
from mffseg_ros.inference.backends import BACKEND_CHOICES, BACKENDS, PRECISIONS
from mffseg_ros.inference.image_codec import DEFAULT_MAX_PIXELS
from mffseg_ros.inference.instruments import DEFAULT_MIN_AREA
from mffseg_ros.inference.perception import LABEL_MODES, PerceptionConfig
from mffseg_ros.model.classes import TASK_CLASSES
from mffseg_ros.model.mffnet import BRANCHES


class ParameterError(MffsegError):
    """A node parameter has a bad value (names the parameter and the reason)."""


DEVICE_PATTERN = re.compile(r'^(auto|cpu|cuda(:\d+)?)$')
CHOICES = {
    'precision': tuple(PRECISIONS),
    'branch': BRANCHES,
    'backend': BACKEND_CHOICES,
    'input_reliability': ('auto', 'best_effort', 'reliable'),
    'labels_mode': LABEL_MODES,
}


_PERCEPTION = PerceptionConfig()


@dataclass(frozen=True)
class NodeConfig:
    # Model (read-only)
    weights: str = ''
    device: str = 'auto'
    precision: str = 'fp32'
    branch: str = 'main'
    backend: str = 'auto'
    threads: int = 0
    input_scale: float = 0.0
    input_height: int = 0
    input_width: int = 0
    # Wiring (read-only)
    stereo: bool = True
    use_compressed: bool = False
    input_reliability: str = 'auto'
    left_image_topic: str = topics.LEFT_IMAGE.lstrip('/')
    right_image_topic: str = topics.RIGHT_IMAGE.lstrip('/')
    left_info_topic: str = topics.LEFT_INFO.lstrip('/')
    right_info_topic: str = topics.RIGHT_INFO.lstrip('/')
    sync_queue_size: int = 10
    # Run time
    sync_slop: float = 0.01
    # Post-processing: defaults are the library's own (inference.perception.PerceptionConfig).
    min_instance_area: int = DEFAULT_MIN_AREA
    min_instrument_score: float = _PERCEPTION.min_instrument_score
    min_type_score: float = _PERCEPTION.min_type_score
    labels_mode: str = _PERCEPTION.labels_mode
    track_max_missed: int = _PERCEPTION.track_max_missed
    track_max_distance: float = _PERCEPTION.track_max_distance
    track_min_frames: int = _PERCEPTION.track_min_frames
    max_instruments: int = _PERCEPTION.max_instruments
    tip_smoothing: bool = _PERCEPTION.smoothing
    smoothing_min_cutoff: float = _PERCEPTION.smoothing_min_cutoff
    smoothing_beta: float = _PERCEPTION.smoothing_beta
    min_depth: float = _PERCEPTION.min_depth
    max_depth: float = _PERCEPTION.max_depth
    max_epipolar_px: float = _PERCEPTION.max_epipolar_px
    frame_id: str = ''
    publish_labels: bool = True
    publish_instances: bool = True
    publish_parts: bool = True
    publish_masks: bool = True
    publish_tips: bool = True
    publish_tip_markers: bool = True
    publish_tip_poses: bool = True
    publish_overlay: bool = True
    marker_scale: float = 0.004
    diagnostics_period: float = 1.0
    max_input_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def input_size(self):
        return (self.input_height, self.input_width) if self.input_height else None

    @property
    def scale(self):
        return self.input_scale or None

    def perception(self):
        """The post-processing settings (inference.perception.PerceptionConfig) of this configuration."""
        return PerceptionConfig(
            min_instance_area=self.min_instance_area, min_instrument_score=self.min_instrument_score,
            min_type_score=self.min_type_score,
            labels_mode=self.labels_mode, track_max_missed=self.track_max_missed,
            track_max_distance=self.track_max_distance, track_min_frames=self.track_min_frames,
            max_instruments=self.max_instruments, smoothing=self.tip_smoothing,
            smoothing_min_cutoff=self.smoothing_min_cutoff, smoothing_beta=self.smoothing_beta,
            min_depth=self.min_depth, max_depth=self.max_depth, max_epipolar_px=self.max_epipolar_px)


READ_ONLY = {'weights', 'device', 'precision', 'branch', 'backend', 'threads', 'input_scale', 'input_height',
             'input_width',
             'stereo', 'use_compressed', 'input_reliability', 'left_image_topic', 'right_image_topic',
             'left_info_topic', 'right_info_topic', 'sync_queue_size', 'diagnostics_period'}

DESCRIPTIONS = {
    'weights': 'safetensors weights file; empty = the shipped default model',
    'device': 'auto | cpu | cuda | cuda:N (auto falls back to CPU with a warning)',
    'precision': ' | '.join(PRECISIONS) + ' (fp16 needs CUDA; on the CPU it falls back to fp32 with a warning; '
                 'int8: ONNX Runtime on the CPU, quantised at start-up on synthetic frames, 1.4-1.7x faster by CPU)',
    'branch': 'main | aux (aux skips the main decoder: faster, coarser)',
    'backend': 'auto (CPU: the backend measured faster end to end, see docs/BENCHMARKS.md; CUDA: torch) | '
               + ' | '.join(f'{name} ({spec.help})' for name, spec in BACKENDS.items()),
    'threads': 'CPU inference threads (torch and ONNX Runtime); 0 = all cores but one (left for DDS transport)',
    'input_scale': 'resize factor before the network; 0 = fit the frame to the training size in the weights',
    'input_height': 'network input height in px (multiple of 32); 0 = use input_scale',
    'input_width': 'network input width in px (multiple of 32); 0 = use input_scale',
    'stereo': 'pair left/right by stamp; with both camera_infos, triangulate tips in 3-D',
    'use_compressed': 'subscribe to <image topic>/compressed (sensor_msgs/CompressedImage)',
    'input_reliability': 'auto (reliable when every publisher is, else best effort; follows publisher changes) '
                         '| best_effort (receives from any publisher) | reliable',
    'left_image_topic': 'left (or mono) image topic; relative names follow the namespace',
    'right_image_topic': 'right image topic (stereo only)',
    'left_info_topic': 'left sensor_msgs/CameraInfo topic',
    'right_info_topic': 'right sensor_msgs/CameraInfo topic',
    'sync_queue_size': 'frames buffered per camera while waiting for the partner image',
    'sync_slop': 'largest left/right stamp difference (s) still paired; 0 = exact stamps only',
    'min_instance_area': 'instrument regions smaller than this (input px) are not instruments',
    'min_instrument_score': 'instrument regions whose mean P(instrument) is below this are not instruments',
    'min_type_score': 'an instrument whose accumulated type vote is below this is published as type 255 (unknown)',
    'labels_mode': 'instance: ~/labels paints each instrument with its voted type | pixel: raw per-pixel types',
    'track_max_missed': 'processed frames a track survives without being seen before its id is retired',
    'track_max_distance': 'largest tip jump (fraction of the image diagonal) still associated with a track',
    'track_min_frames': 'consecutive processed frames a new instrument must be seen before it is published '
                        '(1 = at once; 2 hides one-frame false instruments but delays new ones by a frame)',
    'max_instruments': 'at most this many instruments published per frame, those whose tracks have the highest '
                       'mean P(instrument) over their lives (0 = no limit; e.g. 2 for a dVRK with two PSMs)',
    'tip_smoothing': 'One-Euro filter on the tips (2-D and 3-D) of each track',
    'smoothing_min_cutoff': 'One-Euro cutoff at rest (Hz): lower = smoother, more lag',
    'smoothing_beta': 'One-Euro speed coefficient: higher = less lag when the tip moves',
    'min_depth': 'nearest plausible instrument depth (m): bounds the stereo disparity search',
    'max_depth': 'farthest plausible instrument depth (m): bounds the stereo disparity search',
    'max_epipolar_px': 'largest distance (px) of a right tip from the left tip\'s epipolar line',
    'frame_id': 'frame_id for outputs whose input header has an empty one',
    'publish_labels': 'publish ~/labels (mono8 type ids)',
    'publish_instances': 'publish ~/instances (mono16 instrument ids = the tips\' instance_id)',
    'publish_tip_poses': 'publish ~/tip_poses (geometry_msgs/PoseArray: tip + shaft axis, order of ~/tips)',
    'publish_parts': 'publish ~/parts (mono8 part ids)',
    'publish_masks': 'publish ~/masks/<type> (mono8 0/255) for the types present',
    'publish_tips': 'publish ~/tips (sensor_msgs/PointCloud2)',
    'publish_tip_markers': 'publish ~/tip_markers (visualization_msgs/MarkerArray)',
    'publish_overlay': 'publish ~/overlay (rgb8)',
    'marker_scale': 'tip sphere diameter in metres',
    'diagnostics_period': 'seconds between /diagnostics messages',
    'max_input_pixels': 'images declaring more pixels (width x height, read from the header) are rejected '
                        'before decoding; default 4096x2304',
}

RANGES = {
    'threads': IntegerRange(from_value=0, to_value=256),
    'input_scale': FloatingPointRange(from_value=0.0, to_value=4.0),
    'input_height': IntegerRange(from_value=0, to_value=4096),
    'input_width': IntegerRange(from_value=0, to_value=4096),
    'sync_queue_size': IntegerRange(from_value=1, to_value=100),
    'sync_slop': FloatingPointRange(from_value=0.0, to_value=1.0),
    'min_instance_area': IntegerRange(from_value=1, to_value=10_000_000),
    'min_instrument_score': FloatingPointRange(from_value=0.0, to_value=1.0),
    'min_type_score': FloatingPointRange(from_value=0.0, to_value=1.0),
    'track_max_missed': IntegerRange(from_value=0, to_value=1000),
    'track_max_distance': FloatingPointRange(from_value=0.0, to_value=2.0),
    'track_min_frames': IntegerRange(from_value=1, to_value=100),
    'max_instruments': IntegerRange(from_value=0, to_value=100),
    'smoothing_min_cutoff': FloatingPointRange(from_value=0.001, to_value=100.0),
    'smoothing_beta': FloatingPointRange(from_value=0.0, to_value=100.0),
    'min_depth': FloatingPointRange(from_value=0.0, to_value=10.0),
    'max_depth': FloatingPointRange(from_value=0.001, to_value=100.0),
    'max_epipolar_px': FloatingPointRange(from_value=0.1, to_value=1000.0),
    'marker_scale': FloatingPointRange(from_value=0.0001, to_value=1.0),
    'diagnostics_period': FloatingPointRange(from_value=0.1, to_value=60.0),
    'max_input_pixels': IntegerRange(from_value=1, to_value=1 << 28),
}


def descriptor(name):
    d = ParameterDescriptor(name=name, description=DESCRIPTIONS[name], read_only=name in READ_ONLY)
    rng = RANGES.get(name)
    if isinstance(rng, FloatingPointRange):
        d.floating_point_range = [rng]
    elif isinstance(rng, IntegerRange):
        d.integer_range = [rng]
    if name in CHOICES:
        d.additional_constraints = 'one of: ' + ', '.join(CHOICES[name])
    elif name == 'device':
        d.additional_constraints = 'auto, cpu, cuda or cuda:N'
    return d


def declarations():
    """(name, default, descriptor) for every parameter, in NodeConfig order."""
    defaults = NodeConfig()
    return [(f.name, getattr(defaults, f.name), descriptor(f.name)) for f in fields(NodeConfig)]


def class_name_declarations(class_names=None):
    """Read-only `classes.<task>` string arrays: the label id is the index (LabelInfo idea)."""
    names = dict(TASK_CLASSES, **(class_names or {}))
    return [(f'classes.{task}', list(names[task]),
             ParameterDescriptor(name=f'classes.{task}', read_only=True,
                                 type=ParameterType.PARAMETER_STRING_ARRAY,
                                 description=f'{task} class names; the published label value is the index'))
            for task in ('type', 'parts')]


def validate(cfg):
    """Reasons `cfg` is unusable (empty list = fine). Ranges and types are checked by rclpy too;
    this covers enumerations and combinations, and catches ranges when values come from elsewhere."""
    problems = []
    if not DEVICE_PATTERN.match(cfg.device):
        problems.append(f"device: '{cfg.device}' is not auto, cpu, cuda or cuda:N")
    for name, choices in CHOICES.items():
        value = getattr(cfg, name)
        if value not in choices:
            problems.append(f"{name}: '{value}' is not one of {', '.join(choices)}")
    for name, rng in RANGES.items():
        value = getattr(cfg, name)
        if not rng.from_value <= value <= rng.to_value:
            problems.append(f'{name}: {value} is outside [{rng.from_value}, {rng.to_value}]')
    if bool(cfg.input_height) != bool(cfg.input_width):
        problems.append('input_height/input_width: set both or neither')
    for name in ('input_height', 'input_width'):
        if getattr(cfg, name) % 32:
            problems.append(f'{name}: {getattr(cfg, name)} is not a multiple of 32')
    if cfg.min_depth >= cfg.max_depth:
        problems.append(f'min_depth/max_depth: {cfg.min_depth} must be below {cfg.max_depth}')
    if cfg.input_height and cfg.input_scale:
        problems.append('input_scale: give input_scale or input_height/input_width, not both')
    for name in ('left_image_topic', 'right_image_topic', 'left_info_topic', 'right_info_topic'):
        if not getattr(cfg, name).strip():
            problems.append(f'{name}: empty topic name')
    return problems


def config_from(values):
    """NodeConfig from a {name: value} dict (unknown names ignored); raises ParameterError."""
    known = {f.name for f in fields(NodeConfig)}
    cfg = replace(NodeConfig(), **{k: v for k, v in values.items() if k in known})
    problems = validate(cfg)
    if problems:
        raise ParameterError('; '.join(problems))
    return cfg
