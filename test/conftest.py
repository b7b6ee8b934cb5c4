import os
import random

import pytest

# Isolate DDS traffic of this test run: a per-run domain and localhost-only discovery.
os.environ.setdefault('ROS_DOMAIN_ID', str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')


@pytest.fixture(scope='module')
def one_thread():
    """One intra-op torch thread for modules of tiny tensors: on a loaded 2-core machine a second
    OpenMP thread only adds barrier waits (tens of ms per small transposed convolution)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope='module')
def segmenter():
    """The shipped default model on the CPU, loaded once per test module."""
    import warnings

    from mffseg_ros.inference.segmenter import Segmenter
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # "random model" warning where no weights ship
        return Segmenter.load(None, device='cpu')


@pytest.fixture(scope='module')
def ros(request):
    """A RosHarness (own rclpy context, probe node, executor thread) per test module; a module names its
    probe node with ROS_PROBE_NAME."""
    from mffseg_ros.ros.harness import RosHarness
    harness = RosHarness(probe_name=getattr(request.module, 'ROS_PROBE_NAME', 'mffseg_probe'))
    yield harness
    harness.close()
