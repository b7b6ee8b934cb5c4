"""The managed (lifecycle) variant of the segmentation node: `segment_node --lifecycle`.

unconfigured -> configure: load the model and warm it up; create the outputs
inactive     -> activate: subscribe to the inputs, start the worker
active       -> deactivate: stop the worker, unsubscribe (the model stays loaded)
inactive     -> cleanup: destroy the outputs, free the model (and its GPU memory)
Drive it with `ros2 lifecycle set /mffseg configure` (then `activate`) or the launch file's
`lifecycle:=true`, which does both.

The transitions live here as a mixin; segment_node.LifecycleSegmentNode combines them with
SegmentNode's phases (_configure, _activate, _deactivate, _unconfigure) and rclpy's LifecycleNode,
so this module needs nothing from segment_node (no import cycle).
"""
from rclpy.lifecycle import TransitionCallbackReturn

from mffseg_ros.errors import MffsegError


class ManagedTransitions:
    """Lifecycle callbacks over SegmentNode's phases. `self._given_segmenter`: an already loaded model
    used at every configure (tests share one); None loads one from the parameters."""

    def on_configure(self, state):
        try:
            self._configure(self._given_segmenter)  # a model it loads is warmed up before any subscription
        except MffsegError as e:
            self.get_logger().error(f'configure failed: {e}')
            self._unconfigure()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

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
