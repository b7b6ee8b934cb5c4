"""An executor spun in a background thread that stops cleanly.

`executor.spin()` in a thread cannot be stopped safely from outside: `executor.shutdown()` races the
spinning thread, which may already hold a ready callback and then submits it to the shut-down thread pool
("cannot schedule new futures after shutdown") or waits on nodes being destroyed (InvalidHandle). Here
the thread spins in short slices and is joined BEFORE the executor shuts down, and callbacks still
running finish first too: rclpy's shutdown destroys the guard condition they trigger when they end
("The following exception was never retrieved: cannot use Destroyable ...").
"""
import threading
import time

SLICE_S = 0.05  # how long stop() may wait for the thread's current wait to end


class SpinThread:
    def __init__(self, executor, name='executor'):
        self.executor = executor
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name=name, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _spin(self):
        context = self.executor.context
        while not self._stop.is_set() and context.ok():
            self.executor.spin_once(timeout_sec=SLICE_S)

    def stop(self, timeout=5.0):
        """Stops spinning, then shuts the executor down (waiting for callbacks still running)."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        # MultiThreadedExecutor keeps the callbacks it handed to its pool in `_futures` (no public API)
        for task in list(getattr(self.executor, '_futures', ())):
            while not task.done() and time.monotonic() < deadline:
                time.sleep(0.001)
        self.executor.shutdown()
