"""The Segmenter API: any input size, results at input resolution, weights handling, errors."""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from mffseg_ros import Segmenter
from mffseg_ros.errors import MffsegError, WeightsError
from mffseg_ros.inference.results import host_maps, network_maps
from mffseg_ros.inference.segmenter import network_size
from mffseg_ros.model import MFFNet, save_weights


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp('w') / 'w.safetensors'
    return save_weights(path, MFFNet(), {'input_scale': 0.25})


@pytest.fixture(scope='module')
def seg(weights):
    return Segmenter.load(weights, device='cpu')


def test_segment_pair_is_the_batch_with_the_left_eye_done_beside(weights):
    """segment_pair: segment_batch's maps; with ONNX Runtime (the node's CPU default) early(left result)
    runs on the second thread (the right eye is in the network meanwhile) and its value comes back; its
    errors are the caller's. With eager torch, one batch and no early work (nothing runs beside it)."""
    seg = Segmenter.load(weights, device='cpu', backend='onnx')
    rng = np.random.default_rng(2)
    left, right = (rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(2))
    batch = seg.segment_batch([left, right])
    threads = []

    def early(result):
        threads.append(threading.current_thread().name)
        return result.net_parts.sum()

    res_left, res_right, value = seg.segment_pair(left, right, early)
    for got, want in zip((res_left, res_right), batch):
        np.testing.assert_allclose(got.foreground, want.foreground, atol=1e-5)
        assert (got.parts == want.parts).mean() > 0.999 and (got.type == want.type).mean() > 0.999
    assert res_left.image is left and res_right.image is right and res_left.net_dark is not None
    assert value == res_left.net_parts.sum() and threads[0] != threading.current_thread().name
    assert seg.segment_pair(left, right)[2] is None

    def broken(result):
        raise RuntimeError('search failed')

    with pytest.raises(RuntimeError, match='search failed'):
        seg.segment_pair(left, right, broken)
    with pytest.raises(MffsegError, match='same size'):
        seg.segment_pair(left, right[:64])
    eager = Segmenter.load(weights, device='cpu', backend='torch')
    threads.clear()
    res_left, _, value = eager.segment_pair(left, right, early)
    assert threads == [] and value is None and res_left.net_dark is not None


@pytest.mark.parametrize('shape', [(100, 130), (64, 64), (257, 311)])
def test_results_at_input_resolution(seg, shape):
    rgb = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    res = seg.segment(rgb)
    assert res.binary.shape == res.parts.shape == res.type.shape == res.confidence.shape == shape
    assert res.binary.dtype == bool and res.parts.dtype == np.uint8 and res.type.dtype == np.uint8
    assert res.parts.max() <= 3 and res.type.max() <= 7
    np.testing.assert_array_equal(res.binary, res.type > 0)
    assert res.class_names['parts'] == ['background', 'shaft', 'wrist', 'claspers']
    assert len(res.class_names['type']) == 8


def test_batch_equals_single(seg):
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(2))
    ra, rb = seg.segment_batch([a, b])
    np.testing.assert_array_equal(ra.type, seg.segment(a).type)
    np.testing.assert_array_equal(rb.parts, seg.segment(b).parts)


def test_matches_model_at_network_size(seg, weights):
    # At a frame already at network size the pipeline is exactly normalise -> model -> P(instrument)
    # (the heads' mean of 1 - P(background)) > 0.5 -> the most likely instrument type there.
    rgb = np.random.default_rng(2).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    s = Segmenter.load(weights, device='cpu', input_scale=1.0)
    x = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
         - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        out = s.model.split(s.model(x)['out'])
    probs = {task: torch.softmax(logits, 1)[0].numpy() for task, logits in out.items()}
    foreground = np.mean([1 - p[0] for p in probs.values()], axis=0)
    expected = np.where(foreground > 0.5, probs['type'][1:].argmax(0) + 1, 0)
    res = s.segment(rgb)
    np.testing.assert_allclose(res.foreground, foreground, atol=1e-5)
    np.testing.assert_array_equal(res.type, expected)
    np.testing.assert_array_equal(res.binary, foreground > 0.5)
    # The network-resolution maps the instruments are made from, against the plain softmax.
    for task in ('type', 'parts'):
        inside = probs[task][1:] / probs[task][1:].sum(0)
        np.testing.assert_allclose(getattr(res, f'{task}_probs'), inside, atol=1e-5)
        np.testing.assert_array_equal(getattr(res, f'net_{task}'), np.where(foreground > 0.5, inside.argmax(0) + 1, 0))
    np.testing.assert_allclose(res.confidence_net, probs['type'].max(0), atol=1e-5)


