"""`mffseg average`: weight-space averaging of fine-tuned weights with the weights they started from."""
import pytest
import torch

from mffseg_ros.cli import main
from mffseg_ros.errors import MffsegError
from mffseg_ros.model import MFFNet, load_weights, read_metadata, save_weights
from mffseg_ros.model.weights import WeightsMeta
from mffseg_ros.training.average import average_weights

TASKS = {'parts': 4, 'type': 8}


def _weights(path, seed, tasks=TASKS, iterations=None):
    torch.manual_seed(seed)
    model = MFFNet(tasks=tasks)
    for buffer in model.buffers():  # batch-norm statistics differ between the files too
        if buffer.is_floating_point():
            buffer.uniform_(0.5, 1.5)
        else:
            buffer.fill_(seed)
    extra = {'total_iterations': iterations} if iterations else {}
    meta = WeightsMeta.for_model(model, metrics={'validation': {'miou': 0.5}}, extra=extra)
    return save_weights(path, model, meta)


def test_average_interpolates_every_float_tensor_and_records_itself(tmp_path, capsys):
    start, tuned = _weights(tmp_path / 's.safetensors', 1, iterations=100), _weights(tmp_path / 't.safetensors', 2,
                                                                                       iterations=150)
    out = tmp_path / 'avg.safetensors'
    assert main(['average', str(start), str(tuned), '--alpha', '0.25', '--out', str(out)]) == 0
    assert 'wrote' in capsys.readouterr().out
    averaged, a, b = (load_weights(p)[0].state_dict() for p in (out, start, tuned))
    for name, value in averaged.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * a[name] + 0.25 * b[name])
        else:  # counters (num_batches_tracked) are the tuned file's
            assert torch.equal(value, b[name])
    meta = read_metadata(out)
    record = meta.extra['weight_average']
    assert record['alpha'] == 0.25 and record['start']['iterations'] == 100 and record['tuned']['iterations'] == 150
    assert record['start']['file'] == 's.safetensors' and len(record['tuned']['sha256']) == 64
    assert meta.metrics == {}  # the tuned file's validation does not describe the average


def test_average_refuses_other_tasks_and_alphas_outside_0_1(tmp_path, capsys):
    start = _weights(tmp_path / 's.safetensors', 1)
    other = _weights(tmp_path / 'o.safetensors', 2, tasks={'binary': 2})
    out = tmp_path / 'avg.safetensors'
    assert main(['average', str(start), str(other), '--alpha', '0.5', '--out', str(out)]) == 2
    assert 'one architecture' in capsys.readouterr().err and not out.exists()
    for alpha in ('1.5', '-0.1', 'nan'):
        assert main(['average', str(start), str(start), '--alpha', alpha, '--out', str(out)]) == 2
        assert '--alpha must be a number from 0 to 1' in capsys.readouterr().err
    with pytest.raises(MffsegError, match='not found'):
        average_weights(tmp_path / 'missing.safetensors', start, 0.5, out)
