"""MFFNet: shapes of every head and mode, parameter count, train/eval outputs, weights files."""
import pytest
import torch

from mffseg_ros.errors import WeightsError
from mffseg_ros.model import Discriminator, MFFNet, count_parameters, load_weights, read_metadata, save_weights
from mffseg_ros.model.fusion import SumSPP


@pytest.fixture(scope='module')
def multitask():
    torch.manual_seed(0)
    return MFFNet().eval()


class TestMFFNet:
    @pytest.mark.parametrize('tasks', [{'binary': 2}, {'parts': 4}, {'type': 8}, {'parts': 4, 'type': 8}])
    @pytest.mark.parametrize('size', [(64, 64), (96, 160), (128, 96)])
    def test_train_mode_returns_out_and_aux(self, tasks, size):
        model = MFFNet(tasks=tasks).train()
        out = model(torch.randn(2, 3, *size))
        c = sum(tasks.values())
        assert out['out'].shape == (2, c, *size)
        assert out['aux'].shape == (2, c, size[0] // 8, size[1] // 8)
        split = model.split(out['out'])
        assert list(split) == list(tasks) and all(split[t].shape[1] == n for t, n in tasks.items())

    def test_eval_mode_does_not_compute_aux(self, multitask):
        calls = []
        handle = multitask.aux_head.register_forward_hook(lambda *a: calls.append(1))
        with torch.no_grad():
            out = multitask(torch.randn(1, 3, 64, 96))
            assert set(out) == {'out'} and not calls
            out = multitask(torch.randn(1, 3, 64, 96), return_aux=True)
            assert set(out) == {'out', 'aux'} and len(calls) == 1
        handle.remove()

    def test_aux_branch_skips_main_decoder(self, multitask):
        calls = []
        handles = [m.register_forward_hook(lambda *a: calls.append(1))
                   for m in (*multitask.decoder.blocks, *multitask.heads)]
        with torch.no_grad():
            out = multitask(torch.randn(1, 3, 96, 128), branch='aux')
        for h in handles:
            h.remove()
        assert out['out'].shape == (1, 12, 96, 128) and not calls

    def test_aux_branch_is_the_upsampled_aux_map(self, multitask):
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            aux = multitask(x, return_aux=True)['aux']
            fast = multitask(x, branch='aux')['out']
        expected = torch.nn.functional.interpolate(aux, size=(64, 64), mode='bilinear', align_corners=False)
        torch.testing.assert_close(fast, expected)

    @pytest.mark.parametrize('size', [(50, 64), (64, 100)])
    def test_size_not_multiple_of_32_is_rejected(self, multitask, size):
        with pytest.raises(ValueError, match='multiples of 32'):
            multitask(torch.randn(1, 3, *size))

    def test_bad_branch_rejected(self):
        with pytest.raises(ValueError, match='branch'):
            MFFNet(branch='fast')

    def test_parameter_count_near_paper(self):
        # Paper: 14.91 M. Our paper-faithful binary model has 14.23 M unique parameters: ResNet18 without
        # its classifier (11.18 M) + MFF (2.43 M, mostly the dilated 3x3 512->512) + LinkNet decoders
        # (0.33 M) + aux head (0.27 M) + class block (0.03 M). The auxiliary branch SHARES the stem and
        # stages 1-2 (0.68 M); counting those twice, as the paper's figure does, gives 14.91 M.
        model = MFFNet(tasks={'binary': 2})
        unique = count_parameters(model)
        assert unique == 14_227_652
        enc = model.encoder
        shared = sum(p.numel() for m in (enc.conv1, enc.bn1, enc.layer1, enc.layer2) for p in m.parameters())
        assert abs((unique + shared) / 1e6 - 14.91) < 0.01

    def test_spp_sums_and_keeps_shape(self):
        x = torch.ones(1, 4, 6, 10)
        # A constant map's pools equal it: input + 4 pyramid levels = 5x.
        torch.testing.assert_close(SumSPP()(x), 5 * x)


class TestDiscriminator:
    def test_output_upsampled_to_input(self):
        d = Discriminator(4)
        assert d(torch.randn(2, 4, 64, 96)).shape == (2, 1, 64, 96)
        assert sum(isinstance(m, torch.nn.Conv2d) for m in d.modules()) == 5
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())


class TestWeights:
    def test_round_trip_with_metadata(self, tmp_path, multitask):
        path = save_weights(tmp_path / 'w.safetensors', multitask, {'metrics': {'dice': 0.5}, 'recipe': {'x': 1}})
        model, meta = load_weights(path)
        assert meta.tasks == {'parts': 4, 'type': 8} and meta.metrics == {'dice': 0.5}
        assert meta.class_names['type'][3] == 'large_needle_driver' and meta.version == 'mffseg/2'
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(model(x)['out'], multitask(x)['out'])

    def test_fp16_file_loads_as_fp32(self, tmp_path, multitask):
        path = save_weights(tmp_path / 'h.safetensors', multitask, dtype=torch.float16)
        model, _ = load_weights(path)
        assert next(model.parameters()).dtype == torch.float32
        assert path.stat().st_size < 32e6

    def test_missing_file(self, tmp_path):
        with pytest.raises(WeightsError, match='not found') as e:
            load_weights(tmp_path / 'nope.safetensors')
        assert 'nope.safetensors' in str(e.value)

    def test_corrupt_file(self, tmp_path, multitask):
        path = save_weights(tmp_path / 'c.safetensors', multitask)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # truncated download
        with pytest.raises(WeightsError, match=str(path.name)):
            load_weights(path)
        path.write_bytes(b'\x80\x04garbage-pickle-like')
        with pytest.raises(WeightsError, match='safetensors'):
            read_metadata(path)

    def test_foreign_safetensors_rejected(self, tmp_path):
        from safetensors.torch import save_file
        path = tmp_path / 'other.safetensors'
        save_file({'w': torch.zeros(2)}, str(path))
        with pytest.raises(WeightsError, match='not an mffseg model'):
            load_weights(path)


def test_class_tables_and_postprocessing_load_without_torch():
    # Post-processing and class names must work in deployments without torch (e.g. ONNX Runtime only).
    import subprocess
    import sys
    code = ('import sys, mffseg_ros.model.classes, mffseg_ros.inference.instances, mffseg_ros.inference.stereo; '
            'sys.exit("torch" in sys.modules)')
    assert subprocess.run([sys.executable, '-c', code]).returncode == 0
