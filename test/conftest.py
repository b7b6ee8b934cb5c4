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
