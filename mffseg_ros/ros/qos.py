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


def matching_reliability(offered):
    """Input reliability for `auto`, the rule of rosbag2's recorder: 'reliable' when every publisher
    offers RELIABLE (no resends lost to a best-effort reader), else 'best_effort' (a reliable reader
    would not match a best-effort writer). With no publisher yet: 'best_effort', which matches any."""
    offered = list(offered)
    if offered and all(policy == ReliabilityPolicy.RELIABLE for policy in offered):
        return 'reliable'
    return 'best_effort'
