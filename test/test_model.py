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
    code = ('import sys, mffseg_ros.model.classes, mffseg_ros.inference.instruments, '
            'mffseg_ros.inference.perception, mffseg_ros.inference.stereo; '
            'sys.exit("torch" in sys.modules)')
    assert subprocess.run([sys.executable, '-c', code]).returncode == 0


def old_layout(state):
    """A state dict in the first ('mffseg/1') parameter names, written out independently of the loader's
    key map: encoder.stem.0/1, encoder.stageN.B.convK.0/1, mff., decoder4..1, class_blocks."""
    import re
    out = {}
    for key, value in state.items():
        key = re.sub(r'^encoder\.conv1\.', 'encoder.stem.0.', key)
        key = re.sub(r'^encoder\.bn1\.', 'encoder.stem.1.', key)
        key = re.sub(r'^encoder\.layer(\d)\.(\d)\.conv(\d)\.', r'encoder.stage\1.\2.conv\3.0.', key)
        key = re.sub(r'^encoder\.layer(\d)\.(\d)\.bn(\d)\.', r'encoder.stage\1.\2.conv\3.1.', key)
        key = re.sub(r'^encoder\.layer(\d)\.', r'encoder.stage\1.', key)
        key = re.sub(r'^fusion\.', 'mff.', key)
        key = re.sub(r'^decoder\.blocks\.(\d)\.', lambda m: f'decoder{4 - int(m.group(1))}.', key)
        key = re.sub(r'^heads\.', 'class_blocks.', key)
        out[key] = value
    return out


class TestOldFiles:
    def test_first_format_file_round_trips(self, tmp_path, multitask):
        import json

        from safetensors.torch import save_file
        state = {k: v.contiguous() for k, v in old_layout(multitask.state_dict()).items()}
        assert 'encoder.stage2.0.conv1.1.running_var' in state and 'decoder4.reduce.0.weight' in state
        meta = {'format': 'mffseg/1', 'architecture': 'mffnet', 'tasks': {'parts': 4, 'type': 8},
                'normalization': {'mean': [0.5, 0.5, 0.5], 'std': [0.25, 0.25, 0.25]}, 'input_scale': 0.25,
                'train_size': [256, 320], 'git_revision': 'abc', 'metrics': {'iterations': 800, 'final_loss': 0.4},
                'recipe': {'lr': 1e-3, 'train_data': [{'kind': 'synth', 'frames': 8}]}, 'stored_dtype': 'float32'}
        path = tmp_path / 'old.safetensors'
        save_file(state, str(path), metadata={'mffseg': json.dumps(meta)})
        model, meta = load_weights(path)  # strict: any unmapped or missing key raises
        x = torch.randn(1, 3, 64, 96)
        with torch.no_grad():
            torch.testing.assert_close(model(x, return_aux=True), multitask(x, return_aux=True), rtol=0, atol=0)
        assert meta.version == 'mffseg/1' and meta.preprocessing.train_size == (256, 320)
        assert meta.preprocessing.mean == (0.5, 0.5, 0.5) and meta.preprocessing.input_scale == 0.25
        assert meta.provenance.git_revision == 'abc' and meta.provenance.iterations == 800
        assert meta.provenance.train_data == [{'kind': 'synth', 'frames': 8}] and meta.provenance.hours is None
        # re-saved, it is a file of today's format and layout
        again = save_weights(tmp_path / 'new.safetensors', model, meta)
        assert read_metadata(again).version == 'mffseg/2' and read_metadata(again).preprocessing == meta.preprocessing

    def test_shipped_weights_load_with_every_key_mapped(self):
        from mffseg_ros.paths import default_weights_path
        path = default_weights_path()
        if not path.is_file():
            pytest.skip(f'{path} not present')
        model, meta = load_weights(path)  # raises on any missing or unexpected tensor
        assert meta.tasks == dict(model.tasks) and meta.preprocessing.train_size
        assert meta.provenance.git_revision != 'unknown'

    def test_encoder_has_torchvision_names(self):
        keys = set(MFFNet().encoder.state_dict())
        assert set(torchvision_resnet18_state()) - keys == {'fc.weight', 'fc.bias'}
        assert keys <= set(torchvision_resnet18_state())

    def test_weights_files_are_world_readable(self, tmp_path, multitask):
        assert save_weights(tmp_path / 'w.safetensors', multitask).stat().st_mode & 0o777 == 0o644
        assert not list(tmp_path.glob('*.tmp'))

    def test_preprocessing_matches_the_training_normalisation(self):
        import numpy as np

        from mffseg_ros.data.transforms import normalize_image
        from mffseg_ros.model.weights import Preprocessing
        pre = Preprocessing(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
        rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        expected = torch.from_numpy(normalize_image(rgb, pre.normalization))[None]
        torch.testing.assert_close(pre.normalize(x), expected)
        with pytest.raises(ValueError, match='std'):
            Preprocessing(std=(0.2, 0.0, 0.3))


def torchvision_resnet18_state(seed=0):
    """A state dict in torchvision's (and timm's) ResNet-18 layout, written from its published
    architecture, with random values: conv1/bn1, layerN.B.{conv1,bn1,conv2,bn2}, downsample.0/1, fc."""
    g = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name, cout, cin, k):
        state[f'{name}.weight'] = torch.randn(cout, cin, k, k, generator=g)

    def bn(name, c):
        state.update({f'{name}.weight': torch.rand(c, generator=g) + 0.5, f'{name}.bias': torch.randn(c, generator=g),
                      f'{name}.running_mean': torch.randn(c, generator=g),
                      f'{name}.running_var': torch.rand(c, generator=g) + 0.5,
                      f'{name}.num_batches_tracked': torch.tensor(1000)})

    conv('conv1', 64, 3, 7)
    bn('bn1', 64)
    cin = 64
    for layer, cout in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f'layer{layer}.{block}'
            conv(f'{p}.conv1', cout, cin if block == 0 else cout, 3)
            bn(f'{p}.bn1', cout)
            conv(f'{p}.conv2', cout, cout, 3)
            bn(f'{p}.bn2', cout)
            if block == 0 and cin != cout:
                conv(f'{p}.downsample.0', cout, cin, 1)
                bn(f'{p}.downsample.1', cout)
        cin = cout
    state['fc.weight'] = torch.randn(1000, 512, generator=g)
    state['fc.bias'] = torch.randn(1000, generator=g)
    return state


