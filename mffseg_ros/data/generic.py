"""Folders of images and label masks with a value -> class mapping per task.

A mask file belongs to the image whose name ends with `image_suffix`, that suffix replaced by
`mask_suffix` (`video01_000000_frame.png` -> `video01_000000_mask.png`). The mapping says, per task,
which mask value is which class id; values it does not list become `default` (a class id, or 255 =
ignore). Tasks the mapping does not name are all-255; without a `binary` entry, binary is derived from
the first of `type` / `parts` that is mapped (class > 0 = instrument).
"""
from pathlib import Path

import numpy as np
import yaml

from mffseg_ros.data.endovis import IGNORE, read_mask, read_rgb
from mffseg_ros.errors import DataError, one_line
from mffseg_ros.model.classes import NUM_CLASSES

TASKS = ('parts', 'type', 'binary')


def load_mapping(mapping):
    """A mapping dict, or the path of a YAML file holding one: {task: {value: class, 'default': c}}."""
    if isinstance(mapping, (str, Path)):
        path = Path(mapping)
        try:
            mapping = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise DataError(f'{path}: cannot read the value->class mapping ({one_line(e)})') from e
        where = str(path)
    else:
        where = 'mapping'
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f'{where}: expected {{task: {{mask value: class id}}}}')
    luts = {}
    for task, table in mapping.items():
        if task not in TASKS or not isinstance(table, dict):
            raise DataError(f'{where}: unknown task {task!r} or not a table (tasks: {", ".join(TASKS)})')
        lut = np.full(65536, int(table.get('default', IGNORE)), np.uint8)
        for value, cls in table.items():
            if value == 'default':
                continue
            cls = int(cls)
            if cls != IGNORE and not 0 <= cls < NUM_CLASSES[task]:
                raise DataError(f'{where}: {task} class {cls} out of range 0..{NUM_CLASSES[task] - 1}')
            lut[int(value)] = cls
        luts[task] = lut
    return luts


def labels_from_mask(mask, luts):
    """Sample label maps (parts, type, binary) from one mask through the per-task lookup tables."""
    out = {t: (luts[t][mask] if t in luts else np.full(mask.shape, IGNORE, np.uint8)) for t in TASKS}
    if 'binary' not in luts:
        source = next((out[t] for t in ('type', 'parts') if t in luts), None)
        if source is not None:
            out['binary'] = np.where(source == IGNORE, IGNORE, (source > 0)).astype(np.uint8)
    return out


class FolderDataset:
    """Images in `images` with masks in `masks` (default: the same folder) as sample dicts."""

    def __init__(self, images, masks=None, mapping=None, *, image_suffix='.png', mask_suffix='_mask.png',
                 name_prefix='', instances=None):
        """instances: {mask value: instance id} where a mask value is one instrument (default: no instances)."""
        self.images = Path(images)
        self.instance_lut = np.zeros(65536, np.uint16)
        for value, instance_id in (instances or {}).items():
            self.instance_lut[int(value)] = int(instance_id)
        self.masks = Path(masks) if masks else self.images
        if mapping is None:
            raise DataError(f'{self.images}: a folder data set needs a value->class mapping')
        self.luts = load_mapping(mapping)
        if not self.images.is_dir():
            raise DataError(f'{self.images}: image folder not found')
        if not self.masks.is_dir():
            raise DataError(f'{self.masks}: mask folder not found')
        self.pairs = []
        for img in sorted(self.images.iterdir()):
            if not img.name.endswith(image_suffix) or img.name.endswith(mask_suffix):
                continue
            mask = self.masks / (img.name[:-len(image_suffix)] + mask_suffix)
            if not mask.is_file():
                raise DataError(f'{mask}: label mask for {img.name} not found')
            self.pairs.append((img, mask))
        if not self.pairs:
            raise DataError(f'{self.images}: no images ending in {image_suffix!r}')
        self.name_prefix = name_prefix

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        img_path, mask_path = self.pairs[index]
        image = read_rgb(img_path)
        mask = read_mask(mask_path)
        if mask.shape != image.shape[:2]:
            raise DataError(f'{mask_path}: mask size {mask.shape[::-1]} != image size {image.shape[1::-1]}')
        labels = labels_from_mask(mask, self.luts)
        return {'image': image, 'parts': labels['parts'], 'type': labels['type'],
                'binary': labels['binary'], 'instance': self.instance_lut[mask],
                'name': self.name_prefix + img_path.name}
