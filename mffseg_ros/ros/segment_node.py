"""The stereo segmentation node: images in; labels, masks, tips, markers, overlay, diagnostics out.

Threads: executor callbacks only store the newest messages (StereoPairer); one worker thread takes
the newest complete frame, decodes, segments and publishes. So the node never queues behind the
camera: whatever arrived while the network was busy is dropped and counted.

Run: `segment_node --ros-args --params-file config/segment.yaml` or
`python -m mffseg_ros.ros.segment_node --ros-args ...` (see docs/ROS_INTERFACE.md);
`segment_node --lifecycle` for the managed variant (LifecycleSegmentNode, transitions in lifecycle_node.py).
"""
import dataclasses
import functools
import os
import re
import signal
import sys
import threading
import time
import warnings

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from mffseg_ros.data.synth import calibration_options
from mffseg_ros.errors import DataError, ImageFormatError, MffsegError
from mffseg_ros.inference.instruments import UNKNOWN_TYPE
from mffseg_ros.inference.perception import InstrumentPerception
from mffseg_ros.inference.segmenter import EXPECTED_FRAME_SIZE, Segmenter
from mffseg_ros.inference.stereo import StereoCalibration
from mffseg_ros.paths import share_file
from mffseg_ros.ros import conversions, params
from mffseg_ros.ros.diagnostics import NodeStats, diagnostic_array
from mffseg_ros.ros.lifecycle_node import ManagedTransitions
from mffseg_ros.ros.qos import matching_reliability, qos_profile
from mffseg_ros.ros.sync import Frame, StereoPairer
from mffseg_ros.visualize import instrument_overlay

NODE_NAME = 'mffseg'
LOG_THROTTLE_S = 2.0
OUTPUT_QOS = qos_profile('reliable', depth=5)
# DDS reader queue per input topic: with 1, a frame that arrived before the callback took the previous
# one replaced it, and a stereo pair missing a half is lost whole. The pairer still keeps only the
# newest complete pair, so a deeper queue adds no lag.
INPUT_DEPTH = 3
QOS_CHECK_PERIOD_S = 1.0  # how often `input_reliability: auto` looks at the publishers again
SHUTDOWN_JOIN_S = 1.0     # a frame still in the network is abandoned after this on shutdown


def input_qos(reliability):
    """Best effort or reliable, keep last INPUT_DEPTH, volatile ('auto' starts best effort)."""
    return qos_profile('best_effort' if reliability == 'auto' else reliability, depth=INPUT_DEPTH)


def topic_safe(name):
    return re.sub(r'[^A-Za-z0-9_]', '_', name) or 'unnamed'


