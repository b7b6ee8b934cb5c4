"""MICCAI EndoVis 2017 robotic instrument segmentation, read from the raw challenge layout.

    <root>/instrument_dataset_N/left_frames/frameNNN.png      1920x1080 RGB
    <root>/instrument_dataset_N/right_frames/frameNNN.png
    <root>/instrument_dataset_N/ground_truth/<Instrument>_labels/frameNNN.png   one folder per instance
    <root>/instrument_dataset_N/camera_calibration.txt

Frames are cropped to the 1280x1024 image area at x=320, y=28 (the black border is dropped).
Ground-truth grey values 10/20/30 are shaft/wrist/claspers; the instrument type comes from the folder
name; `Other` folders count for the type task only (any non-zero value is type 7, background for
binary and parts). Anything unexpected is reported with a
`LabelWarning` naming the file and the affected pixels become 255 (ignore), never a wrong label.
"""
import logging
import re
import warnings
from pathlib import Path

import cv2
import numpy as np

from mffseg_ros.errors import DataError
from mffseg_ros.model.classes import ENDOVIS_PART_VALUES, ENDOVIS_TYPE_FOLDERS

log = logging.getLogger(__name__)

RAW_SIZE = (1920, 1080)  # width, height of the raw challenge frames
CROP_X, CROP_Y, CROP_W, CROP_H = 320, 28, 1280, 1024
OTHER_TYPE = ENDOVIS_TYPE_FOLDERS['Other']
IGNORE = 255
_VIDEO_RE = re.compile(r'^instrument_dataset_(\d+)$')


class LabelWarning(UserWarning):
    """A label file holds something the reader does not know; the affected pixels are ignored (255)."""


def warn_label(message):
    log.warning(message)
    warnings.warn(message, LabelWarning, stacklevel=3)


def crop_frame(image, path):
    """Crop a raw 1920x1080 frame (or label) to the 1280x1024 image area; pre-cropped frames pass."""
    h, w = image.shape[:2]
    if (w, h) == RAW_SIZE:
        return image[CROP_Y:CROP_Y + CROP_H, CROP_X:CROP_X + CROP_W]
    if (w, h) == (CROP_W, CROP_H):
        return image
    raise DataError(f'{path}: {w}x{h} is neither a raw EndoVis 2017 frame (1920x1080) '
                    f'nor a cropped one (1280x1024)')


def type_from_folder(name):
    """Type id for a ground-truth folder name (`Left_Prograsp_Forceps_labels` -> 2); None if unknown."""
    hits = [tid for fragment, tid in ENDOVIS_TYPE_FOLDERS.items() if fragment.lower() in name.lower()]
    return hits[0] if len(hits) == 1 else None


def read_rgb(path):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f'{path}: cannot read the image (missing, not an image, or truncated)')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path):
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise DataError(f'{path}: cannot read the label image (missing, not an image, or truncated)')
    if mask.ndim == 3:  # some releases store grey labels as 3 equal channels
        mask = mask[..., 0]
    return mask


def find_videos(root):
    """{video number: folder} for every instrument_dataset_N under root."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f'{root}: EndoVis 2017 root folder not found')
    videos = {}
    for d in root.iterdir():
        m = _VIDEO_RE.match(d.name)
        if m and d.is_dir():
            videos[int(m.group(1))] = d
    if not videos:
        raise DataError(f'{root}: no instrument_dataset_N folders (expected the raw EndoVis 2017 layout)')
    return dict(sorted(videos.items()))


class EndoVis2017:
    """Frames of the chosen videos as CONTRACTS.md sample dicts (`image`, `parts`, `type`, `binary`,
    `instance`, `name`), cropped to 1280x1024. `instance` is the 1-based index of the ground-truth folder
    (sorted by name) within the video, so an instance keeps its identity across frames."""

    def __init__(self, root, videos=None, *, crop=True):
        self.root = Path(root)
        self.crop = crop
        found = find_videos(self.root)
        wanted = list(found) if videos is None else [int(v) for v in videos]
        missing = [v for v in wanted if v not in found]
        if missing:
            raise DataError(f'{self.root}: instrument_dataset_{missing[0]} not found '
                            f'(present: {sorted(found)})')
        self.videos = wanted
        self.instruments = {}  # video -> [(folder, type id or None)]
        self.frames = []  # (video, frame file name)
        for v in wanted:
            self.instruments[v] = self._scan_instruments(found[v])
            left = found[v] / 'left_frames'
            names = sorted(p.name for p in left.glob('*.png')) if left.is_dir() else []
            if not names:
                raise DataError(f'{left}: no frames (*.png) found')
            self.frames += [(v, n) for n in names]
        self._folders = found

    @staticmethod
    def _scan_instruments(video_dir):
        gt = video_dir / 'ground_truth'
        if not gt.is_dir():
            raise DataError(f'{gt}: ground-truth folder missing')
        instruments = []
        for folder in sorted(p for p in gt.iterdir() if p.is_dir()):
            tid = type_from_folder(folder.name)
            if tid is None:
                warn_label(f'{folder}: unknown instrument folder name; its pixels get type 255 (ignore)')
            instruments.append((folder, tid))
        return instruments

    def __len__(self):
        return len(self.frames)

    def video_dir(self, video):
        return self._folders[video]

    def calibration_path(self, video):
        return self._folders[video] / 'camera_calibration.txt'

    def _image(self, path):
        image = read_rgb(path)
        return crop_frame(image, path) if self.crop else image

    def right_image(self, index):
        video, name = self.frames[index]
        return self._image(self._folders[video] / 'right_frames' / name)

    def __getitem__(self, index):
        video, name = self.frames[index]
        vdir = self._folders[video]
        image = self._image(vdir / 'left_frames' / name)
        h, w = image.shape[:2]
        parts = np.zeros((h, w), np.uint8)
        types = np.zeros((h, w), np.uint8)
        binary = np.zeros((h, w), np.uint8)
        instance = np.zeros((h, w), np.uint16)
        for inst_id, (folder, tid) in enumerate(self.instruments[video], start=1):
            path = folder / name
            mask = read_mask(path)
            if self.crop:
                mask = crop_frame(mask, path)
            if mask.shape != (h, w):
                raise DataError(f'{path}: label size {mask.shape[1]}x{mask.shape[0]} != frame {w}x{h}')
            self._paint(mask, path, inst_id, tid, parts, types, binary, instance)
        return {'image': image, 'parts': parts, 'type': types, 'binary': binary, 'instance': instance,
                'name': f'instrument_dataset_{video}/{name}'}

    @staticmethod
    def _paint(mask, path, inst_id, tid, parts, types, binary, instance):
        on = mask > 0
        if not on.any():
            return
        instance[on] = inst_id
        if tid == OTHER_TYPE:  # not a jointed instrument: any value is type 7, background for binary/parts
            types[on] = OTHER_TYPE
            parts[on] = 0
            binary[on] = 0
            return
        unknown = on & ~np.isin(mask, list(ENDOVIS_PART_VALUES))
        if unknown.any():
            values = sorted(set(np.unique(mask[unknown]).tolist()))
            warn_label(f'{path}: unknown grey values {values} ({int(unknown.sum())} px); '
                       f'those pixels get label 255 (ignore)')
        known = on & ~unknown
        types[known] = IGNORE if tid is None else tid
        types[unknown] = IGNORE
        lut = np.full(256, IGNORE, np.uint8)
        for grey, part in ENDOVIS_PART_VALUES.items():
            lut[grey] = part
        parts[on] = lut[np.minimum(mask[on], 255).astype(np.intp)]
        binary[known] = 1
        binary[unknown] = IGNORE
