"""Write and read rosbag2 bags with the `rosbags` library (no rclpy needed).

Bags hold standard message types (sensor_msgs/Image, CameraInfo, PointCloud2) in CDR, mcap or
sqlite3 storage, with a metadata.yaml that `ros2 bag play` reads. A bag is written into a hidden
temporary folder next to its destination and renamed into place only when complete, so an error
never leaves a half-written bag behind.
"""
import shutil
import tempfile
from pathlib import Path

import numpy as np
import yaml
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from mffseg_ros.errors import DataError, one_line

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
# rosbag2 metadata version 8: read by Jazzy and newer (version 9 changes the QoS layout).
BAG_VERSION = 8
LEFT_FRAME_ID = 'stereo_left_optical_frame'
RIGHT_FRAME_ID = 'stereo_right_optical_frame'

IMAGE = 'sensor_msgs/msg/Image'
CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'
POINT_CLOUD2 = 'sensor_msgs/msg/PointCloud2'

_ENCODINGS = {  # encoding -> (dtype, channels)
    'mono8': (np.uint8, 1), 'mono16': (np.uint16, 1), '8UC1': (np.uint8, 1), '16UC1': (np.uint16, 1),
    'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3), 'rgba8': (np.uint8, 4), 'bgra8': (np.uint8, 4),
}
# numpy little-endian type -> sensor_msgs/PointField datatype
_POINT_FIELD_TYPES = {'|i1': 1, '|u1': 2, '<i2': 3, '<u2': 4, '<i4': 5, '<u4': 6, '<f4': 7, '<f8': 8}

_t = TYPESTORE.types
_Header, _Time = _t['std_msgs/msg/Header'], _t['builtin_interfaces/msg/Time']


def _header(stamp_ns, frame_id):
    return _Header(stamp=_Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000)),
                   frame_id=frame_id)


