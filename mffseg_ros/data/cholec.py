"""Readers for two public laparoscopic sets: CholecSeg8k and CholecInstanceSeg (README: where to get them).

Both label instruments only as a whole (no parts, no da Vinci types), so `parts` and `type` are all 255
(ignore) and only `binary` (and, for CholecInstanceSeg, `instance`) carry labels.
"""
import json
from pathlib import Path

import cv2
import numpy as np

from mffseg_ros.data.endovis import IGNORE, read_rgb, warn_label
from mffseg_ros.data.generic import FolderDataset
from mffseg_ros.data.samples import ConcatSamples
from mffseg_ros.errors import DataError

# CholecSeg8k watershed classes: 31 grasper, 32 L-hook electrocautery; 255 marks region boundaries,
# whose side is unknown, so they are ignored rather than called tissue.
CHOLECSEG8K_WATERSHED = {'binary': {31: 1, 32: 1, 255: IGNORE, 'default': 0}}
# Its one grasper and one hook per clip as instances (two tools of one class would be one instance).
CHOLECSEG8K_INSTANCES = {31: 1, 32: 2}
CHOLECSEG8K_BINARY = {'binary': {0: 0, 255: 1, 'default': IGNORE}}  # video01-style 0/255 masks
# CholecInstanceSeg polygon labels that are instruments (its full label set).
CHOLEC_INSTRUMENTS = ('grasper', 'bipolar', 'hook', 'scissors', 'clipper', 'irrigator', 'specimen bag',
                      'specimenbag', 'specimen_bag')


def _instance_id(label, group_id):
    """A labelled instrument's instance id, the same in every frame of its video (tracking is scored on
    it): CholecInstanceSeg tells the instruments of one label apart by their group_id."""
    group = group_id if isinstance(group_id, int) and 0 <= group_id < 999 else 999
    return 1 + 1000 * CHOLEC_INSTRUMENTS.index(label) + group


def _cholecseg8k_folder(folder):
    """One CholecSeg8k folder, or None if it has neither layout."""
    if (folder / 'frames').is_dir() and (folder / 'masks').is_dir():
        return FolderDataset(folder / 'frames', folder / 'masks', CHOLECSEG8K_BINARY,
                             image_suffix='_frame.png', mask_suffix='_mask.png', name_prefix=folder.name + '/')
    if any(folder.glob('*_endo_watershed_mask.png')):
        return FolderDataset(folder, folder, CHOLECSEG8K_WATERSHED, image_suffix='_endo.png',
                             mask_suffix='_endo_watershed_mask.png', name_prefix=folder.name + '/',
                             instances=CHOLECSEG8K_INSTANCES)
    return None


def cholecseg8k(root):
    """CholecSeg8k: a clip folder (`frame_N_endo.png` + `..._watershed_mask.png`), a video01-style folder
    (`frames/`, `masks/` with 0/255 masks) or a folder holding several of those."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f'{root}: CholecSeg8k folder not found')
    single = _cholecseg8k_folder(root)
    if single is not None:
        return single
    sets = [s for s in (_cholecseg8k_folder(d) for d in sorted(root.iterdir()) if d.is_dir()) if s]
    if not sets:
        raise DataError(f'{root}: no CholecSeg8k frames (expected *_endo_watershed_mask.png or frames/+masks/)')
    return ConcatSamples(sets)


class CholecInstanceSeg:
    """CholecInstanceSeg: `img_dir/*.png` + labelme JSON polygons in `ann_dir/` (one folder, or a folder of
    VIDxx folders). An instance is one (label, group_id) pair: its polygons share one instance id, the
    same in every frame."""

    def __init__(self, root):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f'{root}: CholecInstanceSeg folder not found')
        videos = [root] if (root / 'ann_dir').is_dir() else sorted(
            d for d in root.iterdir() if (d / 'ann_dir').is_dir())
        if not videos:
            raise DataError(f'{root}: no ann_dir/ folder (expected the CholecInstanceSeg layout)')
        self.items = []
        for v in videos:
            for ann in sorted((v / 'ann_dir').glob('*.json')):
                img = v / 'img_dir' / (ann.stem + '.png')
                if not img.is_file():
                    raise DataError(f'{img}: image for {ann.name} not found')
                self.items.append((img, ann, f'{v.name}/{img.name}'))
        if not self.items:
            raise DataError(f'{root}: no annotation files (*.json) in ann_dir/')

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        img_path, ann_path, name = self.items[index]
        image = read_rgb(img_path)
        h, w = image.shape[:2]
        try:
            ann = json.loads(ann_path.read_text())
            shapes = ann.get('shapes', [])
        except (OSError, ValueError, AttributeError) as e:
            raise DataError(f'{ann_path}: cannot read the labelme JSON ({e})') from e
        binary = np.zeros((h, w), np.uint8)
        instance = np.zeros((h, w), np.uint16)
        for shape in shapes:
            label = str(shape.get('label', '')).strip().lower()
            points = np.round(np.asarray(shape.get('points', []), np.float64)).astype(np.int32)
            if points.ndim != 2 or len(points) < 3:
                warn_label(f'{ann_path}: shape {label!r} with fewer than 3 points skipped')
                continue
            poly = np.zeros((h, w), np.uint8)
            cv2.fillPoly(poly, [points.reshape(-1, 1, 2)], 1)
            on = poly.astype(bool)
            if label not in CHOLEC_INSTRUMENTS:
                warn_label(f'{ann_path}: unknown label {label!r}; its pixels get label 255 (ignore)')
                binary[on] = IGNORE
                continue
            binary[on] = 1
            instance[on] = _instance_id(label, shape.get('group_id'))
        ignore = np.full((h, w), IGNORE, np.uint8)
        return {'image': image, 'parts': ignore, 'type': ignore.copy(), 'binary': binary,
                'instance': instance, 'name': name}
