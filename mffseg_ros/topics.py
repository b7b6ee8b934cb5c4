"""The one set of topic names shared by the node's defaults, the config presets and the bag tools."""
LEFT_IMAGE = '/stereo/left/image_raw'
RIGHT_IMAGE = '/stereo/right/image_raw'
LEFT_INFO = '/stereo/left/camera_info'
RIGHT_INFO = '/stereo/right/camera_info'
# Ground truth written by the bag tools (mono8 label images, same stamps as the images).
GT_PREFIX = '/stereo/left/ground_truth'
GT_PARTS = GT_PREFIX + '/parts'
GT_TYPE = GT_PREFIX + '/type'
GT_INSTANCE = GT_PREFIX + '/instance'  # mono16 instance ids
GT_RIGHT_PREFIX = '/stereo/right/ground_truth'
GT_TIPS = GT_PREFIX + '/tips'  # sensor_msgs/PointCloud2 with the generator's true 3-D tips (synth only)
