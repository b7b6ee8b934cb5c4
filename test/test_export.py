"""`mffseg export --onnx` and the ONNX Runtime / torch backends: real export, real ONNX Runtime."""
import numpy as np
import pytest
import torch

from mffseg_ros.cli import main
from mffseg_ros.errors import MffsegError
from mffseg_ros.inference.backends import BackendUnavailable, make_backend
from mffseg_ros.inference.onnx_export import read_onnx_metadata
from mffseg_ros.model.mffnet import MFFNet
from mffseg_ros.model.weights import save_weights
from mffseg_ros.tools.export import parse_size

pytestmark = pytest.mark.usefixtures('one_thread')  # conftest.py: one torch thread


@pytest.fixture(scope='module')
def model(one_thread):
    torch.manual_seed(0)
    return MFFNet().eval()


@pytest.fixture(scope='module')
def weights(tmp_path_factory, model):
    return save_weights(tmp_path_factory.mktemp('w') / 'm.safetensors', model, {'recipe': 'test'})


def torch_logits(model, x, branch):
    with torch.inference_mode():
        return model(x, branch=branch)['out']


@pytest.mark.parametrize('branch', ['main', 'aux'])
def test_cli_export_matches_torch(tmp_path, weights, model, capsys, branch):
    out = tmp_path / f'{branch}.onnx'
    assert main(['export', '--onnx', '--weights', str(weights), '--size', '64x96',
                 '--branch', branch, '--batch', '2', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'label agreement' in printed
    meta = read_onnx_metadata(out)
    assert meta['branch'] == branch and meta['size'] == [64, 96] and meta['batch'] == 2 and meta['recipe'] == 'test'
    # The file, run through the backend, gives torch's logits for a batch of two.
    backend = make_backend('onnx', None, meta, branch=branch, onnx_path=out, threads=1)
    x = torch.randn(2, 3, 64, 96)
    got, expected = backend(x), torch_logits(model, x, branch)
    assert got.shape == expected.shape == (2, 12, 64, 96)
    assert torch.allclose(got, expected, atol=1e-4)
    assert 'threads=1' in backend.description


def test_onnx_backend_exports_per_size(model, tmp_path):
    backend = make_backend('onnxruntime', model, {}, cache_dir=tmp_path, branch='aux')
    for size in [(64, 64), (96, 128)]:  # 96x128 has a non-trivial SPP kernel (1x2) at 1/32
        x = torch.randn(1, 3, *size)
        assert torch.allclose(backend(x), torch_logits(model, x, 'aux'), atol=1e-4)
    tag = backend.fingerprint()
    assert sorted(p.name for p in tmp_path.glob('*.onnx')) == [f'mff_aux_{tag}_1x64x64.onnx',
                                                               f'mff_aux_{tag}_1x96x128.onnx']
    # Another model with the same cache folder gets its own files, never this one's.
    other = make_backend('onnxruntime', MFFNet().eval(), {}, cache_dir=tmp_path, branch='aux')
    assert other.fingerprint() != tag
    assert other.model_file(1, 64, 64).name == f'mff_aux_{other.fingerprint()}_1x64x64.onnx'
    assert not model.training  # exporting must not flip the caller's model into training mode


def test_torch_backend_matches_model(model):
    x = torch.randn(1, 3, 64, 64)
    backend = make_backend('torch', MFFNet().eval(), None, channels_last=True)
    backend.model.load_state_dict(model.state_dict())
    assert torch.allclose(backend(x), torch_logits(model, x, 'main'), atol=1e-4)


def test_backend_mistakes_are_user_errors(model, tmp_path):
    with pytest.raises(MffsegError, match='unknown backend'):
        make_backend('tensorflow', model, {})
    with pytest.raises(BackendUnavailable, match='fp32, int8 only'):
        make_backend('onnx', model, {}, precision='fp16')
    with pytest.raises(MffsegError, match='ONNX file not found'):
        make_backend('onnx', model, {}, onnx_path=tmp_path / 'missing.onnx')
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match='CUDA'):
            make_backend('tensorrt', model, {}, device='cpu')


def test_cli_errors_are_one_line(tmp_path, weights, capsys):
    out = str(tmp_path / 'x.onnx')
    assert main(['export', '--onnx', '--weights', str(tmp_path / 'nope.safetensors'), out]) == 2
    assert 'nope.safetensors' in capsys.readouterr().err
    assert main(['export', '--onnx', '--weights', str(weights), '--size', '100x96', out]) == 2
    assert 'multiples of 32' in capsys.readouterr().err
    assert main(['export', '--weights', str(weights), out]) == 2
    assert '--onnx' in capsys.readouterr().err
    assert main(['export', '--onnx', '--weights', str(weights), str(tmp_path / 'no_dir' / 'x.onnx')]) == 2
    assert 'does not exist' in capsys.readouterr().err


def test_parse_size():
    assert parse_size('512x640') == (512, 640)
    assert parse_size(' 1024X1280 ') == (1024, 1280)
    for bad in ['512', '512x', 'ax640', '0x640', '500x640']:
        with pytest.raises(MffsegError):
            parse_size(bad)


def test_segmenter_onnx_backend_matches_torch(model):
    """Segmenter.load(..., backend='onnx') path: same labels as the torch backend."""
    from mffseg_ros.inference.segmenter import Segmenter
    from mffseg_ros.model.weights import default_metadata
    frame = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    results = {}
    for backend in ('torch', 'onnx'):
        clone = MFFNet()
        clone.load_state_dict(model.state_dict())
        extra = {'threads': 1} if backend == 'onnx' else {}
        seg = Segmenter(clone.eval(), default_metadata(clone), device='cpu', input_size=(64, 96),
                        backend=backend, **extra)
        results[backend] = seg.segment(frame)
    assert (results['torch'].type == results['onnx'].type).mean() >= 0.999
    assert (results['torch'].parts == results['onnx'].parts).mean() >= 0.999
    assert np.abs(results['torch'].confidence - results['onnx'].confidence).max() < 1e-3


def test_fp16_safetensors_copy_records_metrics(tmp_path, weights, model, capsys):
    from mffseg_ros.model.weights import load_weights, read_metadata
    metrics = tmp_path / 'metrics.json'
    metrics.write_text('{"binary": {"dice": 0.5}}')
    out = tmp_path / 'half.safetensors'
    assert main(['export', '--fp16', '--weights', str(weights), '--metrics', f'heldout={metrics}', str(out)]) == 0
    meta = read_metadata(out)
    assert meta.metrics['heldout'] == {'binary': {'dice': 0.5}} and meta.stored_dtype == 'float16'
    assert meta.recipe == 'test'  # the rest of the metadata is kept
    assert out.stat().st_size < 0.55 * weights.stat().st_size
    half, _ = load_weights(out)
    x = torch.randn(1, 3, 64, 64)
    agreement = (torch_logits(half, x, 'main').argmax(1) == torch_logits(model, x, 'main').argmax(1)).float().mean()
    assert agreement > 0.99
    assert main(['export', '--fp16', '--onnx', '--weights', str(weights), str(out)]) == 2
    assert main(['export', '--fp16', '--weights', str(weights), '--metrics', 'nofile', str(out)]) == 2
