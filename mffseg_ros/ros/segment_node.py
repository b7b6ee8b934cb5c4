"""The stereo segmentation node: images in; labels, masks, tips, markers, overlay, diagnostics out.

Threads: executor callbacks only store the newest messages (StereoPairer); one worker thread takes
the newest complete frame, decodes, segments and publishes. So the node never queues behind the
camera: whatever arrived while the network was busy is dropped and counted.

Run: `segment_node --ros-args --params-file config/segment.yaml` or
`python -m mffseg_ros.ros.segment_node --ros-args ...` (see docs/ROS_INTERFACE.md).
"""
import re
import sys
import threading
import time
import warnings

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from mffseg_ros.errors import DataError, ImageFormatError, MffsegError
from mffseg_ros.inference.instruments import UNKNOWN_TYPE
from mffseg_ros.inference.perception import InstrumentPerception
from mffseg_ros.inference.stereo import StereoCalibration
from mffseg_ros.ros import conversions, params
from mffseg_ros.ros.diagnostics import NodeStats, diagnostic_array
from mffseg_ros.ros.qos import qos_profile
from mffseg_ros.ros.sync import Frame, StereoPairer
from mffseg_ros.visualize import instrument_overlay

NODE_NAME = 'mffseg'
LOG_THROTTLE_S = 2.0
OUTPUT_QOS = qos_profile('reliable', depth=5)


def input_qos(reliability):
    """Sensor-data QoS (best effort, keep last 1) or its reliable twin."""
    return qos_profile(reliability, depth=1)


def topic_safe(name):
    return re.sub(r'[^A-Za-z0-9_]', '_', name) or 'unnamed'


