"""Latest-frame stereo pairing by header stamp, with bounded buffers and counted losses.

Callbacks `push` messages; the worker asks for the newest complete frame with `pop_newest`.
Everything older than the frame it returns is discarded and counted, so processing never
queues up behind the camera. No rclpy here: stamps are integer nanoseconds.
"""
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Frame:
    stamp_ns: int
    received: float  # time.monotonic() when the callback stored it
    msg: Any
    rejected: bool = False  # already counted as malformed: not counted again when dropped or unmatched


@dataclass
class PairingCounts:
    dropped: int = 0     # stale: a newer frame was processed first
    unmatched: int = 0   # never found a partner within sync_slop (stereo only)
    max_buffered: int = 0  # largest buffer length seen, to show the bound holds


@dataclass
class StereoPairer:
    """Pairs left/right frames whose stamps differ by at most `slop_ns`; mono when `stereo` is False."""
    stereo: bool = True
    slop_ns: int = 0
    depth: int = 10
    counts: PairingCounts = field(default_factory=PairingCounts)

    def __post_init__(self):
        if self.depth < 1:
            raise ValueError('depth must be >= 1')
        self._buffers = {'left': deque(), 'right': deque()}
        self._cond = threading.Condition()
        self._closed = False

    def push(self, side, frame):
        with self._cond:
            buf = self._buffers[side]
            if not self.stereo:
                # Mono: only the newest frame is kept; an unprocessed older one is stale.
                self.counts.dropped += _counted(buf)
                buf.clear()
            elif len(buf) >= self.depth:
                self.counts.unmatched += _counted([buf.popleft()])
            buf.append(frame)
            self.counts.max_buffered = max(self.counts.max_buffered, len(buf))
            if self.stereo:
                # Once a newer pair is complete, everything older is useless: count it and let it go.
                found = self._newest_pair()
                if found is not None:
                    self._discard_before(*found)
            self._cond.notify_all()

    def set_slop(self, slop_ns):
        with self._cond:
            self.slop_ns = int(slop_ns)

    def close(self):
        """Wake and release a worker blocked in `pop_newest`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self):
        """Accept work again after `close` (a lifecycle node re-activated); old frames are let go."""
        with self._cond:
            self._closed = False
            for buf in self._buffers.values():
                buf.clear()

    def pop_newest(self, timeout=None):
        """Newest (left, right) pair (right is None in mono), or None on timeout / close."""
        with self._cond:
            while not self._closed:
                found = self._take_newest()
                if found is not None:
                    return found
                if not self._cond.wait(timeout):
                    return None
            return None

    def buffered(self):
        with self._cond:
            return {side: len(buf) for side, buf in self._buffers.items()}

    def _take_newest(self):
        left, right = self._buffers['left'], self._buffers['right']
        if not self.stereo:
            return (left.pop(), None) if left else None
        found = self._newest_pair()
        if found is None:
            return None
        self._discard_before(*found)
        return left.popleft(), right.popleft()

    def _newest_pair(self):
        """(left index, right index) of the newest left frame with a partner, or None."""
        left, right = self._buffers['left'], self._buffers['right']
        for li in range(len(left) - 1, -1, -1):
            ri = self._partner(left[li].stamp_ns, right)
            if ri is not None:
                return li, ri
        return None

    def _partner(self, stamp_ns, frames):
        best, best_gap = None, None
        for i, frame in enumerate(frames):
            gap = abs(frame.stamp_ns - stamp_ns)
            if gap <= self.slop_ns and (best_gap is None or gap < best_gap):
                best, best_gap = i, gap
        return best

    def _discard_before(self, li, ri):
        """Remove the frames older than the pair at (li, ri); count stale pairs vs. orphans."""
        left, right = self._buffers['left'], self._buffers['right']
        old_left = [left.popleft() for _ in range(li)]
        old_right = [right.popleft() for _ in range(ri)]
        paired, unpaired_left, unpaired_right = [], [], list(old_right)
        for frame in old_left:
            i = self._partner(frame.stamp_ns, unpaired_right)
            if i is None:
                unpaired_left.append(frame)
            else:
                paired += [frame, unpaired_right.pop(i)]
        self.counts.dropped += _counted(paired)
        self.counts.unmatched += _counted(unpaired_left + unpaired_right)


def _counted(frames):
    """Frames to count as dropped/unmatched: rejected ones were counted when they arrived."""
    return sum(not frame.rejected for frame in frames)