class TestEncoderWeights:
    @pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
    def test_torchvision_layout_loads_into_the_encoder(self, tmp_path, suffix, caplog):
        from safetensors.torch import save_file

        from mffseg_ros.model import load_encoder_weights
        state = torchvision_resnet18_state()
        path = tmp_path / f'resnet18{suffix}'
        if suffix == '.pth':
            torch.save(state, path)
        else:
            save_file(state, str(path))
        model = MFFNet(tasks={'binary': 2})
        with caplog.at_level('INFO'):
            loaded, missing, unexpected = load_encoder_weights(model, path)
        assert len(loaded) == len(model.encoder.state_dict()) and not missing
        assert unexpected == ['fc.bias', 'fc.weight'] and 'fc.bias' in caplog.text
        for name, tensor in model.encoder.state_dict().items():
            assert torch.equal(tensor, state[name]), name
        # the auxiliary branch runs the same modules, so it starts from the same weights
        assert model.encoder.layer2[0].conv1.weight.data_ptr() == dict(model.named_parameters())[
            'encoder.layer2.0.conv1.weight'].data_ptr()

    def test_wrapped_and_partial_checkpoints(self, tmp_path, caplog):
        from mffseg_ros.model import load_encoder_weights
        state = {f'module.{k}': v for k, v in torchvision_resnet18_state().items() if not k.startswith('layer4')}
        path = tmp_path / 'ddp.pth'
        torch.save({'state_dict': state, 'epoch': 90}, path)
        with caplog.at_level('WARNING'):
            loaded, missing, _ = load_encoder_weights(MFFNet(tasks={'binary': 2}), path)
        assert len(missing) == 30 and all(k.startswith('layer4.') for k in missing)
        assert 'layer4.0.bn1.bias' in caplog.text
        assert 'conv1.weight' in loaded

    def test_foreign_and_unsafe_files_are_refused(self, tmp_path):
        from safetensors.torch import save_file

        from mffseg_ros.model import load_encoder_weights
        model = MFFNet(tasks={'binary': 2})
        foreign = tmp_path / 'vit.safetensors'
        save_file({'blocks.0.attn.qkv.weight': torch.zeros(3, 3)}, str(foreign))
        with pytest.raises(WeightsError, match='no ResNet-18 encoder tensors'):
            load_encoder_weights(model, foreign)
        resnet50 = tmp_path / 'wide.safetensors'
        save_file({'conv1.weight': torch.zeros(128, 3, 7, 7)}, str(resnet50))
        with pytest.raises(WeightsError, match='conv1.weight has shape'):
            load_encoder_weights(model, resnet50)
        pickled = tmp_path / 'code.pth'
        torch.save({'conv1.weight': torch.zeros(1), 'hook': WeightsError('a pickled object')}, pickled)
        with pytest.raises(WeightsError, match='weights-only'):
            load_encoder_weights(model, pickled)
        with pytest.raises(WeightsError, match='not found'):
            load_encoder_weights(model, tmp_path / 'nope.pth')


def test_bad_metadata_is_one_clear_error(tmp_path):
    import json

    from safetensors.torch import save_file
    path = tmp_path / 'bad.safetensors'
    for meta, message in (({'architecture': 'mffnet', 'tasks': {'binary': 2}, 'normalization': {'avg': 1}},
                           "bad metadata \\(KeyError: 'mean'\\)"),
                          ({'format': 'mffseg/9', 'architecture': 'mffnet', 'tasks': {'binary': 2}},
                           "unknown weights format 'mffseg/9'"),
                          ({'format': 'mffseg/2', 'architecture': 'mffnet', 'tasks': {'binary': 2},
                            'preprocessing': {'std': [1, 0, 1]}}, 'std > 0')):
        save_file({'w': torch.zeros(1)}, str(path), metadata={'mffseg': json.dumps(meta)})
        with pytest.raises(WeightsError, match=message):
            read_metadata(path)
