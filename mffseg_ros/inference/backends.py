"""Inference backends other than eager torch: each is a callable `x (B,3,h,w float tensor) -> logits`.

`make_backend(name, model, metadata, *, device, precision, **options)` is what `Segmenter.load(...,
backend=name)` calls. Names: 'torch' (eager, for the benchmark), 'compile' (torch.compile),
'onnx' / 'onnxruntime' (ONNX Runtime; CPU, or CUDA where its provider exists), 'tensorrt'
(torch-tensorrt, else ONNX Runtime's TensorRT provider; optional, needs CUDA).
"""
import logging
import tempfile
from pathlib import Path

import torch

from mffseg_ros.errors import MffsegError
from mffseg_ros.inference.onnx_export import BranchOutput, export_onnx, read_onnx_metadata

log = logging.getLogger(__name__)

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
BACKEND_NAMES = ('torch', 'compile', 'onnx', 'onnxruntime', 'tensorrt')


class BackendUnavailable(MffsegError):
    """The backend asked for cannot run here (package, provider or device missing)."""


def _dtype(precision):
    if precision not in DTYPES:
        raise MffsegError(f'unknown precision {precision!r}: choose one of {", ".join(DTYPES)}')
    return DTYPES[precision]


def _device_type(device):
    return torch.device(device).type


class TorchBackend:
    """Eager torch in the given precision (weights cast, not autocast: fewer casts per layer)."""

    name = 'torch'

    def __init__(self, model, *, device='cpu', precision='fp32', branch='main', channels_last=False):
        self.dtype, self.branch = _dtype(precision), branch
        self.device = torch.device(device)
        self.model = model.to(self.device, self.dtype).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.description = f'torch eager {precision} on {self.device}'

    @torch.inference_mode()
    def __call__(self, x):
        x = x.to(self.device, self.dtype, memory_format=self.memory_format)
        return self.model(x, branch=self.branch)['out']


class CompiledBackend(TorchBackend):
    """torch.compile: 'reduce-overhead' (CUDA graphs) on CUDA, the default mode elsewhere."""

    name = 'compile'

    def __init__(self, model, *, device='cpu', precision='fp32', branch='main', mode=None, **kwargs):
        super().__init__(model, device=device, precision=precision, branch=branch, **kwargs)
        mode = mode or ('reduce-overhead' if self.device.type == 'cuda' else 'default')
        module = self.model

        def run(x):
            return module(x, branch=branch)['out']
        self.compiled = torch.compile(run, mode=mode, dynamic=False)
        self.description = f'torch.compile({mode}) {precision} on {self.device}'

    @torch.inference_mode()
    def __call__(self, x):
        out = self.compiled(x.to(self.device, self.dtype, memory_format=self.memory_format))
        return out.clone() if self.device.type == 'cuda' else out  # graph outputs are overwritten


class OnnxRuntimeBackend:
    """ONNX Runtime. The model is exported once per input shape (the SPP kernels are size-specific)
    into `cache_dir`; a given `onnx_path` serves its own shape."""

    name = 'onnx'

    def __init__(self, model, metadata=None, *, device='cpu', precision='fp32', branch='main',
                 threads=None, onnx_path=None, cache_dir=None, providers=None):
        import onnxruntime as ort
        self.ort = ort
        if precision != 'fp32':
            raise BackendUnavailable(f'ONNX Runtime backend runs fp32 only (asked for {precision}); '
                                     'use --precision fp32 or the torch backend')
        self.model, self.metadata, self.branch = model, dict(metadata or {}), branch
        self.threads = threads
        self.device = torch.device(device)
        self.providers = providers or self._providers(self.device)
        self._tmp = None
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix='mffseg-onnx-')
            cache_dir = self._tmp.name
        self.cache_dir = Path(cache_dir)
        self.sessions = {}  # (batch, height, width) -> InferenceSession
        if onnx_path is not None:
            self._add_file(Path(onnx_path))
        self.description = (f'ONNX Runtime {ort.__version__} {",".join(self.providers)}'
                            f' threads={threads or "auto"}')

    def _providers(self, device):
        available = self.ort.get_available_providers()
        if device.type == 'cuda':
            if 'CUDAExecutionProvider' not in available:
                raise BackendUnavailable('ONNX Runtime has no CUDAExecutionProvider here '
                                         f'(available: {", ".join(available)}); install onnxruntime-gpu')
            return ['CUDAExecutionProvider', 'CPUExecutionProvider']
        return ['CPUExecutionProvider']

    def _session(self, path):
        options = self.ort.SessionOptions()
        options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        return self.ort.InferenceSession(str(path), options, providers=self.providers)

    def _add_file(self, path):
        if not path.is_file():
            raise MffsegError(f'{path}: ONNX file not found')
        meta = read_onnx_metadata(path)
        if meta.get('branch', self.branch) != self.branch:
            raise MffsegError(f'{path}: exported for branch {meta["branch"]!r}, asked for {self.branch!r}')
        session = self._session(path)
        shape = session.get_inputs()[0].shape
        if len(shape) != 4 or not all(isinstance(d, int) for d in (shape[0], *shape[2:])):
            raise MffsegError(f'{path}: input shape must be fixed (batch, 3, height, width), got {shape}')
        self.sessions[(shape[0], *shape[2:])] = session

    def session_for(self, batch, height, width):
        key = (int(batch), int(height), int(width))
        if key not in self.sessions:
            if self.model is None:
                raise MffsegError(f'no ONNX model for input {batch}x3x{height}x{width} '
                                  'and no torch model to export')
            path = self.cache_dir / f'mff_{self.branch}_{batch}x{height}x{width}.onnx'
            log.info('exporting the model to ONNX for input %dx3x%dx%d: %s', *key, path)
            export_onnx(self.model, path, size=key[1:], batch=key[0], branch=self.branch,
                        metadata=self.metadata)
            self.sessions[key] = self._session(path)
        return self.sessions[key]

    def __call__(self, x):
        session = self.session_for(x.shape[0], *x.shape[-2:])
        array = x.detach().to('cpu', torch.float32).contiguous().numpy()
        (logits,) = session.run(None, {session.get_inputs()[0].name: array})
        return torch.from_numpy(logits).to(x.device)


