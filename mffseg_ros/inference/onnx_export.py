"""Export an MFF model (one decoder branch) to ONNX, with the weights' metadata embedded."""
import copy
import json
import warnings
from pathlib import Path

import torch

from mffseg_ros.errors import MffsegError
from mffseg_ros.model.mffnet import BRANCHES

INPUT_NAME, OUTPUT_NAME = 'image', 'logits'
METADATA_KEY = 'mffseg_metadata'


class BranchOutput(torch.nn.Module):
    """`x -> logits` of one branch: ONNX graphs need a plain tensor in and out."""

    def __init__(self, model, branch='main'):
        super().__init__()
        if branch not in BRANCHES:
            raise MffsegError(f'unknown branch {branch!r}: choose one of {", ".join(BRANCHES)}')
        self.model, self.branch = model, branch
        self.train(model.training)  # exporters restore the wrapper's mode onto the wrapped model

    def forward(self, x):
        return self.model(x, branch=self.branch)['out']


def export_onnx(model, path, *, size=(512, 640), batch=1, branch='main', metadata=None, opset=17):
    """Write `model` (any device/precision; exported as an fp32 CPU copy) to `path` and return it.

    All dimensions are fixed (`batch` x 3 x `size`): the SPP pooling kernels depend on the input size,
    so the tracer must see constants (symbolic axes make the export fail or, worse, bake one size's
    kernels into a graph that accepts others). The legacy TorchScript exporter is used because the dynamo exporter needs
    onnxscript, which the package does not depend on."""
    height, width = size
    if height % 32 or width % 32:
        raise MffsegError(f'ONNX export size {height}x{width}: height and width must be multiples of 32')
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise MffsegError(f'{path}: folder {path.parent} does not exist')
    from torch.onnx import _constants
    # bilinear resizing with computed sizes needs opset 9 or later (older opsets fail after a graph dump)
    low, high = max(9, _constants.ONNX_MIN_OPSET), _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    if not low <= int(opset) <= high:
        raise MffsegError(f'ONNX opset {opset}: MFF exports with opsets {low} to {high} (default 17)')
    cpu_model = copy.deepcopy(model).float().cpu().eval()
    wrapper = BranchOutput(cpu_model, branch)
    example = torch.zeros(batch, 3, height, width)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')  # the legacy exporter's deprecation and tracer warnings
        try:
            torch.onnx.export(wrapper, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
        except torch.onnx.errors.OnnxExporterError as e:  # e.g. an operator the opset lacks
            raise MffsegError(f'{path}: ONNX export at opset {opset} failed ({" ".join(str(e).split())})') from e
    _embed_metadata(path, dict(metadata or {}), branch=branch, size=[height, width], batch=batch)
    return path


def _embed_metadata(path, metadata, **extra):
    import onnx
    proto = onnx.load(str(path))
    metadata.update(extra)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, default=str)
    onnx.save(proto, str(path))


def read_onnx_metadata(path):
    """The metadata dict embedded by `export_onnx` ({} for foreign files)."""
    import onnx
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises several types for missing or corrupt files
        raise MffsegError(f'{path}: not a readable ONNX file ({e})') from None
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    return {}


def quantize_int8(fp32_path, int8_path, batches):
    """Static int8 quantisation of an exported model (ONNX Runtime, QDQ: per-channel int8 weights,
    uint8 activations, MinMax ranges) calibrated on `batches`: normalised (B, 3, h, w) float32 arrays
    of the file's input shape, from frames like the ones it will see. Returns `int8_path`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{INPUT_NAME: b} for b in batches])

        def get_next(self):
            return next(self.feeds, None)

    if not batches:
        raise MffsegError('int8 quantisation needs at least one calibration batch')
    quantize_static(str(fp32_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return Path(int8_path)