class SegmentNode(Node):
    """`segmenter` lets a caller pass an already loaded Segmenter (tests share one model); by
    default the node loads one from its parameters. Raises MffsegError on bad parameters/weights."""

    def __init__(self, *, segmenter=None, node_name=NODE_NAME, **node_kwargs):
        super().__init__(node_name, **node_kwargs)
        self._prepare()
        self._configure(segmenter)
        self._activate()

    # --- phases (the lifecycle variant runs them as transitions) ---------------------------------------
    def _prepare(self):
        """Parameters and state that need no model."""
        self.cfg = self._declare_parameters()
        self.segmenter = None
        self._worker = None
        self._subs = {}
        self._retiring = []  # subscriptions replaced by `auto`, destroyed at the next check
        self._pubs, self._mask_pubs = {}, {}
        self.stats = NodeStats()
        self.perception = InstrumentPerception(self.cfg.perception())
        self.pairer = StereoPairer(stereo=self.cfg.stereo, slop_ns=int(self.cfg.sync_slop * 1e9),
                                   depth=self.cfg.sync_queue_size)
        self._calibrations = {'left': None, 'right': None}  # the installed (checked) camera_model.Calibration
        self._stereo = None  # (left, right Calibration, their StereoCalibration or None, why not)
        self._calibration_state = {'left': 'none', 'right': 'none'}
        self._info_seen = {'left': None, 'right': None}   # (raw fields, Calibration or reason) of the last one
        self._image_sizes = {'left': None, 'right': None}  # (height, width) of the last decodable image
        self._sequences = {}  # (side, publisher gid) -> last publication sequence number
        self._input_reliability = {}  # topic -> reliability in use ('auto' resolves per topic)
        self._qos_timer = None
        self.add_on_set_parameters_callback(self._check_new_parameters)
        self.add_post_set_parameters_callback(self._apply_new_parameters)
        self._last_diag_counts = {}
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', qos_profile('reliable', depth=10))
        self._diag_timer = self.create_timer(self.cfg.diagnostics_period, self._publish_diagnostics)

    def _configure(self, segmenter=None):
        """Load (or take) the model; create the outputs."""
        self.segmenter = segmenter if segmenter is not None else self._load_segmenter()
        self.class_names = {task: list(self.segmenter.class_names.get(task) or names)
                            for task, names in params.TASK_CLASSES.items()}
        for name, value, desc in params.class_name_declarations(self.class_names):
            if not self.has_parameter(name):
                self.declare_parameter(name, value, desc)
        self._create_publishers()
        self.get_logger().info(f'model: {self.segmenter.describe()}')

    def _activate(self):
        """Subscribe to the inputs and start the worker."""
        self.pairer.reopen()
        self._create_subscriptions()
        if self.cfg.input_reliability == 'auto':
            self._qos_timer = self.create_timer(QOS_CHECK_PERIOD_S, self._follow_publishers)
        self._running = True
        self._worker = threading.Thread(target=self._work, name='mffseg-worker', daemon=True)
        self._worker.start()

    def _deactivate(self, join_timeout=5.0):
        """Stop the worker first (so nothing publishes into a context that goes away), then unsubscribe."""
        self._stop_worker(join_timeout)
        if self._qos_timer is not None:
            self.destroy_timer(self._qos_timer)
            self._qos_timer = None
        for sub in (*self._subs.values(), *self._retiring):
            self.destroy_subscription(sub)
        self._subs, self._retiring = {}, []

    def _unconfigure(self):
        """Destroy the outputs and let the model go (and its GPU memory)."""
        for pub in (*self._pubs.values(), *self._mask_pubs.values()):
            self.destroy_publisher(pub)
        self._pubs, self._mask_pubs = {}, {}
        device = getattr(self.segmenter, 'device', None)
        self.segmenter = None
        if device is not None and device.type == 'cuda':
            import torch
            torch.cuda.empty_cache()

    def _stop_worker(self, join_timeout):
        self._running = False
        worker = getattr(self, '_worker', None)  # absent when __init__ failed half-way
        if worker is not None:
            self.pairer.close()
            if worker.is_alive() and worker is not threading.current_thread():
                worker.join(timeout=join_timeout)
        self._worker = None

    # --- set-up ----------------------------------------------------------------------------------
    def _declare_parameters(self):
        try:
            declared = self.declare_parameters('', params.declarations())
        except ParameterException as e:  # wrong type or out of range in a params file / override
            raise params.ParameterError(f'bad parameter: {e}') from None
        return params.config_from({p.name: p.value for p in declared})

    def _load_segmenter(self):
        cfg = self.cfg
        extra = calibration_options(cfg.precision)  # int8: frames for its activation ranges
        with warnings.catch_warnings(record=True) as caught:  # e.g. "random model": into the ROS log
            warnings.simplefilter('always')
            seg = Segmenter.load(cfg.weights or None, device=cfg.device, precision=cfg.precision,
                                 branch=cfg.branch, input_scale=cfg.scale, input_size=cfg.input_size,
                                 backend=cfg.backend, threads=cfg.threads or default_threads(), **extra)
        for w in caught:
            self.get_logger().warning(str(w.message))
        # Before any subscription exists: the first real frame must not pay for export/autotuning/capture.
        seconds = seg.warm_up(pair=cfg.stereo)
        self.get_logger().info(f'warm-up ({seg.backend_name}, one {"stereo pair" if cfg.stereo else "frame"}'
                               f' of {"x".join(map(str, EXPECTED_FRAME_SIZE))}): {seconds:.2f} s')
        return seg

    def _create_publishers(self):
        pub = self.create_publisher
        self._pubs = {
            'labels': pub(Image, '~/labels', OUTPUT_QOS),
            'instances': pub(Image, '~/instances', OUTPUT_QOS),
            'parts': pub(Image, '~/parts', OUTPUT_QOS),
            'tips': pub(PointCloud2, '~/tips', OUTPUT_QOS),
            'tip_poses': pub(PoseArray, '~/tip_poses', OUTPUT_QOS),
            'tip_markers': pub(MarkerArray, '~/tip_markers', OUTPUT_QOS),
            'overlay': pub(Image, '~/overlay', OUTPUT_QOS),
        }
        self._mask_pubs = {type_id: pub(Image, f'~/masks/{topic_safe(name)}', OUTPUT_QOS)
                           for type_id, name in enumerate(self.class_names['type']) if type_id > 0}
        self._mask_pubs[UNKNOWN_TYPE] = pub(Image, '~/masks/unknown', OUTPUT_QOS)

    def _input_topics(self):
        """{topic: (message type, callback)} of every input the configuration asks for."""
        cfg = self.cfg
        msg_type, suffix = (CompressedImage, '/compressed') if cfg.use_compressed else (Image, '')
        topics = {}
        for side in (('left', 'right') if cfg.stereo else ('left',)):
            topics[getattr(cfg, f'{side}_image_topic') + suffix] = (
                msg_type, lambda msg, info, s=side: self._on_image(s, msg, info))
            if cfg.stereo:
                topics[getattr(cfg, f'{side}_info_topic')] = (
                    CameraInfo, lambda msg, info, s=side: self._on_camera_info(s, msg, info))
        return topics

    def _subscribe(self, topic, reliability):
        """(Re-)subscribe `topic`. A replaced subscription lives on until the next publisher check, so
        there is no gap while the new one is matched; messages both deliver are dropped as duplicates
        (publisher sequence numbers)."""
        msg_type, callback = self._input_topics()[topic]
        old = self._subs.pop(topic, None)
        if old is not None:
            self._retiring.append(old)
        # `auto` re-subscribes from a timer: without QoS event handlers, because a multi-threaded executor
        # that is adding a just-destroyed event handler to its wait set dies (rclpy raises InvalidHandle).
        # No incompatible-QoS warning is lost: auto picks a reliability that every publisher matches.
        auto = self.cfg.input_reliability == 'auto'
        events = SubscriptionEventCallbacks(use_default_callbacks=False) if auto else None
        self._subs[topic] = self.create_subscription(msg_type, topic, callback, input_qos(reliability),
                                                     event_callbacks=events)
        self._input_reliability[topic] = 'best_effort' if reliability == 'auto' else reliability

    def _create_subscriptions(self):
        cfg = self.cfg
        for topic in self._input_topics():
            self._subscribe(topic, cfg.input_reliability)
        if cfg.input_reliability == 'auto':
            self._follow_publishers()
        names = ', '.join(self.resolve_topic_name(s.topic_name) for s in self._subs.values())
        receives = {'best_effort': 'reliable and best-effort publishers',
                    'reliable': 'RELIABLE publishers only (a best-effort camera gives no output)',
                    'auto': 'any publisher; reliable while every publisher of a topic is'}[cfg.input_reliability]
        kind = (CompressedImage if cfg.use_compressed else Image).__name__
        self.get_logger().info(
            f'inputs ({"stereo" if cfg.stereo else "mono"}, {kind}): {names}; '
            f'QoS {cfg.input_reliability}, keep_last {INPUT_DEPTH}, volatile: receives from {receives}')

    def _follow_publishers(self):
        """`input_reliability: auto`: match each input topic's publishers (re-checked every second)."""
        retiring, self._retiring = self._retiring, []
        for sub in retiring:  # replaced a check ago: their successors are matched by now
            self.destroy_subscription(sub)
        for topic, sub in list(self._subs.items()):
            offered = [info.qos_profile.reliability
                       for info in self.get_publishers_info_by_topic(self.resolve_topic_name(topic))]
            wanted = matching_reliability(offered)
            if wanted != self._input_reliability.get(topic):
                self.get_logger().info(f'{sub.topic_name}: publishers changed, input QoS now {wanted}')
                self._subscribe(topic, wanted)

    # --- callbacks: store only ---------------------------------------------------------------------
    def _on_image(self, side, msg, info=None):
        now_ns = time.time_ns()
        if info is not None and not self._first_delivery(side, info):
            return
        stamp = conversions.stamp_ns(msg.header)
        self.stats.received(side)
        if info is not None:
            self.stats.arrived(input_age_s=(now_ns - stamp) * 1e-9,
                               transport_s=(now_ns - info['source_timestamp']) * 1e-9)
        # A rejected frame still takes its place in the pairing: its partner is processed (2-D) without it.
        rejected = self._checked_on_arrival(side, msg)
        self.pairer.push(side, Frame(stamp, time.monotonic(), None if rejected else msg, rejected=bool(rejected)))

    def _first_delivery(self, side, info, count_gaps=True):
        """False for a message already delivered (two subscriptions overlap while `auto` switches).
        Gaps in a publisher's sequence numbers are frames the DDS reader overwrote or never received
        before this callback ran: counted as `superseded`, so no loss is silent."""
        gid, seq = info.get('publisher_gid'), info.get('publication_sequence_number')
        if gid is None or not seq:
            return True
        key = (side, bytes(gid.get('data', b'')) if isinstance(gid, dict) else bytes(gid))
        last = self._sequences.get(key)
        if last is not None and seq <= last:
            return False
        self._sequences[key] = seq
        if count_gaps and last is not None and seq > last + 1:
            self.stats.add('superseded', seq - last - 1)
            self.stats.add(f'superseded.{side}', seq - last - 1)
        if len(self._sequences) > 64:  # publishers come and go: keep only the newest ones
            self._sequences.pop(next(iter(self._sequences)))
        return True

    def _on_camera_info(self, side, msg, info=None):
        if info is not None and not self._first_delivery(f'{side}_info', info, count_gaps=False):
            return
        fields = conversions.camera_info_key(msg)
        seen = self._info_seen[side]
        if seen is not None and seen[0] == fields:  # a camera repeats its camera_info with every frame
            verdict = seen[1]
        else:
            try:
                verdict = conversions.calibration(msg, self._image_sizes[side])
            except DataError as e:
                verdict = str(e)
            self._info_seen[side] = (fields, verdict)
        if isinstance(verdict, str):
            self._reject_calibration(side, verdict)
        elif self._calibrations[side] is not verdict:
            self._install_calibration(side, verdict)

    def _install_calibration(self, side, calibration):
        self._calibrations[side] = calibration
        self._calibration_state[side] = 'ok'

    def _reject_calibration(self, side, reason, uninstall=False):
        """Count (every message) and warn (throttled); keep the last good calibration unless it no longer
        fits the images."""
        self.stats.add('camera_info_rejected')
        self.stats.add(f'camera_info_rejected.{side}')
        if uninstall:
            self._calibrations[side] = None
        kept = self._calibrations[side] is not None
        self._calibration_state[side] = f'{"ok (kept the last good one); " if kept else ""}rejected: {reason}'
        self.get_logger().warning(
            f'{side} camera_info rejected ({reason}); '
            f'{"keeping the last good one" if kept else "no 3-D tips from this camera"}',
            throttle_duration_sec=10.0)

    # --- parameters at run time -------------------------------------------------------------------
    def _candidate(self, parameters):
        known = {f.name for f in dataclasses.fields(params.NodeConfig)}
        return dataclasses.replace(self.cfg, **{p.name: p.value for p in parameters if p.name in known})

    def _check_new_parameters(self, parameters):
        problems = params.validate(self._candidate(parameters))
        return SetParametersResult(successful=not problems, reason='; '.join(problems))

    def _apply_new_parameters(self, parameters):
        self.cfg = self._candidate(parameters)  # one assignment: the worker sees old or new, never half
        self.pairer.set_slop(int(self.cfg.sync_slop * 1e9))
        self.perception.reconfigure(self.cfg.perception())

    # --- worker ----------------------------------------------------------------------------------
    def _work(self):
        while self._running:
            pair = self.pairer.pop_newest(timeout=0.2)
            if pair is None:
                continue
            try:
                self._process(*pair)
            except Exception as e:  # the node never dies on a message
                if not self._running or not self.context.ok():
                    return  # shutting down: a publish into a closing context is no processing error
                self.stats.error(f'{type(e).__name__}: {e}')
                self.get_logger().error(f'processing failed: {type(e).__name__}: {e}',
                                        throttle_duration_sec=LOG_THROTTLE_S)

    def _wanted(self, cfg):
        """Outputs that are enabled AND watched: everything else is not computed (lazy outputs)."""
        watched = {name: getattr(cfg, f'publish_{name}') and pub.get_subscription_count() > 0
                   for name, pub in self._pubs.items()}
        watched['masks'] = cfg.publish_masks and any(p.get_subscription_count() for p in self._mask_pubs.values())
        return watched

    def _decode(self, side, frame):
        """RGB pixels of a frame, or None when it is rejected (counted once, throttled warning)."""
        if frame.rejected:
            return None  # counted when it arrived
        max_pixels = self.cfg.max_input_pixels
        try:
            if isinstance(frame.msg, CompressedImage):
                return conversions.decode_compressed_msg(frame.msg, max_pixels)
            return conversions.decode_image_msg(frame.msg, max_pixels)
        except ImageFormatError as e:
            self._reject(side, e)
            return None

    def _checked_on_arrival(self, side, msg):
        """Header, size bounds and model limits, checked in the callback (no pixel is decoded): every
        malformed image is counted in `rejected` even when a newer frame supersedes it before the worker
        looks, and a dead camera shows whatever the outputs watched. Returns the rejection or ''."""
        try:
            self._check_size(side, conversions.inspect_image_msg(msg, self.cfg.max_input_pixels))
        except ImageFormatError as e:
            self._reject(side, e)
            return str(e)
        return ''

    def _check_size(self, side, size):
        """Frames the model cannot take are rejected; a frame that no longer fits its calibration
        loses it (P of another resolution would put every 3-D tip in the wrong place)."""
        network_size = getattr(self.segmenter, 'network_size', None)  # a stand-in model may state no limits
        try:
            if network_size is not None:
                network_size(*size)
        except MffsegError as e:
            raise ImageFormatError(str(e)) from None
        self._image_sizes[side] = tuple(size)
        calibration = self._calibrations[side]
        if calibration is not None and calibration.image_size not in (None, tuple(size)):
            h, w = calibration.image_size
            self._reject_calibration(side, f'it describes {w}x{h} images, the camera sends {size[1]}x{size[0]}',
                                     uninstall=True)
            self._info_seen[side] = None  # the same camera_info may fit again after a resolution change

    def _reject(self, side, error):
        topic = getattr(self.cfg, f'{side}_image_topic')
        self.stats.rejected(side, f'{side}: {error}')
        self.get_logger().warning(f'skipping {side} frame on {topic}: {error}',
                                  throttle_duration_sec=LOG_THROTTLE_S)

    def _process(self, left, right):
        cfg = self.cfg
        wanted = self._wanted(cfg)
        if not any(wanted.values()):
            self.stats.add('skipped_idle', 1 if right is None else 2)
            return
        rgb_left = self._decode('left', left)
        if rgb_left is None:
            return
        want_3d = (right is not None and all(c is not None for c in self._calibrations.values())
                   and (wanted['tips'] or wanted['tip_markers'] or wanted['tip_poses']))
        rgb_right = self._decode('right', right) if want_3d else None
        searched = None  # the left eye's instruments, when found while the right eye was in the network
        if rgb_right is not None and rgb_right.shape == rgb_left.shape:
            if hasattr(self.segmenter, 'segment_pair'):
                early = functools.partial(self.perception.search, prepare=_maps_to_prepare(wanted))
                res_left, res_right, searched = self.segmenter.segment_pair(rgb_left, rgb_right, early)
            else:  # a stand-in model (tests) with segment_batch only
                res_left, res_right = self.segmenter.segment_batch([rgb_left, rgb_right])
            self.stats.add('segmented_pairs')
        else:
            res_left = self.segmenter.segment_batch([rgb_left])[0]
            res_right = self.segmenter.segment_batch([rgb_right])[0] if rgb_right is not None else None
        self._publish(left, rgb_left, res_left, res_right, wanted, cfg, searched)
        self.stats.processed(time.monotonic() - left.received)

    def _calibration(self):
        """The stereo calibration of the installed camera_infos, built once per pair of them (its
        fundamental matrix is not recomputed every frame); None, counted, when the pair is unusable."""
        pair = (self._calibrations['left'], self._calibrations['right'])
        if pair[0] is None or pair[1] is None:  # uninstalled since the frame was started
            return None
        cached = self._stereo
        if cached is None or cached[0] is not pair[0] or cached[1] is not pair[1]:
            try:
                stereo, problem = StereoCalibration(pair[0].P, pair[1].P, pair[0].rectify, pair[1].rectify), None
            except DataError as e:  # e.g. no baseline: 2-D only, said in diagnostics
                stereo, problem = None, str(e)
            cached = self._stereo = (*pair, stereo, problem)
        if cached[3]:
            self.stats.error(f'3-D: {cached[3]}')
        return cached[2]

    def _publish(self, left, rgb_left, res_left, res_right, wanted, cfg, searched=None):
        """The 2-D images first, drawn while the right eye's instruments are searched on a second thread;
        then the outputs that carry 3-D (tips, poses, markers), once stereo has matched the eyes.
        searched: the left eye's instruments and maps, found while the right eye was segmented."""
        header = left.msg.header
        if not header.frame_id and cfg.frame_id:
            header.frame_id = cfg.frame_id
        calibration = self._calibration() if res_right is not None else None
        images = any(wanted[k] for k in IMAGE_OUTPUTS)
        frame = self.perception.begin(res_left, res_right, calibration, conversions.stamp_ns(header) * 1e-9,
                                      images_first=images, prepare=() if searched else _maps_to_prepare(wanted),
                                      searched=searched)
        if wanted['labels']:
            self._pubs['labels'].publish(conversions.image_msg(frame.labels_image(), header, 'mono8'))
        if wanted['instances']:
            self._pubs['instances'].publish(conversions.image_msg(frame.instance_ids_image(), header, 'mono16'))
        if wanted['parts']:
            self._pubs['parts'].publish(conversions.image_msg(frame.parts_image(), header, 'mono8'))
        if wanted['masks']:
            for type_id in frame.present_types():
                pub = self._mask_pubs.get(type_id)
                if pub is not None and pub.get_subscription_count():
                    pub.publish(conversions.image_msg(frame.type_mask(type_id), header, 'mono8'))
        if wanted['overlay']:
            self.stats.add('rendered.overlay')
            overlay = instrument_overlay(rgb_left, frame)  # rgb8: no channel swap, one copy fewer
            self._pubs['overlay'].publish(conversions.image_msg(overlay, header, 'rgb8'))
        frame = self.perception.finish(frame)
        if frame.stereo_error:
            self.stats.error(f'3-D: {frame.stereo_error}')
            self.get_logger().warning(f'3-D failed for this frame (2-D outputs kept): {frame.stereo_error}',
                                      throttle_duration_sec=LOG_THROTTLE_S)
        if wanted['tips']:
            self._pubs['tips'].publish(conversions.tips_cloud(frame.instruments, header))
        if wanted['tip_poses']:
            self._pubs['tip_poses'].publish(conversions.tip_poses(frame.instruments, header))
        if wanted['tip_markers']:
            self._pubs['tip_markers'].publish(conversions.tip_markers(frame.instruments, header, cfg.marker_scale))

    # --- diagnostics -------------------------------------------------------------------------------
    def diagnostics_info(self):
        seg = self.segmenter
        info = {'device': str(seg.device) if seg else 'none', 'precision': seg.precision if seg else '',
                'model': seg.describe() if seg else 'not loaded', 'stereo': self.cfg.stereo,
                'input_reliability': self.cfg.input_reliability,
                'input_qos': ', '.join(f'{t}={r}' for t, r in sorted(self._input_reliability.items())),
                'buffered': self.pairer.buffered(), 'max_buffered': self.pairer.counts.max_buffered}
        if self.cfg.stereo:
            info.update({f'calibration.{side}': state for side, state in self._calibration_state.items()})
        return info

    def diagnostics_warning(self):
        """Why stereo was asked for but 3-D is impossible ('' when it is possible or not asked for)."""
        if not self.cfg.stereo:
            return ''
        missing = [f'{side} camera_info {state}' for side, state in self._calibration_state.items()
                   if self._calibrations[side] is None]
        return f'stereo without 3-D: {"; ".join(missing)}' if missing else ''

    def snapshot(self):
        snap = self.stats.snapshot()
        snap['counts']['dropped'] = self.pairer.counts.dropped
        snap['counts']['unmatched'] = self.pairer.counts.unmatched
        return snap

    def _publish_diagnostics(self):
        snap = self.snapshot()
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), self.get_name(), snap,
                                                self.diagnostics_info(), self._last_diag_counts,
                                                warning=self.diagnostics_warning()))
        self._last_diag_counts = snap['counts']

    def destroy_node(self, join_timeout=5.0):
        if getattr(self, 'pairer', None) is not None:  # absent when __init__ failed half-way
            self._stop_worker(join_timeout)
        return super().destroy_node()


