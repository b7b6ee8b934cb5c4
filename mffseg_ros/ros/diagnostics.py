"""Node health: counters, rates and receive->publish latency, reported as a DiagnosticArray."""
import threading
import time
from collections import Counter, deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

RATE_WINDOW_S = 5.0
STANDARD_COUNTS = ('received', 'processed', 'rejected', 'errors', 'skipped_idle')


class NodeStats:
    """Thread-safe counters shared by the callbacks, the worker and the diagnostics timer."""

    def __init__(self, latency_window=300):
        self._lock = threading.Lock()
        self.counts = Counter()     # received, processed, rejected, errors, rendered.<output>, ...
        self.rejected_by_reason = Counter()
        self.last_error = ''
        self._latencies = deque(maxlen=latency_window)
        self._input_ages = deque(maxlen=latency_window)   # header stamp -> image callback
        self._transport = deque(maxlen=latency_window)    # publish (DDS source timestamp) -> image callback
        self._received_times = deque()
        self._processed_times = deque()

    def received(self, side='left'):
        """One input image; the input rate counts left (or mono) frames, i.e. the camera rate."""
        with self._lock:
            self.counts['received'] += 1
            self.counts[f'received.{side}'] += 1
            if side == 'left':
                self._received_times.append(time.monotonic())

    def arrived(self, input_age_s, transport_s):
        """Delays of one image before the node saw it: since its stamp, and since it was published."""
        with self._lock:
            self._input_ages.append(input_age_s)
            self._transport.append(transport_s)

    def processed(self, latency_s):
        with self._lock:
            self.counts['processed'] += 1
            self._processed_times.append(time.monotonic())
            self._latencies.append(latency_s)

    def rejected(self, reason, message):
        with self._lock:
            self.counts['rejected'] += 1
            self.rejected_by_reason[reason] += 1
            self.last_error = message

    def error(self, message):
        with self._lock:
            self.counts['errors'] += 1
            self.last_error = message

    def add(self, key, n=1):
        with self._lock:
            self.counts[key] += n

    def snapshot(self):
        """A plain dict of everything, for diagnostics and tests."""
        now = time.monotonic()
        with self._lock:
            for times in (self._received_times, self._processed_times):
                while times and now - times[0] > RATE_WINDOW_S:
                    times.popleft()
            lat = np.asarray(self._latencies, dtype=np.float64)
            age = np.asarray(self._input_ages, dtype=np.float64)
            transport = np.asarray(self._transport, dtype=np.float64)
            return {
                'counts': {**dict.fromkeys(STANDARD_COUNTS, 0), **self.counts},
                'rejected_by_reason': dict(self.rejected_by_reason),
                'input_rate_hz': _rate(self._received_times, now),
                'processed_rate_hz': _rate(self._processed_times, now),
                'latency_p50_ms': float(np.percentile(lat, 50) * 1e3) if lat.size else float('nan'),
                'latency_p99_ms': float(np.percentile(lat, 99) * 1e3) if lat.size else float('nan'),
                'input_age_p50_ms': _percentile_ms(age, 50),
                'input_age_p99_ms': _percentile_ms(age, 99),
                'transport_p50_ms': _percentile_ms(transport, 50),
                'transport_p99_ms': _percentile_ms(transport, 99),
                # of the time from publish to outputs, the part spent before the node saw the frame
                'transport_share': (float(np.median(transport) / (np.median(transport) + np.median(lat)))
                                    if transport.size and lat.size else float('nan')),
                'last_error': self.last_error,
            }


def _percentile_ms(values, q):
    return float(np.percentile(values, q) * 1e3) if values.size else float('nan')


def _rate(times, now):
    if len(times) < 2:
        return 0.0
    span = max(now - times[0], 1e-6)
    return (len(times) - 1) / span if span < RATE_WINDOW_S else len(times) / RATE_WINDOW_S


def diagnostic_array(stamp, node_name, snapshot, info, previous_counts=None, warning=''):
    """One DiagnosticStatus for the node. `info` adds static fields (device, precision, model...).
    Level: ERROR after processing errors since the last report, WARN after rejected frames or with
    no input or with a standing `warning` (e.g. stereo asked for, 3-D impossible), OK otherwise."""
    counts = snapshot['counts']
    previous_counts = previous_counts or {}
    new_errors = counts.get('errors', 0) - previous_counts.get('errors', 0)
    new_rejected = counts.get('rejected', 0) - previous_counts.get('rejected', 0)
    if new_errors:
        level, message = DiagnosticStatus.ERROR, f'{new_errors} processing error(s): {snapshot["last_error"]}'
    elif new_rejected:
        level, message = DiagnosticStatus.WARN, f'{new_rejected} frame(s) rejected: {snapshot["last_error"]}'
    elif not counts.get('received'):
        level, message = DiagnosticStatus.WARN, 'no input images yet'
    elif warning:
        level, message = DiagnosticStatus.WARN, warning
    else:
        level, message = DiagnosticStatus.OK, f'{snapshot["processed_rate_hz"]:.1f} Hz'
    values = {
        'input_rate_hz': f'{snapshot["input_rate_hz"]:.2f}',
        'processed_rate_hz': f'{snapshot["processed_rate_hz"]:.2f}',
        'latency_p50_ms': f'{snapshot["latency_p50_ms"]:.1f}',
        'latency_p99_ms': f'{snapshot["latency_p99_ms"]:.1f}',
        'input_age_p50_ms': f'{snapshot["input_age_p50_ms"]:.1f}',
        'input_age_p99_ms': f'{snapshot["input_age_p99_ms"]:.1f}',
        'transport_p50_ms': f'{snapshot["transport_p50_ms"]:.1f}',
        'transport_p99_ms': f'{snapshot["transport_p99_ms"]:.1f}',
        'transport_share': f'{snapshot["transport_share"]:.2f}',
        'last_error': snapshot['last_error'],
    }
    for key in (*STANDARD_COUNTS, 'dropped', 'unmatched', 'superseded', 'camera_info_rejected'):
        values[key] = str(counts.get(key, 0))
    for key, n in sorted(counts.items()):
        if key.startswith(('superseded.', 'camera_info_rejected.')):
            values[key] = str(n)
    for reason, n in sorted(snapshot['rejected_by_reason'].items()):
        values[f'rejected.{reason}'] = str(n)
    values.update({k: str(v) for k, v in info.items()})
    status = DiagnosticStatus(level=level, name=f'{node_name}: segmentation', message=message,
                              hardware_id=str(info.get('device', '')),
                              values=[KeyValue(key=k, value=v) for k, v in values.items()])
    return DiagnosticArray(header=_header(stamp), status=[status])


def _header(stamp):
    from std_msgs.msg import Header
    return Header(stamp=stamp)


def diagnostic_values(array_msg):
    """{key: value} of the first status (for consumers and tests)."""
    return {kv.key: kv.value for kv in array_msg.status[0].values}
