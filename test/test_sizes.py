import pytest

from mffseg_ros.errors import DataError, MffsegError
from mffseg_ros.sizes import parse_size


def test_parse_size_rules():
    assert parse_size(' 512 x 640 ') == (512, 640)
    with pytest.raises(MffsegError, match="--size '64by80': expected HxW"):
        parse_size('64by80', what='--size')
    with pytest.raises(MffsegError, match='at least 32'):
        parse_size('16x640', minimum=32)
    with pytest.raises(MffsegError, match='32 to 4096'):
        parse_size('5000x640', minimum=32, maximum=4096)
    with pytest.raises(DataError, match='multiples of 32'):
        parse_size('100x640', multiple=32, error=DataError)


def test_scalar_values_of_specs_and_node_parameters():
    from mffseg_ros.data.datasets import parse_data_spec
    from mffseg_ros.scalars import parse_scalar
    assert [parse_scalar(t) for t in ('3', '-2', '0.5', '1e-3', 'True', 'off', 'yes', 'fold0-val', '')] == \
        [3, -2, 0.5, 1e-3, True, False, True, 'fold0-val', '']
    assert parse_data_spec('synth:?frames=8&hflip=off&scale=1.5') == {'kind': 'synth', 'frames': 8, 'hflip': False,
                                                                      'scale': 1.5}