class LifecycleSegmentNode(ManagedTransitions, SegmentNode, LifecycleNode):
    """The managed variant (`segment_node --lifecycle`): SegmentNode's phases run as lifecycle
    transitions (lifecycle_node.ManagedTransitions); nothing starts until configure."""

    def __init__(self, *, segmenter=None, node_name=NODE_NAME, **node_kwargs):
        LifecycleNode.__init__(self, node_name, **node_kwargs)  # not SegmentNode's: nothing starts yet
        self._given_segmenter = segmenter
        self._prepare()


IMAGE_OUTPUTS = ('labels', 'instances', 'parts', 'masks', 'overlay')


def _maps_to_prepare(wanted):
    """The input-resolution maps the watched images need, made beside the instrument search: every
    image is cut by the instrument outline; the parts image and the overlay also need the parts."""
    if wanted['parts'] or wanted['overlay']:
        return ('parts',)
    return ('outline',) if any(wanted[k] for k in IMAGE_OUTPUTS) else ()


def default_threads():
    """Inference threads when `threads` is 0: every core but one, which stays free for the DDS
    threads that receive the next frame (all cores busy in torch starved them of large frames)."""
    return max(1, (os.cpu_count() or 2) - 1)


FASTDDS_PROFILE_FLAG = '--fastdds-large-images'
LIFECYCLE_FLAG = '--lifecycle'


