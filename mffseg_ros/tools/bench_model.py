"""Timing: honest clocks (CUDA events + synchronize on the GPU), warm-up, many iterations, median and
p99, peak memory; multiply-accumulate counting. What is timed comes from the Segmenter (bench.py)."""
import time

import numpy as np
import torch


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
