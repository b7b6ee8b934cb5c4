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
                self.counts.dropped += len(buf)
                buf.clear()
            elif len(buf) >= self.depth:
                buf.popleft()
                self.counts.unmatched += 1
            buf.append(frame)
            self.counts.max_buffered = max(self.counts.max_buffered, len(buf))
            self._cond.notify_all()

    def set_slop(self, slop_ns):
        with self._cond:
            self.slop_ns = int(slop_ns)

    def close(self):
        """Wake and release a worker blocked in `pop_newest`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

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
        for li in range(len(left) - 1, -1, -1):
            ri = self._partner(left[li].stamp_ns, right)
            if ri is not None:
                pair = (left[li], right[ri])
                self._discard_older(left, li, right, ri)
                return pair
        return None

    def _partner(self, stamp_ns, right):
        best, best_gap = None, None
        for i, frame in enumerate(right):
            gap = abs(frame.stamp_ns - stamp_ns)
            if gap <= self.slop_ns and (best_gap is None or gap < best_gap):
                best, best_gap = i, gap
        return best

    def _discard_older(self, left, li, right, ri):
        """Remove the chosen pair and everything before it; count stale pairs vs. orphans."""
        old_left = [left.popleft() for _ in range(li)]
        left.popleft()
        old_right = [right.popleft() for _ in range(ri)]
        right.popleft()
        paired, unpaired_right = 0, list(old_right)
        for frame in old_left:
            i = self._partner(frame.stamp_ns, unpaired_right)
            if i is not None:
                unpaired_right.pop(i)
                paired += 1
        self.counts.dropped += 2 * paired
        self.counts.unmatched += len(old_left) + len(old_right) - 2 * paired
