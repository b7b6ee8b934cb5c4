"""The managed (lifecycle) variant of the segmentation node: `segment_node --lifecycle`.

unconfigured -> configure: load the model and warm it up; create the outputs
inactive     -> activate: subscribe to the inputs, start the worker
active       -> deactivate: stop the worker, unsubscribe (the model stays loaded)
inactive     -> cleanup: destroy the outputs, free the model (and its GPU memory)
Drive it with `ros2 lifecycle set /mffseg configure` (then `activate`) or the launch file's
`lifecycle:=true`, which does both.
"""
import numpy as np
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

from mffseg_ros.errors import MffsegError
from mffseg_ros.ros.segment_node import NODE_NAME, SegmentNode

WARM_UP_SIZE = (480, 640)  # a first frame of a typical size pays the allocator and kernel selection


class LifecycleSegmentNode(SegmentNode, LifecycleNode):
    """SegmentNode's phases as lifecycle transitions. `segmenter`: an already loaded model used at
    every configure (tests share one); by default configure loads one from the parameters."""

    def __init__(self, *, segmenter=None, node_name=NODE_NAME, **node_kwargs):
        LifecycleNode.__init__(self, node_name, **node_kwargs)  # not SegmentNode's: nothing starts yet
        self._given_segmenter = segmenter
        self._prepare()

    def on_configure(self, state):
        try:
            self._configure(self._given_segmenter)
            self._warm_up()
        except MffsegError as e:
            self.get_logger().error(f'configure failed: {e}')
            self._unconfigure()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _warm_up(self):
        size = tuple(self.segmenter.train_size or WARM_UP_SIZE)[:2]
        self.segmenter.segment(np.zeros((*size, 3), np.uint8))

    def on_activate(self, state):
        self.perception.reset()  # tracks from before a pause would match the wrong instruments
        self._activate()
        return super().on_activate(state)

    def on_deactivate(self, state):
        self._deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state):
        self._unconfigure()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state):
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state):
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self):
        if self._subs or self._worker is not None:
            self._deactivate()
        if self.segmenter is not None:
            self._unconfigure()

    def diagnostics_info(self):
        return {**super().diagnostics_info(), 'lifecycle_state': self._state_machine.current_state[1]}
