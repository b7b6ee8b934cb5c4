"""One entry point for every data set: `build_dataset(spec)` and the CLI form `parse_data_spec(text)`.

    endovis:/data/endovis17?videos=7,8          endovis:/data/endovis17?split=fold0-val
    cholecseg8k:/path        cholec_instance:/path        synth:?frames=64&seed=3&size=256x320
    composite:/data/root?frames=64&seed=3&size=384x480    (rendered tools on real frames, real tools pasted)
    folder:/images?masks=/masks&mapping=map.yaml&image_suffix=.png&mask_suffix=_mask.png

Every kind also takes `stride=N` (every N-th frame), `limit=N` (first N frames after the stride) and
`mirror=1` (every frame and its labels flipped left to right: a second view of a small set).
"""
from pathlib import Path
from urllib.parse import parse_qsl

from mffseg_ros.data.cholec import CholecInstanceSeg, cholecseg8k
from mffseg_ros.data.endovis import EndoVis2017
from mffseg_ros.data.generic import FolderDataset
from mffseg_ros.data.real_pixels import CompositeDataset
from mffseg_ros.data.samples import ConcatSamples, Mirrored, Subsampled
from mffseg_ros.data.splits import split_videos
from mffseg_ros.data.synth import SynthDataset
from mffseg_ros.errors import DataError
from mffseg_ros.scalars import parse_scalar
from mffseg_ros.sizes import parse_size

KINDS = ('endovis', 'folder', 'cholecseg8k', 'cholec_instance', 'synth', 'composite')
LIST_KEYS = ('videos',)


def parse_data_spec(text):
    """`kind:root?key=value&...` -> {'kind': kind, 'root': root, key: value, ...} (root optional)."""
    text = str(text).strip()
    kind, sep, rest = text.partition(':')
    kind = kind.strip().lower()
    if not sep or kind not in KINDS:
        raise DataError(f'data spec {text!r}: expected KIND:PATH[?key=value&...] with KIND one of '
                        f'{", ".join(KINDS)}')
    root, _, query = rest.partition('?')
    spec = {'kind': kind}
    if root:
        spec['root'] = root
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in LIST_KEYS:
            spec[key] = [parse_scalar(v) for v in value.split(',') if v]
        else:
            spec[key] = parse_scalar(value)
    return spec


def _root(spec):
    if not spec.get('root'):
        raise DataError(f'data spec {spec}: a {spec["kind"]} data set needs a path')
    return Path(spec['root']).expanduser()


def _build(kind, opts, spec):
    if kind == 'endovis':
        videos = opts.pop('videos', None)
        if 'split' in opts:
            videos = split_videos(opts.pop('split'))
        if isinstance(videos, int):
            videos = [videos]
        return EndoVis2017(_root(spec), videos, **opts)
    if kind == 'folder':
        return FolderDataset(_root(spec), **opts)
    if kind == 'cholecseg8k':
        return cholecseg8k(_root(spec), **opts)
    if kind == 'cholec_instance':
        return CholecInstanceSeg(_root(spec), **opts)
    # synth and composite: the synthetic-scene generator's data sets
    if 'frames' in opts:
        opts['length'] = opts.pop('frames')
    if 'length' not in opts:
        raise DataError(f'data spec {spec}: {kind} needs frames=N')
    if 'size' in opts:  # size=256x320 (H x W) in a spec string, [H, W] in a config
        opts['size'] = _size(opts['size'], spec)
    if kind == 'composite':
        return CompositeDataset(_root(spec), **opts)
    return SynthDataset(**opts)


def _size(value, spec):
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    return parse_size(value, what=f'data spec {spec}: size', error=DataError)


def build_dataset(spec):
    """A sample source (len + getitem -> CONTRACTS.md sample dict) from a spec dict or spec string."""
    if isinstance(spec, str):
        spec = parse_data_spec(spec)
    spec = dict(spec)
    kind = str(spec.get('kind', '')).lower()
    if kind not in KINDS:
        raise DataError(f'data spec {spec}: unknown kind {kind!r} (kinds: {", ".join(KINDS)})')
    opts = {k: v for k, v in spec.items() if k not in ('kind', 'root', 'stride', 'limit', 'mirror')}
    try:
        dataset = _build(kind, opts, spec)
        if spec.get('stride', 1) != 1 or spec.get('limit') is not None:
            dataset = Subsampled(dataset, spec.get('stride', 1), spec.get('limit'))
        mirror = spec.get('mirror', 0)
        if mirror not in (0, 1, True, False):
            raise DataError(f'data spec {spec}: mirror must be 0 or 1, got {mirror!r}')
        if mirror:
            dataset = Mirrored(dataset)
    except TypeError as e:
        if 'argument' not in str(e):
            raise
        raise DataError(f'data spec {spec}: unknown option ({e})') from None
    except ValueError as e:  # e.g. frames=abc
        raise DataError(f'data spec {spec}: bad option value ({e})') from None
    if len(dataset) == 0:
        raise DataError(f'data spec {spec}: the data set is empty')
    return dataset


def build_datasets(specs):
    """Several specs read as one data set (in order)."""
    if isinstance(specs, (str, dict)):
        specs = [specs]
    sets = [build_dataset(s) for s in specs]
    return sets[0] if len(sets) == 1 else ConcatSamples(sets)