class SegmentNode(Node):
    """`segmenter` lets a caller pass an already loaded Segmenter (tests share one model); by
    default the node loads one from its parameters. Raises MffsegError on bad parameters/weights."""

    def __init__(self, *, segmenter=None, node_name=NODE_NAME, **node_kwargs):
        super().__init__(node_name, **node_kwargs)
        self.cfg = self._declare_parameters()
        self.segmenter = segmenter if segmenter is not None else self._load_segmenter()
        self.class_names = {task: list(self.segmenter.class_names.get(task) or names)
                            for task, names in params.TASK_CLASSES.items()}
        for name, value, desc in params.class_name_declarations(self.class_names):
            self.declare_parameter(name, value, desc)
        self.add_on_set_parameters_callback(self._check_new_parameters)
        self.add_post_set_parameters_callback(self._apply_new_parameters)

        self.stats = NodeStats()
        self.perception = InstrumentPerception(self.cfg.perception())
        self.pairer = StereoPairer(stereo=self.cfg.stereo, slop_ns=int(self.cfg.sync_slop * 1e9),
                                   depth=self.cfg.sync_queue_size)
        self._projections = {'left': None, 'right': None}
        self._rectifiers = {'left': None, 'right': None}  # raw -> rectified pixels (None: rectified input)
        self._create_publishers()
        self._create_subscriptions()
        self._last_diag_counts = {}
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diag_timer = self.create_timer(self.cfg.diagnostics_period, self._publish_diagnostics)
        self._running = True
        self._worker = threading.Thread(target=self._work, name='mffseg-worker', daemon=True)
        self._worker.start()
        self.get_logger().info(f'model: {self.segmenter.describe()}')

    # --- set-up ----------------------------------------------------------------------------------
    def _declare_parameters(self):
        try:
            declared = self.declare_parameters('', params.declarations())
        except ParameterException as e:  # wrong type or out of range in a params file / override
            raise params.ParameterError(f'bad parameter: {e}') from None
        return params.config_from({p.name: p.value for p in declared})

    def _load_segmenter(self):
        from mffseg_ros.inference.segmenter import EXPECTED_FRAME_SIZE, Segmenter
        cfg = self.cfg
        with warnings.catch_warnings(record=True) as caught:  # e.g. "random model": into the ROS log
            warnings.simplefilter('always')
            seg = Segmenter.load(cfg.weights or None, device=cfg.device, precision=cfg.precision,
                                 branch=cfg.branch, input_scale=cfg.scale, input_size=cfg.input_size,
                                 backend=cfg.backend, threads=cfg.threads or None)
        for w in caught:
            self.get_logger().warning(str(w.message))
        if cfg.device == 'auto' and seg.device.type == 'cpu':
            self.get_logger().warning('device=auto: no CUDA device, running on the CPU (slower)')
        # Before any subscription exists: the first real frame must not pay for export/autotuning/capture.
        seconds = seg.warm_up(batch=2 if cfg.stereo else 1)
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

    def _create_subscriptions(self):
        cfg = self.cfg
        qos = input_qos(cfg.input_reliability)
        msg_type, suffix = (CompressedImage, '/compressed') if cfg.use_compressed else (Image, '')
        sides = ('left', 'right') if cfg.stereo else ('left',)
        self._subs = []
        for side in sides:
            topic = getattr(cfg, f'{side}_image_topic') + suffix
            self._subs.append(self.create_subscription(
                msg_type, topic, lambda msg, s=side: self._on_image(s, msg), qos))
            if cfg.stereo:
                self._subs.append(self.create_subscription(
                    CameraInfo, getattr(cfg, f'{side}_info_topic'),
                    lambda msg, s=side: self._on_camera_info(s, msg), qos))
        names = ', '.join(self.resolve_topic_name(s.topic_name) for s in self._subs)
        receives = ('reliable and best-effort publishers' if cfg.input_reliability == 'best_effort'
                    else 'RELIABLE publishers only (a best-effort camera gives no output)')
        self.get_logger().info(
            f'inputs ({"stereo" if cfg.stereo else "mono"}, {msg_type.__name__}): {names}; '
            f'QoS {cfg.input_reliability}, keep_last 1, volatile: receives from {receives}')

    # --- callbacks: store only ---------------------------------------------------------------------
    def _on_image(self, side, msg):
        self.stats.received(side)
        self.pairer.push(side, Frame(conversions.stamp_ns(msg.header), time.monotonic(), msg))

    def _on_camera_info(self, side, msg):
        try:
            P = conversions.projection_matrix(msg)
            self._rectifiers[side] = conversions.pixel_rectifier(msg)
            self._projections[side] = P
        except DataError as e:  # e.g. an uncalibrated camera: 2-D tips only
            self._projections[side] = None
            self.get_logger().warning(f'{side} camera_info unusable, no 3-D tips: {e}',
                                      throttle_duration_sec=10.0)

    # --- parameters at run time -------------------------------------------------------------------
    def _candidate(self, parameters):
        changes = {p.name: p.value for p in parameters if p.name in params.NodeConfig.__dataclass_fields__}
        return params.NodeConfig(**{**self.cfg.__dict__, **changes})

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
                self.stats.error(f'{type(e).__name__}: {e}')
                self.get_logger().error(f'processing failed: {type(e).__name__}: {e}',
                                        throttle_duration_sec=LOG_THROTTLE_S)

    def _wanted(self, cfg):
        """Outputs that are enabled AND watched: everything else is not computed (lazy outputs)."""
        watched = {name: cfg.__dict__[f'publish_{name}'] and pub.get_subscription_count() > 0
                   for name, pub in self._pubs.items()}
        watched['masks'] = cfg.publish_masks and any(p.get_subscription_count() for p in self._mask_pubs.values())
        return watched

    def _decode(self, side, frame):
        try:
            if isinstance(frame.msg, CompressedImage):
                return conversions.decode_compressed_msg(frame.msg)
            return conversions.decode_image_msg(frame.msg)
        except ImageFormatError as e:
            topic = getattr(self.cfg, f'{side}_image_topic')
            self.stats.rejected(side, f'{side}: {e}')
            self.get_logger().error(f'skipping {side} frame on {topic}: {e}',
                                    throttle_duration_sec=LOG_THROTTLE_S)
            return None

    def _process(self, left, right):
        cfg = self.cfg
        wanted = self._wanted(cfg)
        if not any(wanted.values()):
            self.stats.add('skipped_idle', 1 if right is None else 2)
            return
        rgb_left = self._decode('left', left)
        if rgb_left is None:
            return
        P_left, P_right = self._projections['left'], self._projections['right']
        want_3d = (right is not None and P_left is not None and P_right is not None
                   and (wanted['tips'] or wanted['tip_markers'] or wanted['tip_poses']))
        rgb_right = self._decode('right', right) if want_3d else None
        if rgb_right is not None and rgb_right.shape == rgb_left.shape:
            res_left, res_right = self.segmenter.segment_batch([rgb_left, rgb_right])
            self.stats.add('segmented_pairs')
        else:
            res_left = self.segmenter.segment_batch([rgb_left])[0]
            res_right = self.segmenter.segment_batch([rgb_right])[0] if rgb_right is not None else None
        self._publish(left, rgb_left, res_left, res_right, P_left, P_right, wanted, cfg)
        self.stats.processed(time.monotonic() - left.received)

    def _calibration(self, P_left, P_right):
        try:
            return StereoCalibration(P_left, P_right, self._rectifiers['left'], self._rectifiers['right'])
        except DataError as e:  # e.g. no baseline: 2-D only, said in diagnostics
            self.stats.error(f'3-D: {e}')
            return None

    def _publish(self, left, rgb_left, res_left, res_right, P_left, P_right, wanted, cfg):
        header = left.msg.header
        if not header.frame_id and cfg.frame_id:
            header.frame_id = cfg.frame_id
        calibration = self._calibration(P_left, P_right) if res_right is not None else None
        frame = self.perception.process(res_left, res_right, calibration, conversions.stamp_ns(header) * 1e-9)
        if frame.stereo_error:
            self.stats.error(f'3-D: {frame.stereo_error}')
            self.get_logger().warning(f'3-D failed for this frame (2-D outputs kept): {frame.stereo_error}',
                                      throttle_duration_sec=LOG_THROTTLE_S)
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
        if wanted['tips']:
            self._pubs['tips'].publish(conversions.tips_cloud(frame.instruments, header))
        if wanted['tip_poses']:
            self._pubs['tip_poses'].publish(conversions.tip_poses(frame.instruments, header))
        if wanted['tip_markers']:
            self._pubs['tip_markers'].publish(conversions.tip_markers(frame.instruments, header, cfg.marker_scale))
        if wanted['overlay']:
            self.stats.add('rendered.overlay')
            rgb = instrument_overlay(rgb_left, frame)
            self._pubs['overlay'].publish(conversions.image_msg(rgb[..., ::-1], header, 'bgr8'))

    # --- diagnostics -------------------------------------------------------------------------------
    def diagnostics_info(self):
        return {'device': str(self.segmenter.device), 'precision': self.segmenter.precision,
                'model': self.segmenter.describe(), 'stereo': self.cfg.stereo,
                'input_reliability': self.cfg.input_reliability,
                'buffered': self.pairer.buffered(), 'max_buffered': self.pairer.counts.max_buffered}

    def snapshot(self):
        snap = self.stats.snapshot()
        snap['counts']['dropped'] = self.pairer.counts.dropped
        snap['counts']['unmatched'] = self.pairer.counts.unmatched
        return snap

    def _publish_diagnostics(self):
        snap = self.snapshot()
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), self.get_name(), snap,
                                                self.diagnostics_info(), self._last_diag_counts))
        self._last_diag_counts = snap['counts']

    def destroy_node(self):
        self._running = False
        worker = getattr(self, '_worker', None)  # absent when __init__ failed half-way
        if worker is not None:
            self.pairer.close()
            if worker.is_alive() and worker is not threading.current_thread():
                worker.join(timeout=5.0)
        return super().destroy_node()


def main(argv=None):
    """Console script `segment_node`. Exit 2 with one line on bad parameters or weights."""
    argv = sys.argv if argv is None else argv
    rclpy.init(args=argv)
    node = None
    try:
        node = SegmentNode()
    except MffsegError as e:
        print(f'segment_node: error: {e}', file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
