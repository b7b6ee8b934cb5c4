"""The backend registry, the layout contract of backend outputs, warm-up, and 'auto'."""
import time

import numpy as np
import pytest
import torch

from mffseg_ros.errors import MffsegError
from mffseg_ros.inference import backends
from mffseg_ros.inference.segmenter import Segmenter
from mffseg_ros.model.mffnet import MFFNet
from mffseg_ros.model.weights import default_metadata

pytestmark = pytest.mark.usefixtures('one_thread')  # conftest.py: one torch thread


@pytest.fixture(scope='module')
def model(one_thread):
    torch.manual_seed(0)
    return MFFNet().eval()


def segmenter(model, backend, **options):
    clone = MFFNet()
    clone.load_state_dict(model.state_dict())
    return Segmenter(clone.eval(), default_metadata(clone), device='cpu', input_size=(64, 96),
                     backend=backend, **options)


def test_postprocess_after_onnx_is_as_fast_as_after_torch(model):
    """Post-processing ONNX Runtime's NCHW arrays was once 4-6x slower than after torch (whose logits
    were channels-last then). Timed side by side, interleaved, so load from other processes hits both
    alike; the regression showed as a ratio of about 4."""
    frame = np.random.default_rng(0).integers(0, 255, (512, 640, 3), dtype=np.uint8)
    segs = {name: segmenter(model, name, threads=1) for name in ('torch', 'onnx')}
    logits = {name: seg.forward(seg.preprocess([frame])) for name, seg in segs.items()}
    times = {name: [] for name in segs}
    for _ in range(9):
        for name, seg in segs.items():
            start = time.perf_counter()
            result = seg.postprocess(logits[name], frame.shape[:2])[0]
            times[name].append(time.perf_counter() - start)
    ratio = np.median(times['onnx']) / np.median(times['torch'])
    assert ratio < 2.0, f'post-processing after ONNX Runtime {ratio:.1f}x slower than after torch'
    assert result.type.shape == frame.shape[:2]


def test_compile_backend_takes_threads(model):
    """threads is for torch (process-wide) and ONNX Runtime; backends that do not take it ignore it."""
    seg = segmenter(model, 'compile', threads=1)  # compiles lazily: constructing must not raise
    assert seg.backend_name == 'compile' and torch.get_num_threads() == 1
    assert 'compile' in seg._backend.description


def test_one_table_for_segmenter_node_and_bench():
    from mffseg_ros.ros import params
    from mffseg_ros.tools import bench
    assert params.CHOICES['backend'] == backends.BACKEND_CHOICES == ('auto', *backends.BACKENDS)
    assert params.CHOICES['precision'] == tuple(backends.PRECISIONS)
    assert set(bench.VARIANTS) >= set(backends.BACKENDS) - {'torch'}
    assert backends.resolve_backend('auto', 'cpu') == backends.CPU_AUTO_BACKEND in backends.BACKENDS
    assert backends.resolve_backend('auto', 'cuda') == 'torch'
    assert backends.resolve_backend('onnxruntime') == 'onnx'
    with pytest.raises(MffsegError, match='unknown backend'):
        backends.resolve_backend('tensorflow')
    assert 'CUDA' in backends.BACKENDS['torch'].missing('cpu', 'fp16')
    assert 'cuda' in backends.BACKENDS['tensorrt'].missing('cpu', 'fp32')
    assert backends.BACKENDS['onnx'].missing('cpu', 'fp32') == ''


def test_int8_is_calibrated_onnx_runtime_on_the_cpu(tmp_path):
    """precision int8: the ONNX file of each input shape is quantised once on the calibration frames,
    and labels agree with fp32 ONNX Runtime (shipped weights: a random model's logits are too close
    for any quantisation to keep its argmax)."""
    from mffseg_ros.data.synth import calibration_frames
    frames = calibration_frames(count=8, size=(128, 160))
    held_out = calibration_frames(count=2, size=(128, 160), seed=7)
    weights = None  # the shipped model
    common = dict(device='cpu', backend='onnx', threads=1, input_size=(128, 160))
    int8 = Segmenter.load(weights, precision='int8', calibration_frames=frames, cache_dir=tmp_path, **common)
    fp32 = Segmenter.load(weights, **common)
    for got, want in zip(int8.segment_batch(held_out), fp32.segment_batch(held_out)):
        assert (got.type == want.type).mean() > 0.97 and (got.parts == want.parts).mean() > 0.97
    (file,) = tmp_path.glob('*_int8_*.onnx')
    assert file.name.startswith(f'mff_main_{int8._backend.fingerprint()}_2x128x160_int8_')
    assert 'int8' in int8.describe()
    with pytest.raises(MffsegError, match='calibration frames'):
        Segmenter.load(weights, precision='int8', **common)
    with pytest.raises(MffsegError, match='runs fp32, fp16, bf16 only, not int8'):
        Segmenter.load(weights, precision='int8', calibration_frames=frames, **{**common, 'backend': 'torch'})
    assert 'CPU' in backends.BACKENDS['onnx'].missing('cuda', 'int8')


def test_auto_backend_and_warm_up(model):
    """warm_up builds what the first frame of that shape needs (here: the ONNX session for a stereo
    batch) and returns its duration; the next frame of that shape reuses it."""
    seg = segmenter(model, 'auto', threads=1)
    assert seg.backend_name == backends.CPU_AUTO_BACKEND
    if seg.backend_name != 'onnx':
        pytest.skip('auto is not ONNX Runtime on this machine')
    assert seg.warm_up((96, 128), batch=2) > 0
    assert list(seg._backend.sessions) == [(2, 64, 96)]
    seg.segment_batch([np.zeros((96, 128, 3), np.uint8)] * 2)
    assert list(seg._backend.sessions) == [(2, 64, 96)]


def test_onnx_runtime_threads_sleep_between_inferences(model):
    """ONNX Runtime's pool threads spin-wait by default; in the node (threads=0: a pool per core) they
    took the cores from post-processing and DDS between frames (a stereo pair 1.1 s -> 5.4 s)."""
    backend = backends.make_backend('onnx', model, {}, branch='aux')  # threads unset: ONNX Runtime's pool
    options = backend.session_for(1, 64, 64).get_session_options()
    for pool in ('intra_op', 'inter_op'):
        assert options.get_session_config_entry(f'session.{pool}.allow_spinning') == '0'


def test_node_warms_up_before_its_first_frame():
    """A node that loads its own model has the ONNX session for a stereo pair of the expected frame
    size before any frame arrives (backend auto on the CPU): one eye at a time, as segment_pair runs."""
    from mffseg_ros.inference.segmenter import EXPECTED_FRAME_SIZE
    from mffseg_ros.ros.harness import RosHarness
    with RosHarness() as ros:
        node = ros.start_node(namespace='/warm', parameters={'device': 'cpu', 'threads': 1})
        seg = node.segmenter
        assert seg.backend_name == backends.CPU_AUTO_BACKEND
        if seg.backend_name == 'onnx':
            assert list(seg._backend.sessions) == [(1, *seg.network_size(*EXPECTED_FRAME_SIZE))]
