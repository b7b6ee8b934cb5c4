"""Synthetic stereo surgical scenes with exact labels and 3-D instrument tips (see docs/SYNTH.md)."""
from mffseg_ros.data.synth.dataset import SynthDataset, calibration_frames, calibration_options
from mffseg_ros.data.synth.rig import StereoRig
from mffseg_ros.data.synth.scene import SceneGenerator, StereoFrame

__all__ = ['SceneGenerator', 'StereoFrame', 'StereoRig', 'SynthDataset', 'calibration_frames', 'calibration_options']
