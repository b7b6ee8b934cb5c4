"""The one QoS builder of the package: keep-last, volatile, reliable or best effort."""
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from mffseg_ros.errors import DataError

RELIABILITY = {'reliable': ReliabilityPolicy.RELIABLE, 'best_effort': ReliabilityPolicy.BEST_EFFORT}


def qos_profile(reliability='reliable', depth=10):
    """KEEP_LAST `depth`, VOLATILE, with `reliability` 'reliable' or 'best_effort'."""
    if reliability not in RELIABILITY:
        raise DataError(f'unknown QoS {reliability!r} (choose {", ".join(RELIABILITY)})')
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=RELIABILITY[reliability],
                      durability=DurabilityPolicy.VOLATILE)
