"""ament_python package setup: builds with colcon on ROS 2 Jazzy/Kilted and installs with pip."""
from glob import glob

from setuptools import find_packages, setup

package_name = 'mffseg_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')),
        ('share/' + package_name + '/configs', glob('configs/*.yaml')),
        ('share/' + package_name + '/models', glob('models/*.safetensors') + glob('models/*.md')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='mffseg_ros maintainers',
    maintainer_email='maintainers@users.noreply.r-seed-33f6f3c3.example',
    description='Real-time surgical instrument segmentation (MFF network) for ROS 2 stereo endoscopes.',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'mffseg = mffseg_ros.cli:main',
            'segment_node = mffseg_ros.ros.segment_node:main',
        ],
    },
)
