"""`mffseg play`: replay a rosbag2 bag over DDS through rclpy (no ROS 2 install needed).

    mffseg play <bag> [--rate R] [--loop] [--qos reliable|best_effort] [--topics T ...] [--wait SEC]

Messages go out at their recorded spacing divided by R (R = 0: as fast as possible), with the
header stamps they were recorded with. `play_bag()` does the same for the demo and tests.
"""
import importlib
import logging
import time

import rclpy
from rclpy.serialization import deserialize_message
from rclpy.signals import SignalHandlerOptions
from tqdm import tqdm

from mffseg_ros.data.bags import bag_info, read_bag_raw
from mffseg_ros.errors import DataError
from mffseg_ros.ros.qos import RELIABILITY, qos_profile

log = logging.getLogger(__name__)



def message_class(msgtype):
    """'sensor_msgs/msg/Image' -> the rclpy message class; None if this environment lacks it."""
    package, kind, name = msgtype.split('/')
    try:
        return getattr(importlib.import_module(f'{package}.{kind}'), name)
    except (ImportError, AttributeError):
        return None


def _wait_for_subscribers(publishers, timeout):
    """Give DDS discovery up to `timeout` s to match a subscriber on every topic: messages sent
    before a subscriber is matched are lost."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.get_subscription_count() > 0 for p in publishers.values()):
            return True
        time.sleep(0.02)
    missing = [t for t, p in publishers.items() if p.get_subscription_count() == 0]
    if missing:
        log.info('no subscriber yet on %s; playing anyway', ', '.join(missing))
    return not missing


def play_bag(node, path, *, rate=1.0, loop=False, max_loops=None, qos='reliable', topics=None,
             wait=0.0, progress=True, on_publish=None):
    """Publish the messages of bag `path` through `node` (None: a temporary node, and rclpy is
    initialised and shut down here if nobody did it before). Returns the number of messages published.

    rate: multiple of the recorded speed; 0 plays as fast as possible.
    loop: replay until interrupted, or `max_loops` times when that is given.
    topics: the topics to play (None: all). wait: seconds to wait for subscribers before starting.
    on_publish(topic, bag_time_ns, msg): called right after each message is published.
    """
    if not rate >= 0:
        raise DataError(f'--rate must be >= 0 (0: as fast as possible), got {rate}')
    info = bag_info(path)
    available = info['topics']
    wanted = list(available) if not topics else list(topics)
    unknown = [t for t in wanted if t not in available]
    if unknown:
        raise DataError(f'{path}: no topic {", ".join(unknown)} in this bag (it has {", ".join(available)})')
    classes = {t: message_class(available[t][0]) for t in wanted}
    missing_types = [f'{t} ({available[t][0]})' for t, cls in classes.items() if cls is None]
    if missing_types:
        raise DataError(f'{path}: message types not available in this ROS environment: {", ".join(missing_types)}')
    profile = qos_profile(qos)
    loops = 1 if not loop else (max_loops or 0)  # 0 = forever
    per_loop = sum(available[t][1] for t in wanted)
    if per_loop == 0:  # --loop would spin on it forever
        raise DataError(f'{path}: the bag holds no messages' + (' on these topics' if topics else ''))

    own_context = node is None and not rclpy.ok()
    if own_context:  # keep Python's Ctrl-C: rclpy's handler would shut the context down under us
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    own_node = node is None
    node = node or rclpy.create_node('mffseg_play')
    publishers = {t: node.create_publisher(classes[t], t, profile) for t in wanted}
    published = 0
    try:
        if wait > 0:
            _wait_for_subscribers(publishers, wait)
        with tqdm(total=per_loop * loops or None, desc=f'play {path}', unit='msg', disable=not progress) as bar:
            iteration = 0
            while loops == 0 or iteration < loops:
                published += _play_once(path, publishers, classes, wanted, rate, bar, on_publish)
                iteration += 1
    finally:
        for pub in publishers.values():
            node.destroy_publisher(pub)
        if own_node:
            node.destroy_node()
        if own_context:
            rclpy.shutdown()
    return published


def _play_once(path, publishers, classes, topics, rate, bar, on_publish):
    count = 0
    start_wall = first_bag = None
    for topic, _msgtype, bag_time, raw in read_bag_raw(path, topics):
        if start_wall is None:
            start_wall, first_bag = time.monotonic(), bag_time
        if rate > 0:  # sleep until the message is due at this speed
            delay = start_wall + (bag_time - first_bag) / 1e9 / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        msg = deserialize_message(raw, classes[topic])  # CDR bytes -> rclpy message
        publishers[topic].publish(msg)
        if on_publish is not None:
            on_publish(topic, bag_time, msg)
        count += 1
        bar.update(1)
    return count


def add_arguments(parser):
    parser.add_argument('bag', help='rosbag2 folder (mcap or sqlite3)')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='multiple of the recorded speed; 0 = as fast as possible (default 1)')
    parser.add_argument('--loop', action='store_true', help='replay until interrupted (Ctrl-C)')
    parser.add_argument('--qos', choices=sorted(RELIABILITY), default='reliable',
                        help='publisher reliability (default reliable)')
    parser.add_argument('--topics', nargs='+', metavar='TOPIC', help='play only these topics')
    parser.add_argument('--wait', type=float, default=1.0, metavar='SEC',
                        help='wait up to SEC for subscribers on every topic before playing (default 1)')


def run(args):
    n = play_bag(None, args.bag, rate=args.rate, loop=args.loop, qos=args.qos, topics=args.topics,
                 wait=args.wait)
    print(f'published {n} messages from {args.bag}')
    return 0
