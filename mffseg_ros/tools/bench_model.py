"""Model-only timing: honest clocks (CUDA events + synchronize on the GPU), warm-up, many iterations,
median and p99, peak memory; runners for MFF in each mode/backend and CUDA-graph replay."""
import time

import numpy as np
import torch

from mffseg_ros.errors import MffsegError

MODES = ('main', 'aux', 'multitask')  # multitask: main + aux outputs in one pass (return_aux=True)
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


class Unavailable(Exception):
    """A configuration that cannot run here; the row is reported with this reason."""


def time_callable(fn, x, *, device, warmup=5, iters=20):
    """Latency statistics of `fn(x)` in ms. On CUDA each iteration is bracketed by events and the
    stream synchronised before reading them; on the CPU a monotonic clock brackets the call."""
    cuda = torch.device(device).type == 'cuda'
    for _ in range(warmup):
        fn(x)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(iters)]
        for start, end in events:
            start.record()
            fn(x)
            end.record()
        torch.cuda.synchronize(device)
        times = np.array([s.elapsed_time(e) for s, e in events])
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        times = np.empty(iters)
        for i in range(iters):
            t0 = time.perf_counter()
            fn(x)
            times[i] = (time.perf_counter() - t0) * 1e3
        peak_mb = None
    return _stats(times, peak_mb)


def time_interleaved(calls, *, warmup=5, iters=20):
    """CPU latency statistics for several `(fn, x)` at once, timed round-robin: on a shared machine
    the load changes during a run, and interleaving exposes every configuration to the same load,
    so their ratios stay meaningful even when the absolute times drift."""
    for fn, x in calls:
        for _ in range(warmup):
            fn(x)
    times = np.empty((len(calls), iters))
    for i in range(iters):
        for k, (fn, x) in enumerate(calls):
            t0 = time.perf_counter()
            fn(x)
            times[k, i] = (time.perf_counter() - t0) * 1e3
    return [_stats(t, None) for t in times]


def _stats(times, peak_mb):
    median = float(np.median(times))
    return {'median_ms': median, 'p99_ms': float(np.percentile(times, 99)), 'mean_ms': float(times.mean()),
            'fps': 1e3 / median if median > 0 else float('inf'), 'peak_mem_mb': peak_mb, 'iters': len(times)}


def count_macs(model, x, call):
    """Multiply-accumulates of convolutions and transposed convolutions in one `call(model, x)`."""
    total = [0]

    def hook(module, inputs, output):
        k = int(np.prod(module.kernel_size))
        if isinstance(module, torch.nn.ConvTranspose2d):  # every input value feeds k x C_out outputs
            total[0] += inputs[0].numel() * k * module.out_channels // module.groups
        else:  # every output value sums k x C_in inputs
            total[0] += output.numel() * k * module.in_channels // module.groups
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    handles = [m.register_forward_hook(hook) for m in convs]
    try:
        with torch.inference_mode():
            call(model, x)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def mff_call(mode):
    if mode not in MODES:
        raise MffsegError(f'unknown mode {mode!r}: choose from {", ".join(MODES)}')
    if mode == 'multitask':
        return lambda model, x: model(x, branch='main', return_aux=True)
    return lambda model, x: model(x, branch=mode, return_aux=False)


def check_precision(precision, device):
    if precision not in DTYPES:
        raise MffsegError(f'unknown precision {precision!r}: choose from {", ".join(DTYPES)}')
    if precision == 'fp16' and torch.device(device).type != 'cuda':
        raise Unavailable('fp16 needs CUDA (CPU fp16 convolutions are emulated and slow)')


def torch_runner(model, call, *, device, precision, channels_last=False):
    """An eager `x -> outputs` for `model` cast to the precision (input cast per call)."""
    check_precision(precision, device)
    dtype = DTYPES[precision]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, dtype, memory_format=fmt).eval()

    @torch.inference_mode()
    def run(x):
        return call(model, x.to(dtype, memory_format=fmt))
    return run


def graph_runner(fn, example):
    """Capture `fn(static_input)` in a CUDA graph; each call copies the input in and replays."""
    if example.device.type != 'cuda':
        raise Unavailable('CUDA graphs need a CUDA device')
    static = example.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn(static)

    def replay(x):
        static.copy_(x)
        graph.replay()
        return output
    return replay


def compiled_runner(fn, device):
    mode = 'reduce-overhead' if torch.device(device).type == 'cuda' else 'default'
    compiled = torch.compile(fn, mode=mode, dynamic=False)

    @torch.inference_mode()
    def run(x):
        return compiled(x)
    return run