def test_aux_branch(weights):
    s = Segmenter.load(weights, device='cpu', branch='aux')
    assert s.segment(np.zeros((64, 80, 3), np.uint8)).type.shape == (64, 80)


def test_default_size_fits_the_training_frame(tmp_path):
    path = save_weights(tmp_path / 't.safetensors', MFFNet(tasks={'binary': 2}), {'train_size': [256, 320]})
    s = Segmenter.load(path, device='cpu')
    assert s.network_size(1024, 1280) == (256, 320)   # EndoVis / dVRK
    assert s.network_size(480, 640) == (256, 320)     # AMBF: 240 rounds up to 256
    assert s.network_size(512, 640) == (256, 320)
    assert Segmenter.load(path, device='cpu', input_scale=0.5).network_size(1024, 1280) == (512, 640)
    with pytest.raises(MffsegError, match='too small'):
        s.segment(np.zeros((1, 1, 3), np.uint8))


def test_network_size_rounding():
    assert network_size(1024, 1280, input_scale=0.5) == (512, 640)
    assert network_size(480, 640, input_scale=1.0) == (480, 640)
    assert network_size(10, 10, input_scale=0.5) == (32, 32)
    assert network_size(1024, 1280, input_size=(256, 320)) == (256, 320)
    with pytest.raises(MffsegError, match='multiples of 32'):
        network_size(1024, 1280, input_size=(250, 320))


@pytest.mark.parametrize('bad', [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32),
                                 np.zeros((0, 10, 3), np.uint8), 'image'])
def test_bad_frames_rejected(seg, bad):
    with pytest.raises(MffsegError):
        seg.segment(bad)


def test_bad_options_rejected(weights):
    with pytest.raises(MffsegError, match='precision'):
        Segmenter.load(weights, device='cpu', precision='int3')
    with pytest.raises(MffsegError, match='device'):
        Segmenter.load(weights, device='tpu')
    with pytest.raises(MffsegError, match='branch'):
        Segmenter.load(weights, device='cpu', branch='side')


def test_missing_and_corrupt_weights(tmp_path):
    with pytest.raises(WeightsError, match='missing.safetensors.*not found'):
        Segmenter.load(tmp_path / 'missing.safetensors', device='cpu')
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'not a safetensors file at all')
    with pytest.raises(WeightsError, match='bad.safetensors'):
        Segmenter.load(bad, device='cpu')


def test_default_weights_load_or_warn(monkeypatch, tmp_path):
    # Without the shipped file the default is a random model and a loud warning.
    monkeypatch.setenv('MFFSEG_WEIGHTS', str(tmp_path / 'absent.safetensors'))
    with pytest.warns(UserWarning, match='RANDOMLY INITIALISED'):
        s = Segmenter.load(device='cpu')
    assert 'random init' in s.describe()


@pytest.mark.parametrize('task_slices', [{'binary': slice(0, 2), 'parts': slice(2, 6), 'type': slice(6, 14)},
                                         {'binary': slice(0, 2)}], ids=['three heads', 'binary only'])
def test_host_maps_equal_the_torch_maps(task_slices):
    # The CPU path (OpenCV plane by plane, the second image on a thread) against the device path
    # (torch), on logits with exact ties (the first maximum wins) and values far outside exp's range.
    channels = max(s.stop for s in task_slices.values())
    logits = np.random.default_rng(3).normal(0, 3, (2, channels, 40, 56)).astype(np.float32)
    logits[:, :, :8] = 0.0
    logits[0, :, 30:] *= 60
    with ThreadPoolExecutor(1) as pool:
        host = host_maps(logits, task_slices, pool.submit)
    device = {k: v.numpy() for k, v in network_maps(torch.from_numpy(logits), task_slices).items()}
    assert host.keys() == device.keys()
    for key, expected in device.items():
        if expected.dtype == np.uint8:
            np.testing.assert_array_equal(host[key], expected, err_msg=key)
        else:
            np.testing.assert_allclose(host[key], expected, atol=1e-5, err_msg=key)
