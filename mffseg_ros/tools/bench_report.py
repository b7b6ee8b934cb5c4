"""Benchmark outputs: a markdown table, JSON (rows + run metadata) and a PNG chart."""
import json
import math
import os
import platform
import time
from pathlib import Path

import torch


def hardware():
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), cpu)
    except OSError:
        pass
    info = {'cpu': cpu, 'cpu_cores': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
            'torch': torch.__version__, 'python': platform.python_version(), 'os': platform.platform()}
    try:
        import onnxruntime
        info['onnxruntime'] = onnxruntime.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name()
        info['cuda'] = torch.version.cuda
    return info


def run_metadata(command):
    return {'date': time.strftime('%Y-%m-%d %H:%M:%S %Z'), 'command': command, 'hardware': hardware()}


def _fmt(value, digits=2):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '–'
    if isinstance(value, float):
        return f'{value:.{digits}f}'
    return str(value)


MODEL_COLUMNS = (('model', 'model'), ('mode', 'mode'), ('size', 'size'), ('precision', 'precision'),
                 ('backend', 'backend'), ('median_ms', 'network ms'), ('p99_ms', 'network p99'),
                 ('frame_median_ms', 'frame ms'), ('frame_p99_ms', 'frame p99'), ('fps', 'frames/s'),
                 ('peak_mem_mb', 'peak MiB'), ('gmacs', 'GMACs'), ('tflops', 'TFLOP/s'),
                 ('ratio_to_mff', 'x MFF main'), ('status', 'status'))
ROS_COLUMNS = (('size', 'size'), ('stereo', 'stereo'), ('rate_hz', 'rate Hz'), ('published', 'published'),
               ('received', 'received'), ('processed_rate_hz', 'processed Hz'), ('dropped', 'dropped'),
               ('node_latency_p50_ms', 'recv→pub p50 ms'), ('node_latency_p99_ms', 'recv→pub p99 ms'),
               ('e2e_latency_p50_ms', 'pub→recv p50 ms'), ('e2e_latency_p99_ms', 'pub→recv p99 ms'),
               ('node_cpu_percent', 'node CPU %'), ('gpu_mem_mb', 'GPU MiB'), ('dds_profile', 'Fast DDS profile'))

LOCKSTEP_COLUMNS = (('size', 'size'), ('pairs', 'pairs'), ('backend', 'backend'), ('network_input', 'network input'),
                    ('threads', 'threads'), ('dds_profile', 'Fast DDS profile'), ('topics_subscribed', 'topics'),
                    ('outputs_per_pair', 'outputs/pair'),
                    ('e2e_p50_ms', 'node pub→last output p50 ms'), ('e2e_p90_ms', 'p90'),
                    ('tips_p50_ms', 'pub→tips p50 ms'),
                    ('network_p50_ms', 'bare network p50 ms'), ('network_p90_ms', 'p90'),
                    ('ratio', 'node / network'))


def table(rows, columns):
    lines = ['| ' + ' | '.join(title for _, title in columns) + ' |',
             '|' + '---|' * len(columns)]
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key)
            if key == 'status' and value != 'ok':
                value = f'unavailable: {row.get("reason", "")}'
            cells.append(_fmt(value, 3 if key == 'ratio_to_mff' else 2).replace('|', '/'))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def markdown(result):
    meta = result['meta']
    hw = meta['hardware']
    parts = [f'# mffseg bench, {meta["date"]}', '',
             f'Command: `{meta["command"]}`  ',
             (f'Hardware: {hw.get("gpu", "no GPU")}; {hw["cpu"]} ({hw["cpu_cores"]} cores, torch threads '
              f'{hw["torch_threads"]}); torch {hw["torch"]}, onnxruntime {hw.get("onnxruntime", "–")}'), '']
    if result.get('model'):
        parts += ['## Model only (batch 1)', '',
                  '`network ms`: `Segmenter.forward` (the backend alone; none for CUDA-graph rows, whose '
                  'graph spans the frame). `frame ms`: `Segmenter.segment_batch` on a uint8 frame of the '
                  'network size, what the node runs per frame. `x MFF main`: frame time divided by that of '
                  'MFF main, torch backend, same size and precision, measured in this run (> 1: slower).'
                  + (' CPU rows were timed round-robin (one call of each row in turn), so load from '
                     'other processes hits them alike and their ratios hold.'
                     if any(r.get('timing') == 'interleaved' for r in result['model']) else ''), '',
                  table(result['model'], MODEL_COLUMNS), '']
    if result.get('ros'):
        parts += ['## End to end through ROS 2', '', table(result['ros'], ROS_COLUMNS), '']
    if result.get('lockstep'):
        parts += ['## The node against its bare network, one stereo pair at a time', '',
                  'Every output topic subscribed, reliable input, one pair in flight; after each pair the '
                  'bare network (`Segmenter.forward`, same backend and threads) on the same pair, batched. '
                  'Ratio of the medians, measured in this run.', '',
                  table(result['lockstep'], LOCKSTEP_COLUMNS), '']
    return '\n'.join(parts)


def write_chart(rows, path):
    """Horizontal bars of median latency (p99 as a whisker) per timed configuration."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    ok = [r for r in rows if r.get('status') == 'ok']
    labels = [f'{r["model"]} {r["mode"]} {r["size"]} {r["precision"]} {r["backend"]}' for r in ok]
    fig, ax = plt.subplots(figsize=(9, 0.35 * max(len(ok), 2) + 1.2))
    if ok:
        medians = [r['frame_median_ms'] for r in ok]
        whiskers = [max(r['frame_p99_ms'] - r['frame_median_ms'], 0) for r in ok]
        colours = ['tab:blue' if r['model'] == 'MFF' else 'tab:gray' for r in ok]
        ax.barh(range(len(ok)), medians, xerr=[[0] * len(ok), whiskers], color=colours, capsize=2)
        ax.set_yticks(range(len(ok)), labels, fontsize=8)
        ax.invert_yaxis()
    ax.set_xlabel('Segmenter.segment_batch per frame, ms (bar: median, whisker: p99)')
    ax.set_title('mffseg bench: model only, batch 1')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_all(result, out_dir):
    """bench.json, bench.md and bench.png in `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {'json': out / 'bench.json', 'markdown': out / 'bench.md', 'chart': out / 'bench.png'}
    paths['json'].write_text(json.dumps(result, indent=2, default=str) + '\n')
    paths['markdown'].write_text(markdown(result))
    write_chart(result.get('model', []), paths['chart'])
    return paths