class TensorRTBackend:
    """torch-tensorrt where installed, else ONNX Runtime's TensorRT provider. CUDA only; compiled
    per input shape on first use."""

    name = 'tensorrt'

    def __init__(self, model, metadata=None, *, device='cuda', precision='fp16', branch='main', **options):
        if _device_type(device) != 'cuda' or not torch.cuda.is_available():
            raise BackendUnavailable('TensorRT backend needs a CUDA device')
        self.dtype, self.branch, self.device = _dtype(precision), branch, torch.device(device)
        try:
            import torch_tensorrt
        except ImportError as e:
            torch_tensorrt, reason = None, str(e)
        if torch_tensorrt is not None:
            self.trt = torch_tensorrt
            self.model = BranchOutput(model.to(self.device, self.dtype).eval(), branch)
            self.engines, self.onnx = {}, None
            self.description = f'torch-tensorrt {torch_tensorrt.__version__} {precision}'
            return
        import onnxruntime as ort
        if 'TensorrtExecutionProvider' not in ort.get_available_providers():
            raise BackendUnavailable(f'TensorRT backend: torch-tensorrt is not installed ({reason}) and '
                                     'ONNX Runtime has no TensorrtExecutionProvider')
        self.trt = None
        trt_options = {'trt_fp16_enable': precision != 'fp32', 'trt_engine_cache_enable': True}
        self.onnx = OnnxRuntimeBackend(model, metadata, device='cpu', branch=branch,
                                       providers=[('TensorrtExecutionProvider', trt_options),
                                                  'CUDAExecutionProvider', 'CPUExecutionProvider'],
                                       **options)
        self.description = f'ONNX Runtime TensorRT provider ({"fp16" if precision != "fp32" else "fp32"})'

    @torch.inference_mode()
    def __call__(self, x):
        if self.onnx is not None:
            return self.onnx(x.float()).to(x.device)
        x = x.to(self.device, self.dtype)
        key = tuple(x.shape)
        if key not in self.engines:
            self.engines[key] = self.trt.compile(self.model, ir='dynamo', inputs=[x],
                                                 enabled_precisions={self.dtype})
        return self.engines[key](x)


def make_backend(name, model, metadata=None, *, device='cpu', precision='fp32', **options):
    """A callable `x (B,3,h,w float tensor) -> logits (B,C,h,w)` running `model` with backend `name`.

    options: branch ('main'|'aux'); onnx: threads, onnx_path, cache_dir; compile: mode;
    torch/compile: channels_last."""
    branch = options.pop('branch', getattr(model, 'branch', 'main'))
    if name == 'torch':
        return TorchBackend(model, device=device, precision=precision, branch=branch, **options)
    if name == 'compile':
        return CompiledBackend(model, device=device, precision=precision, branch=branch, **options)
    if name in ('onnx', 'onnxruntime'):
        return OnnxRuntimeBackend(model, metadata, device=device, precision=precision, branch=branch,
                                  **options)
    if name == 'tensorrt':
        return TensorRTBackend(model, metadata, device=device, precision=precision, branch=branch,
                               **options)
    raise MffsegError(f'unknown backend {name!r}: choose one of {", ".join(BACKEND_NAMES)}')