def use_large_image_profile():
    """Point Fast DDS at the shipped profile for large images (before any participant exists), unless
    the environment already names one."""
    os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(share_file('config', 'fastdds_large_images.xml')))


def main(argv=None):
    """Console script `segment_node [--lifecycle] [--fastdds-large-images] --ros-args ...`.
    Exit 2 with one line on bad parameters or weights; 0 on SIGINT/SIGTERM."""
    argv = list(sys.argv if argv is None else argv)
    managed = LIFECYCLE_FLAG in argv
    if FASTDDS_PROFILE_FLAG in argv:
        use_large_image_profile()
    argv = [a for a in argv if a not in (LIFECYCLE_FLAG, FASTDDS_PROFILE_FLAG)]
    # Our own signal handling: rclpy's handler shuts the context down at once, under a worker that is
    # still publishing. Here a signal only ends spinning; the worker is stopped before the context goes.
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    node = None
    try:
        node = LifecycleSegmentNode() if managed else SegmentNode()
    except MffsegError as e:
        print(f'segment_node: error: {e}', file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)  # returns to Python often, so a signal is seen at once
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        worker = node._worker
        node.destroy_node(join_timeout=SHUTDOWN_JOIN_S)
        executor.shutdown(timeout_sec=0.5)
        rclpy.try_shutdown()
    if worker is not None and worker.is_alive():
        # A frame still in the network cannot be interrupted, and unwinding the interpreter under a
        # running torch thread aborts the process: leave at once (outputs and ROS are already closed).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == '__main__':
    sys.exit(main())
