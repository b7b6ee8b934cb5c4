"""rclpy messages <-> numpy: images in, label images / tip clouds / markers out.

The decoding rules themselves live in `mffseg_ros.inference.image_codec`; this module only
unpacks message fields, so the same rules serve the node, the bag tools and offline scripts.
"""
import array

import numpy as np
from geometry_msgs.msg import Point, Pose, PoseArray
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from mffseg_ros.inference.camera_model import check_camera_info
from mffseg_ros.inference.image_codec import decode_compressed, decode_image, inspect_compressed, inspect_image

# The ~/tips point layout is defined once (40 bytes a point, little endian): a numpy-only consumer
# reads np.frombuffer(msg.data, dtype=TIP_DTYPE, count=msg.width * msg.height).
from mffseg_ros.inference.tip_records import TIP_DTYPE, TIP_POINT_FIELDS, axis_quaternion, tip_records
from mffseg_ros.visualize import instrument_color, type_name


def stamp_ns(header):
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def decode_image_msg(msg, max_pixels=None):
    """sensor_msgs/Image -> HxWx3 RGB uint8 (raises ImageFormatError, also above `max_pixels`)."""
    return decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian, max_pixels)


def decode_compressed_msg(msg, max_pixels=None):
    """sensor_msgs/CompressedImage -> HxWx3 RGB uint8 (raises ImageFormatError, also above `max_pixels`);
    the size is read from the jpeg/png header before any pixel is decoded."""
    return decode_compressed(msg.format, msg.data, max_pixels)


def inspect_image_msg(msg, max_pixels=None):
    """(height, width) of an Image or CompressedImage that would decode, without decoding its pixels
    (raises ImageFormatError): the check for an image that is not segmented."""
    if hasattr(msg, 'format'):
        return inspect_compressed(msg.format, msg.data, max_pixels)
    return inspect_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian, max_pixels)


def _uint8_array(pixels):
    """rclpy stores uint8[] as array.array('B'); assigning one skips a per-element check."""
    out = array.array('B')
    out.frombytes(memoryview(np.ascontiguousarray(pixels)).cast('B'))
    return out


def image_msg(pixels, header, encoding):
    """HxW (mono8, mono16) or HxWx3 (rgb8/bgr8) array -> sensor_msgs/Image with `header`
    (mono16 little endian, is_bigendian 0)."""
    dtype = np.dtype('<u2' if encoding == 'mono16' else np.uint8)
    pixels = np.ascontiguousarray(pixels, dtype=dtype)
    msg = Image(header=header, height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
                is_bigendian=0)
    msg.step = pixels.shape[1] * (pixels.shape[2] if pixels.ndim == 3 else 1) * dtype.itemsize
    msg.data = _uint8_array(pixels)
    return msg


def calibration(info_msg, image_size=None):
    """sensor_msgs/CameraInfo -> checked camera_model.Calibration (P, raw -> rectified pixel function,
    image size); DataError naming the problem when it is unusable (e.g. uncalibrated: P all zero)."""
    m = info_msg
    return check_camera_info(k=m.k, d=m.d, r=m.r, p=m.p, distortion_model=m.distortion_model, height=m.height,
                             width=m.width, binning_x=m.binning_x, binning_y=m.binning_y, roi_height=m.roi.height,
                             roi_width=m.roi.width, image_size=image_size)


def camera_info_key(info_msg):
    """The fields `calibration` reads, hashable: a camera repeating its camera_info is checked once."""
    m = info_msg
    return (m.height, m.width, m.distortion_model, bytes(memoryview(m.d)), bytes(memoryview(m.k)),
            bytes(memoryview(m.r)), bytes(memoryview(m.p)), m.binning_x, m.binning_y, m.roi.height, m.roi.width)


def tips_cloud(instruments, header):
    """perception.TrackedInstrument list -> sensor_msgs/PointCloud2 (one point each, layout TIP_DTYPE)."""
    points = tip_records(instruments)
    cloud = PointCloud2(header=header, height=1, width=len(points), is_bigendian=False,
                        point_step=TIP_DTYPE.itemsize, row_step=TIP_DTYPE.itemsize * len(points),
                        is_dense=False)
    cloud.fields = [PointField(name=name, offset=offset, datatype=datatype, count=count)
                    for name, offset, datatype, count in TIP_POINT_FIELDS]
    cloud.data = _uint8_array(points.view(np.uint8))
    return cloud


def cloud_to_tips(cloud):
    """sensor_msgs/PointCloud2 from ~/tips -> structured array of TIP_DTYPE."""
    return np.frombuffer(bytes(cloud.data), dtype=TIP_DTYPE, count=cloud.width * cloud.height)


def tip_poses(instruments, header):
    """geometry_msgs/PoseArray in the order of ~/tips: position = 3-D tip, x axis = the shaft axis
    pointing to the tip. Without 3-D the position is NaN and the orientation the identity."""
    msg = PoseArray(header=header)
    for inst in instruments:
        pose = Pose()
        pose.position = Point(x=float(inst.xyz[0]), y=float(inst.xyz[1]), z=float(inst.xyz[2]))
        qx, qy, qz, qw = axis_quaternion(inst.axis_xyz)
        pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = qx, qy, qz, qw
        msg.poses.append(pose)
    return msg


def tip_markers(instruments, header, scale=0.004, namespace='mffseg_tips'):
    """A DELETEALL, then per instrument with a 3-D tip: a sphere, a shaft arrow and a text label, in the
    instrument's overlay colour (RViz needs 3-D)."""
    markers = [Marker(header=header, ns=namespace, action=Marker.DELETEALL)]
    for inst in instruments:
        if not np.all(np.isfinite(inst.xyz)):
            continue
        r, g, b = (c / 255.0 for c in instrument_color(inst.colour))
        color = ColorRGBA(r=r, g=g, b=b, a=1.0)
        position = Point(x=float(inst.xyz[0]), y=float(inst.xyz[1]), z=float(inst.xyz[2]))
        sphere = Marker(header=header, ns=namespace, id=3 * int(inst.track_id), type=Marker.SPHERE,
                        action=Marker.ADD, color=color)
        sphere.pose.position = position
        sphere.pose.orientation.w = 1.0
        sphere.scale.x = sphere.scale.y = sphere.scale.z = float(scale)
        markers.append(sphere)
        if inst.axis_xyz is not None:
            arrow = Marker(header=header, ns=namespace, id=3 * int(inst.track_id) + 2, type=Marker.ARROW,
                           action=Marker.ADD, color=color)
            start = np.asarray(inst.xyz) - 5 * float(scale) * np.asarray(inst.axis_xyz)
            arrow.points = [Point(x=float(start[0]), y=float(start[1]), z=float(start[2])), position]
            arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.25 * float(scale), 0.5 * float(scale), 0.0
            markers.append(arrow)
        text = Marker(header=header, ns=namespace, id=3 * int(inst.track_id) + 1,
                      type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                      color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0))
        text.pose.position = Point(x=position.x, y=position.y - 2 * float(scale), z=position.z)
        text.pose.orientation.w = 1.0
        text.scale.z = 2 * float(scale)
        text.text = f'#{inst.track_id} {type_name(inst.type_id)}'
        markers.append(text)
    return MarkerArray(markers=markers)
