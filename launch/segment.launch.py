"""Start the mffseg segmentation node.

    ros2 launch mffseg_ros segment.launch.py                       # config/segment.yaml
    ros2 launch mffseg_ros segment.launch.py preset:=dvrk namespace:=psm_cam
    ros2 launch mffseg_ros segment.launch.py params_file:=/path/my.yaml weights:=/path/w.safetensors
    ros2 launch mffseg_ros segment.launch.py lifecycle:=true fastdds_profile:=true

Parameters come from `params_file` (default: config/<preset>.yaml); the other arguments, when
given, override the file's values. `lifecycle:=true` starts the managed node and drives it through
configure to active; `fastdds_profile:=true` gives the node the shipped Fast DDS profile for large
images (give the camera driver the same FASTDDS_DEFAULT_PROFILES_FILE: see docs/ROS_INTERFACE.md).
"""
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from launch import LaunchDescription

PRESETS = ('segment', 'dvrk', 'ambf', 'raven', 'endovis_bag')
# launch argument -> (node parameter, type); an empty argument leaves the file's value alone.
OVERRIDES = {
    'weights': ('weights', str),
    'device': ('device', str),
    'backend': ('backend', str),
    'precision': ('precision', str),
    'left_image_topic': ('left_image_topic', str),
    'right_image_topic': ('right_image_topic', str),
    'use_compressed': ('use_compressed', bool),
    'stereo': ('stereo', bool),
}


def _config_file(preset):
    from mffseg_ros.paths import share_file
    return str(share_file('config', f'{preset}.yaml'))


def _as_bool(name, text):
    lowered = text.strip().lower()
    if lowered in ('true', '1', 'yes'):
        return True
    if lowered in ('false', '0', 'no'):
        return False
    raise ValueError(f"launch argument {name}:='{text}' is not true or false")


def _managed(node):
    """Configure the lifecycle node once it runs, activate it once it is inactive."""
    configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                            transition_id=Transition.TRANSITION_CONFIGURE))
    activate = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state='configuring', goal_state='inactive',
        entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                              transition_id=Transition.TRANSITION_ACTIVATE))]))
    return [node, activate, configure]


def _node(context):
    arg = {name: LaunchConfiguration(name).perform(context) for name in
           ('namespace', 'preset', 'params_file', 'node_name', 'log_level', 'lifecycle', 'fastdds_profile',
            *OVERRIDES)}
    if arg['preset'] not in PRESETS:
        raise ValueError(f"preset:='{arg['preset']}' is not one of {', '.join(PRESETS)}")
    params_file = arg['params_file'] or _config_file(arg['preset'])
    overrides = {}
    for launch_name, (param, kind) in OVERRIDES.items():
        text = arg[launch_name]
        if text:
            overrides[param] = _as_bool(launch_name, text) if kind is bool else text
    managed = _as_bool('lifecycle', arg['lifecycle'])
    flags = ['--lifecycle'] if managed else []
    if _as_bool('fastdds_profile', arg['fastdds_profile']):
        flags.append('--fastdds-large-images')
    options = dict(
        package='mffseg_ros', executable='segment_node', name=arg['node_name'],
        namespace=arg['namespace'], output='screen', emulate_tty=True,
        parameters=[params_file, overrides] if overrides else [params_file],
        arguments=[*flags, '--ros-args', '--log-level', arg['log_level']],
    )
    return _managed(LifecycleNode(**options)) if managed else [Node(**options)]


def generate_launch_description():
    args = [
        DeclareLaunchArgument('namespace', default_value='', description='namespace of the node and its topics'),
        DeclareLaunchArgument('preset', default_value='segment', choices=list(PRESETS),
                              description='config/<preset>.yaml when params_file is empty'),
        DeclareLaunchArgument('params_file', default_value='', description='parameters YAML (overrides preset)'),
        DeclareLaunchArgument('node_name', default_value='mffseg', description='node name (~/ topics follow it)'),
        DeclareLaunchArgument('log_level', default_value='info', description='debug | info | warn | error'),
        DeclareLaunchArgument('weights', default_value='', description='safetensors weights; empty = from params'),
        DeclareLaunchArgument('device', default_value='', description='auto | cpu | cuda[:N]; empty = from params'),
        DeclareLaunchArgument('backend', default_value='', description='auto | torch | onnx | ...; empty: from params'),
        DeclareLaunchArgument('precision', default_value='',
                              description='fp32 | fp16 (CUDA) | bf16 | int8 (CPU, ONNX Runtime); empty = from params'),
        DeclareLaunchArgument('left_image_topic', default_value='', description='left image topic'),
        DeclareLaunchArgument('right_image_topic', default_value='', description='right image topic'),
        DeclareLaunchArgument('use_compressed', default_value='', description='true | false: <topic>/compressed'),
        DeclareLaunchArgument('stereo', default_value='', description='true | false: stereo pairing and 3-D'),
        DeclareLaunchArgument('lifecycle', default_value='false',
                              description='true: the managed node, driven through configure to active'),
        DeclareLaunchArgument('fastdds_profile', default_value='false',
                              description='true: Fast DDS profile for large images (config/fastdds_large_images.xml)'),
    ]
    return LaunchDescription(args + [OpaqueFunction(function=_node)])