def stamp_to_ns(stamp):
    """builtin_interfaces/Time (rosbags or rclpy) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class BagWriter:
    """Context manager writing one rosbag2 bag; connections are created on a topic's first message.

        with BagWriter(out, storage='mcap') as bag:
            bag.write_image(topics.LEFT_IMAGE, stamp_ns, rgb, LEFT_FRAME_ID)
    """

    def __init__(self, out, *, storage='mcap', overwrite=False, custom_data=None):
        if storage not in STORAGES:
            raise DataError(f'{out}: unknown bag storage {storage!r} (choose {", ".join(STORAGES)})')
        self.out = Path(out)
        self.storage = storage
        self.overwrite = overwrite
        self.custom_data = dict(custom_data or {})  # provenance, stored in metadata.yaml
        self._connections = {}
        self._tmpdir = self._writer = None

    def __enter__(self):
        if self.out.exists() and not self.overwrite:
            raise DataError(f'{self.out}: already exists (remove it or pass --overwrite)')
        if self.out.exists() and not (self.out / 'metadata.yaml').is_file():  # never delete a non-bag
            raise DataError(f'{self.out}: exists and is not a rosbag2 bag; not overwriting it')
        if not self.out.parent.is_dir():
            raise DataError(f'{self.out.parent}: output folder does not exist')
        self._tmpdir = Path(tempfile.mkdtemp(prefix=f'.{self.out.name}.partial-', dir=self.out.parent))
        try:
            # The bag folder keeps its final name inside the temp folder: rosbags names the data file after it.
            self._writer = Writer(self._tmpdir / self.out.name, version=BAG_VERSION,
                                  storage_plugin=STORAGES[self.storage])
            for key, value in self.custom_data.items():
                self._writer.set_custom_data(key, str(value))
            self._writer.open()
        except BaseException:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is not None:
                self._writer.abort()  # close the storage files; the folder goes below
            else:
                self._writer.close()
                if self.out.exists():  # overwrite: only now, once the new bag is complete
                    shutil.rmtree(self.out)
                (self._tmpdir / self.out.name).rename(self.out)
        finally:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        return False

    def write(self, topic, stamp_ns, msg):
        """Serialize a rosbags message and record it at `stamp_ns` (the bag time = the header stamp)."""
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msg.__msgtype__, typestore=TYPESTORE)
            self._connections[topic] = conn
        elif conn.msgtype != msg.__msgtype__:
            raise ValueError(f'{topic}: already holds {conn.msgtype}, not {msg.__msgtype__}')
        self._writer.write(conn, int(stamp_ns), TYPESTORE.serialize_cdr(msg, msg.__msgtype__))

    def write_image(self, topic, stamp_ns, array, frame_id, encoding=None):
        """HxW uint8 -> mono8, HxW uint16 -> mono16, HxWx3 uint8 -> rgb8 unless `encoding` says otherwise."""
        array = np.ascontiguousarray(array)
        if encoding is None:
            encoding = {(2, np.uint8): 'mono8', (2, np.uint16): 'mono16',
                        (3, np.uint8): 'rgb8'}.get((array.ndim, array.dtype.type))
            if encoding is None:
                raise ValueError(f'{topic}: no image encoding for {array.dtype} array of shape {array.shape}')
        height, width = array.shape[:2]
        msg = _t[IMAGE](header=_header(stamp_ns, frame_id), height=height, width=width, encoding=encoding,
                        is_bigendian=int(array.dtype.byteorder == '>'), step=array.strides[0],
                        data=array.view(np.uint8).reshape(-1))
        self.write(topic, stamp_ns, msg)

    def write_camera_info(self, topic, stamp_ns, info, frame_id):
        """`info`: dict with width, height, distortion_model, d, k (9), r (9), p (12); the matrix keys
        may also be upper case (K, D, R, P) as the synthetic rig writes them."""
        def matrix(key, size):
            value = np.asarray(info[key] if key in info else info[key.upper()], dtype=np.float64).ravel()
            if size and value.size != size:
                raise ValueError(f'{topic}: camera_info {key} needs {size} values, got {value.size}')
            return value
        roi = _t['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        msg = _t[CAMERA_INFO](
            header=_header(stamp_ns, frame_id), height=int(info['height']), width=int(info['width']),
            distortion_model=info.get('distortion_model', 'plumb_bob'), d=matrix('d', 0),
            k=matrix('k', 9), r=matrix('r', 9), p=matrix('p', 12), binning_x=0, binning_y=0, roi=roi)
        self.write(topic, stamp_ns, msg)

    def write_points(self, topic, stamp_ns, records, frame_id):
        """Unorganised PointCloud2 whose points are the records of a numpy structured array
        (e.g. inference.instances.TIP_DTYPE); an N x 3 float array gives plain x, y, z float32 points."""
        records = np.asarray(records)
        if records.dtype.names is None:
            xyz = records.astype(np.float32).reshape(-1, 3)
            records = np.zeros(len(xyz), np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4')]))
            records['x'], records['y'], records['z'] = xyz.T
        field = _t['sensor_msgs/msg/PointField']
        fields = []
        for name in records.dtype.names:
            ftype, offset = records.dtype.fields[name][:2]
            if ftype.str not in _POINT_FIELD_TYPES:
                raise ValueError(f'{topic}: point field {name} has no PointField type ({ftype})')
            fields.append(field(name=name, offset=offset, count=1, datatype=_POINT_FIELD_TYPES[ftype.str]))
        is_dense = all(np.isfinite(records[n]).all() for n in 'xyz' if n in records.dtype.names)
        itemsize = records.dtype.itemsize
        msg = _t[POINT_CLOUD2](header=_header(stamp_ns, frame_id), height=1, width=len(records), fields=fields,
                               is_bigendian=False, point_step=itemsize, row_step=itemsize * len(records),
                               data=np.frombuffer(records.tobytes(), np.uint8), is_dense=bool(is_dense))
        self.write(topic, stamp_ns, msg)


def _open_reader(path):
    path = Path(path)
    if not (path / 'metadata.yaml').is_file():
        raise DataError(f'{path}: not a rosbag2 bag (no metadata.yaml)')
    try:
        reader = Reader(path)
        reader.open()
    except Exception as e:  # rosbags raises several error types for broken bags
        raise DataError(f'{path}: cannot open bag ({one_line(e)})') from None
    return reader


def bag_info(path):
    """{'topics': {topic: (msgtype, count)}, 'start_ns', 'end_ns', 'message_count', 'storage',
    'custom_data'}."""
    reader = _open_reader(path)
    metadata = yaml.safe_load((Path(path) / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    try:
        return {'topics': {c.topic: (c.msgtype, c.msgcount) for c in reader.connections},
                'start_ns': reader.start_time if reader.message_count else 0,
                'end_ns': reader.end_time - 1 if reader.message_count else 0,  # rosbags: one past the last
                'message_count': reader.message_count,
                'storage': metadata['storage_identifier'], 'custom_data': metadata.get('custom_data') or {}}
    finally:
        reader.close()


def read_bag_raw(path, topics=None):
    """Iterate (topic, msgtype, bag time ns, CDR bytes) in time order; `topics` filters (None = all)."""
    reader = _open_reader(path)
    try:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        if topics is not None and not conns:
            return
        for conn, stamp, raw in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, stamp, raw
    except DataError:
        raise
    except Exception as e:
        raise DataError(f'{path}: cannot read bag ({one_line(e)})') from None
    finally:
        reader.close()


def read_bag(path, topics=None):
    """Iterate (topic, bag time ns, decoded rosbags message) in time order."""
    for topic, msgtype, stamp, raw in read_bag_raw(path, topics):
        yield topic, stamp, TYPESTORE.deserialize_cdr(raw, msgtype)


def image_array(msg):
    """Image message (rosbags or rclpy) -> numpy array in its own encoding (HxW or HxWxC)."""
    if msg.encoding not in _ENCODINGS:
        raise DataError(f'image encoding {msg.encoding!r} not supported')
    dtype, channels = _ENCODINGS[msg.encoding]
    dtype = np.dtype(dtype).newbyteorder('>' if msg.is_bigendian else '<')
    row_bytes = msg.width * channels * dtype.itemsize
    buf = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if msg.step < row_bytes or buf.size < msg.step * msg.height:
        raise DataError(f'image {msg.width}x{msg.height} {msg.encoding}: step {msg.step} / '
                        f'{buf.size} bytes too small')
    rows = buf[:msg.step * msg.height].reshape(msg.height, msg.step)[:, :row_bytes]
    array = np.ascontiguousarray(rows).view(dtype).astype(dtype.newbyteorder('='))
    return array.reshape(msg.height, msg.width) if channels == 1 else array.reshape(msg.height, msg.width, channels)


def camera_info_dict(msg):
    """CameraInfo message -> the dict `BagWriter.write_camera_info` takes (numpy arrays k 3x3, p 3x4)."""
    return {'width': int(msg.width), 'height': int(msg.height), 'distortion_model': msg.distortion_model,
            'd': np.asarray(msg.d, dtype=np.float64), 'k': np.asarray(msg.k, dtype=np.float64).reshape(3, 3),
            'r': np.asarray(msg.r, dtype=np.float64).reshape(3, 3),
            'p': np.asarray(msg.p, dtype=np.float64).reshape(3, 4)}


def cloud_points(msg):
    """PointCloud2 -> numpy structured array, one record per point, fields at their message offsets."""
    kinds = {code: np.dtype(t) for t, code in _POINT_FIELD_TYPES.items()}
    try:
        formats = [kinds[f.datatype] for f in msg.fields]
    except KeyError:
        raise DataError('PointCloud2 has a field of unknown datatype') from None
    dtype = np.dtype({'names': [f.name for f in msg.fields],
                      'formats': [f.newbyteorder('>') if msg.is_bigendian else f for f in formats],
                      'offsets': [f.offset for f in msg.fields], 'itemsize': msg.point_step})
    count = msg.width * msg.height
    data = bytes(msg.data)
    if len(data) < count * msg.point_step:
        raise DataError(f'PointCloud2 holds {len(data)} bytes, {count} points need {count * msg.point_step}')
    return np.frombuffer(data[:count * msg.point_step], dtype=dtype)
