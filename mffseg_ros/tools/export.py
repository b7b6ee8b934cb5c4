"""`mffseg export --onnx [--weights W] [--size HxW] [--branch main|aux] OUT.onnx`: export one branch of
the model to ONNX (fixed shape), then check ONNX Runtime against torch.
`mffseg export --fp16 [--weights W] [--metrics NAME=metrics.json ...] OUT.safetensors`: a half-size
fp16 safetensors copy (how the shipped weights are made), optionally recording evaluation results."""
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch

from mffseg_ros import sizes
from mffseg_ros.errors import MffsegError
from mffseg_ros.inference.onnx_export import export_onnx
from mffseg_ros.model.mffnet import BRANCHES
from mffseg_ros.model.weights import load_weights, save_weights
from mffseg_ros.paths import default_weights_path

log = logging.getLogger(__name__)
# ONNX Runtime and torch sum in different orders; a pixel whose top two logits are this close may
# flip, anything else must not.
MIN_LABEL_AGREEMENT = 0.999


def parse_size(text):
    """'512x640' -> (512, 640): a network input size, multiples of 32."""
    return sizes.parse_size(text, multiple=32)


def add_arguments(parser):
    parser.add_argument('output', metavar='OUT', help='file to write (.onnx or .safetensors)')
    parser.add_argument('--onnx', action='store_true', help='export to ONNX')
    parser.add_argument('--fp16', action='store_true', help='write an fp16 safetensors copy of the weights')
    parser.add_argument('--metrics', action='append', default=[], metavar='NAME=FILE',
                        help='with --fp16: record an `mffseg evaluate` metrics.json under metrics.NAME')
    parser.add_argument('--weights', help='safetensors weights (default: the installed default model)')
    parser.add_argument('--size', default=None,
                        help='input HEIGHTxWIDTH, multiples of 32 (default: the weights\' train_size, '
                             'else 512x640)')
    parser.add_argument('--batch', type=int, default=1, help='batch size (default 1; 2 for stereo pairs)')
    parser.add_argument('--branch', choices=BRANCHES, default='main',
                        help='main decoder, or the faster aux-only branch')
    parser.add_argument('--opset', type=int, default=17, help='ONNX opset (default 17)')
    parser.add_argument('--no-verify', action='store_true',
                        help='skip the ONNX Runtime vs torch check on a random input')


def load_model(weights):
    """(model, metadata) from `weights` or the default weights path."""
    path = Path(weights) if weights else default_weights_path()
    return load_weights(path)


def default_size(metadata):
    size = metadata.preprocessing.train_size
    if size and all(int(s) % 32 == 0 for s in size):
        return int(size[0]), int(size[1])
    return 512, 640


def verify(model, path, *, size, batch, branch, seed=0):
    """(max |logit difference|, label agreement) of ONNX Runtime vs torch on one random frame."""
    import onnxruntime as ort  # optional: only --onnx needs ONNX Runtime
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        expected = model.float().cpu().eval()(x, branch=branch)['out'].numpy()
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    agreement = float((got.argmax(1) == expected.argmax(1)).mean())
    return float(np.abs(got - expected).max()), agreement


def export_fp16(args):
    output = Path(args.output)
    if output.suffix != '.safetensors':
        raise MffsegError(f'{output}: output file name must end in .safetensors')
    model, metadata = load_model(args.weights)
    metrics = dict(metadata.metrics)
    for item in args.metrics:
        name, _, file = item.partition('=')
        if not name or not file:
            raise MffsegError(f'--metrics {item!r}: expected NAME=path/to/metrics.json')
        try:
            metrics[name] = json.loads(Path(file).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise MffsegError(f'{file}: cannot read evaluation metrics ({e})') from None
    save_weights(output, model, dataclasses.replace(metadata, metrics=metrics), dtype=torch.float16)
    print(f'wrote {output} ({output.stat().st_size / 1e6:.1f} MB, fp16)')
    return 0


def run(args):
    if args.onnx == args.fp16:
        raise MffsegError('choose one export format: --onnx or --fp16')
    if args.fp16:
        return export_fp16(args)
    output = Path(args.output)
    if output.suffix.lower() != '.onnx':
        raise MffsegError(f'{output}: output file name must end in .onnx')
    model, metadata = load_model(args.weights)
    size = parse_size(args.size) if args.size else default_size(metadata)
    if args.batch < 1:
        raise MffsegError(f'--batch {args.batch}: must be at least 1')
    export_onnx(model, output, size=size, batch=args.batch, branch=args.branch, metadata=metadata.to_dict(),
                opset=args.opset)
    print(f'wrote {output} ({output.stat().st_size / 1e6:.1f} MB, input {args.batch}x3x{size[0]}x{size[1]}, '
          f'branch {args.branch}, opset {args.opset})')
    if not args.no_verify:
        max_diff, agreement = verify(model, output, size=size, batch=args.batch, branch=args.branch)
        print(f'ONNX Runtime vs torch: max |logit diff| {max_diff:.2e}, label agreement {agreement:.4%}')
        if agreement < MIN_LABEL_AGREEMENT:
            raise MffsegError(f'{output}: ONNX Runtime disagrees with torch on {1 - agreement:.2%} of '
                              'pixels; the export is wrong (try another --opset)')
    return 0
