"""mffseg_ros: MFF surgical instrument segmentation for ROS 2.

Layers (each importable without the ones above it):
  model/       pure PyTorch network, discriminator, safetensors weights
  data/        EndoVis 2017 and generic readers, augmentation, synthetic stereo scenes
  training/    `mffseg train`          evaluation/  metrics, `mffseg evaluate`
  inference/   Segmenter API, pre/post-processing, instances and tips, stereo, backends
  tools/       bags, benchmarks, demo  ros/         the thin rclpy layer (node, replay)
"""
__version__ = '0.1.0'
__all__ = ['Segmenter', 'SegmentationResult', '__version__']


def __getattr__(name):
    # Lazy: `import mffseg_ros` must not pull torch in (the ROS launch file and CLI help stay fast).
    if name in ('Segmenter', 'SegmentationResult'):
        from mffseg_ros.inference import segmenter
        return getattr(segmenter, name)
    raise AttributeError(name)
