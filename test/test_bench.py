"""`mffseg bench` runs end to end at tiny sizes and writes its files. No assertion is about speed."""
import json

import numpy as np
import pytest
import torch

from mffseg_ros.cli import main
from mffseg_ros.tools import bench_model as bm
from mffseg_ros.tools.bench_peers import PlainUNet

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def read_outputs(out):
    result = json.loads((out / 'bench.json').read_text())
    assert (out / 'bench.png').read_bytes()[:8] == PNG_MAGIC
    return result, (out / 'bench.md').read_text()


def test_model_bench_writes_table_json_and_chart(tmp_path, capsys):
    out = tmp_path / 'bench'
    assert main(['bench', '--device', 'cpu', '--sizes', '64x64', '--modes', 'main,aux',
                 '--backends', 'torch,onnx,cudagraph', '--precisions', 'fp32,fp16', '--peers',
                 '--iters', '2', '--warmup', '1', '--threads', '1', '--out', str(out)]) == 0
    result, md = read_outputs(out)
    rows = {(r['model'], r['mode'], r['precision'], r['backend']): r for r in result['model']}
    main_row = rows[('MFF', 'main', 'fp32', 'torch')]
    assert main_row['status'] == 'ok' and main_row['iters'] == 2
    assert main_row['ratio_to_mff'] == pytest.approx(1.0)
    assert 0 < main_row['p99_ms'] and 0 < main_row['median_ms'] <= main_row['p99_ms']
    # A frame is the network plus pre- and post-processing (Segmenter.segment_batch).
    assert 0 < main_row['frame_median_ms'] <= main_row['frame_p99_ms']
    assert main_row['gmacs'] > rows[('MFF', 'aux', 'fp32', 'torch')]['gmacs'] > 0  # aux skips a decoder
    for mode in ('main', 'aux'):
        assert rows[('MFF', mode, 'fp32', 'onnx')]['status'] == 'ok'
        assert rows[('MFF', mode, 'fp32', 'onnx')]['ratio_to_mff'] > 0
    # Rows that cannot run here say why instead of disappearing.
    assert 'fp32, int8 only' in rows[('MFF', 'main', 'fp16', 'onnx')]['reason']
    if not torch.cuda.is_available():
        assert 'CUDA' in rows[('MFF', 'main', 'fp32', 'cudagraph')]['reason']
        assert 'CUDA' in rows[('MFF', 'main', 'fp16', 'torch')]['reason']
    unet = rows[('U-Net (plain)', '-', 'fp32', 'torch')]
    assert unet['status'] == 'ok' and unet['ratio_to_mff'] > 0
    assert rows[('U-Net (plain)', '-', 'fp32', 'onnx')]['status'] == 'ok'  # peers run every backend too
    linknet = rows[('LinkNet-34', '-', 'fp32', 'torch')]
    assert linknet['status'] == 'ok' or 'segmentation_models_pytorch' in linknet['reason']
    assert result['meta']['hardware']['cpu_cores'] >= 1 and '--peers' in result['meta']['command']
    assert '| model | mode | size |' in md and 'x MFF main' in md and 'frame ms' in md
    assert md in capsys.readouterr().out


def test_bench_times_the_segmenter_the_node_builds():
    """A bench row is the node's Segmenter (same backend object), not a separate runner."""
    from mffseg_ros.tools import bench
    model, meta = bench.load_mff(None)
    seg = bench.make_segmenter(model, meta, mode='aux', variant='onnx', device=torch.device('cpu'),
                               precision='fp32', size=(64, 64), threads=1)
    assert type(seg).__name__ == 'Segmenter' and seg.backend_name == 'onnx' and seg.branch == 'aux'
    with pytest.raises(bench.Unavailable, match='CUDA graphs'):
        bench.make_segmenter(model, meta, mode='main', variant='cudagraph', device=torch.device('cpu'),
                             precision='fp32', size=(64, 64), threads=1)


def test_ros_end_to_end(tmp_path):  # 96x120: the default model upscales frames at most 4x to its 384x480
    out = tmp_path / 'ros'
    assert main(['bench', '--device', 'cpu', '--no-model', '--ros', '--node', 'inprocess', '--stereo',
                 '--frame-size', '96x120', '--rate', '10,20', '--duration', '1', '--threads', '1',
                 '--out', str(out)]) == 0
    result, md = read_outputs(out)
    slow, row = result['ros']
    assert (slow['rate_hz'], row['rate_hz']) == (10, 20) and slow['published'] == 10
    assert row['published'] == 20 and row['stereo'] is True
    assert 0 < row['received'] <= row['published'] and row['dropped'] == row['published'] - row['received']
    assert 0 < row['e2e_latency_p50_ms'] <= row['e2e_latency_p99_ms']
    assert row['node_latency_p50_ms'] is not None and row['node_cpu_percent'] > 0
    assert 'End to end through ROS 2' in md


