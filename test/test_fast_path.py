"""The fast path gives the eager pipeline's answers: labels >= 99 % equal, tips within 2 network px (both
compute the network-resolution maps; the fast path on the device).

The model's heads are fitted to synthetic frames (tissue-like background, one instrument with shaft,
wrist and claspers), so its outputs have real structure and real tips."""
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from mffseg_ros.inference.fast_path import FastPath
from mffseg_ros.inference.instruments import find_instruments
from mffseg_ros.inference.segmenter import Segmenter
from mffseg_ros.model.mffnet import MFFNet
from mffseg_ros.model.weights import default_metadata

TYPE_LOOKS = {1: (200, 200, 210), 3: (90, 90, 100)}  # type id -> shaft colour (RGB)
MIN_AGREEMENT = 0.99  # the fast path resizes on the device (torch area), the eager path with OpenCV
MIN_INPUT_AGREEMENT = 0.99


def synthetic_frame(rng, height, width):
    """(rgb, type map, parts map): an instrument entering from the left border, tip inside."""
    noise = rng.normal(0, 1, (height // 8, width // 8, 3)).astype(np.float32)
    tissue = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    rgb = np.clip(np.array([170, 70, 60]) + 25 * tissue, 0, 255).astype(np.uint8)
    type_id = int(rng.choice(list(TYPE_LOOKS)))
    y0 = rng.uniform(0.3, 0.7) * height
    tip = np.array([rng.uniform(0.5, 0.8) * width, rng.uniform(0.25, 0.75) * height])
    start = np.array([0.0, y0])
    direction = (tip - start) / np.linalg.norm(tip - start)
    thick = max(4, height // 10)
    jaws, wrist = tip - direction * 0.12 * width, tip - direction * 0.22 * width
    type_map = np.zeros((height, width), np.uint8)
    parts = np.zeros((height, width), np.uint8)
    for (a, b, part, colour) in [(start, wrist, 1, TYPE_LOOKS[type_id]), (wrist, jaws, 2, (40, 40, 40)),
                                 (jaws, tip, 3, (230, 230, 120))]:
        p, q = tuple(int(v) for v in a), tuple(int(v) for v in b)
        cv2.line(rgb, p, q, colour, thick)
        cv2.line(parts, p, q, part, thick)
        cv2.line(type_map, p, q, type_id, thick)
    return rgb, type_map, parts


pytestmark = pytest.mark.usefixtures('one_thread')  # conftest.py: one torch thread


@pytest.fixture(scope='module')
def trained_model(one_thread):
    """Random trunk, last layer per task (32 features -> classes) fitted to synthetic labels: training
    the whole network takes minutes on a shared CPU, fitting the heads on cached features seconds."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = MFFNet().eval()
    seg = Segmenter(model, default_metadata(model), device='cpu', input_size=(64, 96))
    samples = [synthetic_frame(rng, 64, 96) for _ in range(4)]
    heads = [head.classify for head in model.heads]
    features = {}
    hooks = [h.register_forward_hook(lambda mod, inp, out: features.__setitem__(mod, inp[0]))
             for h in heads]
    with torch.no_grad():
        model(seg.preprocess([s[0] for s in samples]))
    for h in hooks:
        h.remove()
    targets = [torch.from_numpy(np.stack([s[k] for s in samples])).long() for k in (2, 1)]  # parts, type
    optimiser = torch.optim.Adam([p for h in heads for p in h.parameters()], lr=0.05)
    for _ in range(60):
        loss = sum(torch.nn.functional.cross_entropy(h(features[h]), t, weight=class_weights(t, n))
                   for h, t, n in zip(heads, targets, model.tasks.values()))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def class_weights(target, num_classes):
    """Inverse-frequency weights: the instrument is a small fraction of each frame."""
    counts = torch.bincount(target.flatten(), minlength=num_classes).float()
    return torch.where(counts > 0, counts.sum() / (counts * len(counts)), torch.zeros_like(counts)).clamp(max=20)


def make_segmenter(model, device='cpu', **kwargs):
    clone = MFFNet()
    clone.load_state_dict(model.state_dict())
    return Segmenter(clone.eval(), default_metadata(clone), device=device, **kwargs)


# CPU: the same code without pinning or graphs (CI). CUDA: pinned buffers, CUDA graphs, fp16.
FAST_CONFIGS = [pytest.param(('cpu', 'fp32'), id='cpu-fp32'),
                pytest.param(('cuda', 'fp16'), id='cuda-fp16',
                             marks=pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device'))]


def nearest_distance(inst, others):
    return min((np.hypot(inst.tip[0] - o.tip[0], inst.tip[1] - o.tip[1]) for o in others), default=np.inf)


# Frames 128x192 shrink to the 64x96 network input (area resize); 48x72 frames are enlarged (bilinear).
@pytest.mark.parametrize('fast_config', FAST_CONFIGS)
@pytest.mark.parametrize('frame_size', [(128, 192), (48, 72), (64, 96)])
def test_fast_path_agrees_with_eager(trained_model, frame_size, fast_config):
    device, precision = fast_config
    eager = make_segmenter(trained_model, input_size=(64, 96))  # eager fp32 on the CPU: the reference
    fast = FastPath(make_segmenter(trained_model, device, input_size=(64, 96), precision=precision))
    assert fast.cuda_graphs == (device == 'cuda')
    rng = np.random.default_rng(1)
    frames = [synthetic_frame(rng, *frame_size)[0] for _ in range(4)]
    tips_found = 0
    for pair in (frames[:2], frames[2:]):  # stereo-like batches of two
        expected, got = eager.segment_batch(pair), fast.segment_batch(pair)
        for e, g in zip(expected, got):
            assert g.type.shape == g.parts.shape == g.confidence.shape == frame_size
            assert g.type.dtype == np.uint8 and g.binary.dtype == bool
            assert (e.type > 0).mean() > 0.02, 'the model must see the instrument for the check to mean anything'
            for task in ('net_type', 'net_parts', 'net_binary'):  # the maps post-processing works on
                agreement = (getattr(e, task) == getattr(g, task)).mean()
                assert agreement >= MIN_AGREEMENT, f'{task}: {agreement:.4f}'
            for task in ('type', 'parts', 'binary'):  # a network pixel covers several input pixels
                agreement = (getattr(e, task) == getattr(g, task)).mean()
                assert agreement >= MIN_INPUT_AGREEMENT, f'{task}: {agreement:.4f}'
            assert np.abs(e.confidence - g.confidence).max() < 0.05
            min_area = max(10, frame_size[0] * frame_size[1] // 200)
            # Instruments of the instrument masks (this tiny model's parts are too noisy to split regions
            # the same way twice, and its P(instrument) too low for the default min_score); blobs near the
            # area threshold may fall either side of it.
            tips_e, _ = find_instruments(replace(e, net_parts=None), min_area=min_area, min_score=0.0)
            tips_g, _ = find_instruments(replace(g, net_parts=None), min_area=min_area, min_score=0.0)
            for tips, others in ((tips_e, tips_g), (tips_g, tips_e)):
                for t in (t for t in tips if t.area_px >= 10 * min_area):  # within two network pixels
                    assert nearest_distance(t, others) <= 2 * max(1.0, frame_size[0] / 64), (t, others)
                    tips_found += 1
    assert tips_found >= 2
    framed = frames[0].copy()
    framed[:, : frame_size[1] // 4] = 0  # a black field stop on the left
    (e,), (g,) = eager.segment_batch([framed]), fast.segment_batch([framed])
    assert e.net_dark[:, : e.net_dark.shape[1] // 4 - 1].all() and (e.net_dark == g.net_dark).mean() >= 0.99


def test_buffers_are_reused_and_results_independent(trained_model):
    fast = FastPath(make_segmenter(trained_model, input_size=(64, 96)))
    rng = np.random.default_rng(2)
    a, b = (synthetic_frame(rng, 64, 96)[0] for _ in range(2))
    first = fast.segment(a)
    kept = first.type.copy()
    fast.segment(b)
    assert len(fast.plans) == 1  # one plan per input shape, reused
    assert np.array_equal(first.type, kept)  # an earlier result is not overwritten by the next frame
    fast.segment_batch([a, b])
    assert len(fast.plans) == 2


def test_rejects_bad_frames(trained_model):
    from mffseg_ros.errors import MffsegError
    fast = FastPath(make_segmenter(trained_model, input_size=(64, 96)))
    with pytest.raises(MffsegError):
        fast.segment(np.zeros((64, 96), np.uint8))
    with pytest.raises(MffsegError, match='same size'):
        fast.segment_batch([np.zeros((64, 96, 3), np.uint8), np.zeros((32, 96, 3), np.uint8)])