def test_lockstep_node_against_its_network(tmp_path):
    """The node (own process, every output subscribed) and the bare network alternate pair by pair."""
    out = tmp_path / 'lockstep'
    assert main(['bench', '--device', 'cpu', '--no-model', '--ros', '--lockstep', '3', '--frame-size', '96x120',
                 '--threads', '1', '--out', str(out)]) == 0
    result, md = read_outputs(out)
    (row,) = result['lockstep']
    assert row['pairs'] == 3 and row['backend'] == 'onnx' and row['network_input'] == '384x480'
    # labels, instances, parts, masks/* (one per type and unknown), tips, tip_poses, tip_markers, overlay
    assert row['topics_subscribed'] >= 15 and row['outputs_per_pair'] >= 7
    assert 0 < row['network_p50_ms'] < row['e2e_p50_ms']
    assert 0 < row['tips_p50_ms'] <= row['e2e_p50_ms']
    assert row['ratio'] == pytest.approx(row['e2e_p50_ms'] / row['network_p50_ms'])
    assert 'one stereo pair at a time' in md


@pytest.mark.parametrize('argv, message', [
    (['--sizes', '100x64'], 'multiples of 32'),
    (['--modes', 'main,multitask'], 'unknown mode multitask'),
    (['--precisions', 'fp8'], 'unknown precision fp8'),
    (['--iters', '0'], '--iters'),
    (['--no-model', '--ros', '--frame-size', '10'], '--frame-size'),
    (['--no-model', '--ros', '--rate', '30,-1'], '--rate'),
    (['--no-model', '--lockstep', '3'], 'add --ros'),
    (['--no-model', '--ros', '--lockstep', '-2'], '--lockstep'),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, argv, message):
    assert main(['bench', '--device', 'cpu', '--out', str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_timer_and_mac_counter():
    stats = bm.time_callable(lambda x: x * 2, torch.ones(4), device='cpu', warmup=1, iters=5)
    assert stats['iters'] == 5 and stats['median_ms'] <= stats['p99_ms'] and stats['fps'] > 0
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    up = torch.nn.ConvTranspose2d(8, 2, 2, 2)
    model = torch.nn.Sequential(conv, up)
    macs = bm.count_macs(model, torch.zeros(1, 3, 10, 10), lambda m, x: m(x))
    assert macs == 8 * 100 * 27 + 8 * 100 * 4 * 2  # conv: out values x k x C_in; transposed: in x k x C_out


def test_plain_unet_shapes():
    net = PlainUNet(8, base=4, depth=2).eval()
    with torch.inference_mode():
        assert net(torch.zeros(1, 3, 32, 48)).shape == (1, 8, 32, 48)
    assert np.isfinite(sum(p.sum().item() for p in net.parameters()))


def test_bench_postprocess_reports_cpu_and_wall_ratios_of_one_run():
    from mffseg_ros.tools.bench_postprocess import AFTER_NETWORK, AFTER_NETWORK_TOTAL, ONE_BATCH, run
    report = run(None, (128, 160), frames=1, backend='onnx')
    assert report['node_order'] == 'eye by eye'  # ONNX Runtime: the left eye searched during the right's pass
    for times, ratios in (('median_cpu_ms', 'ratio_to_network'), ('median_wall_ms', 'wall_ratio_to_network')):
        assert set(report[times]) == set(report[ratios]) and report[ratios]['network (stereo batch)'] == 1.0
        assert all(v >= 0 for v in report[times].values())
        # One frame: the median of the per-frame sums is the sum of the steps.
        assert report[times][AFTER_NETWORK_TOTAL] == pytest.approx(sum(report[times][k] for k in AFTER_NETWORK))
    assert report['after_network_ratio']['cpu'] == pytest.approx(report['ratio_to_network'][AFTER_NETWORK_TOTAL])
    assert report['after_network_ratio']['wall'] == pytest.approx(report['wall_ratio_to_network'][AFTER_NETWORK_TOTAL])
    eager = run(None, (128, 160), frames=1, backend='torch')  # the node takes one batch: that order's total
    assert eager['node_order'] == 'one batch'
    assert eager['after_network_ratio']['wall'] == pytest.approx(eager['wall_ratio_to_network'][ONE_BATCH])
