"""Overlays of segmentations and tips on RGB frames, contact sheets and PNG writing (OpenCV, fast
enough for the ROS node's overlay topic at 1280x1024)."""
import functools
from pathlib import Path

import cv2
import numpy as np

from mffseg_ros.errors import ImageFormatError, MffsegError
from mffseg_ros.model.classes import PART_COLORS, TASK_CLASSES, TYPE_COLORS


def _lut256(colours):
    """256-entry colour table for cv2.LUT; ids outside the table (e.g. 255 = ignore) map to black."""
    lut = np.zeros((256, 1, 3), np.uint8)
    lut[:len(colours), 0] = colours
    return lut


_TYPE_LUT = _lut256(TYPE_COLORS)
_PART_LUT = _lut256(PART_COLORS)
_KERNEL = np.ones((3, 3), np.uint8)
_ROI_MARGIN = 4  # px around the instruments' box that the overlay's filters may look at
_FONT = cv2.FONT_HERSHEY_SIMPLEX
# Whole-frame work goes through OpenCV (LUT, masks, copyTo): numpy boolean indexing of a
# 1280x1024 frame costs tens of milliseconds per operation.


def _colour_map(lut, label_map):
    """label_map (uint8) -> 3-channel image through the 256 x 1 x 3 table `lut`: applyColorMap with a
    user table gives what three one-channel LUTs and a merge give, about 4x faster."""
    return cv2.applyColorMap(np.ascontiguousarray(label_map, dtype=np.uint8), lut)


def _label_mask(label_map, num_classes):
    """uint8 mask (255) of ids 1..num_classes-1."""
    return cv2.inRange(np.ascontiguousarray(label_map, dtype=np.uint8), 1, num_classes - 1)


def _edges(label_map):
    """uint8 mask (255) of pixels where the label changes within 3x3 (a 2-pixel outline)."""
    lm = np.ascontiguousarray(label_map, dtype=np.uint8)
    return cv2.compare(cv2.dilate(lm, _KERNEL), cv2.erode(lm, _KERNEL), cv2.CMP_NE)


def _scale(shape):
    """Line and font scale: 1 at 640 px on the long side, never below 0.4."""
    return max(0.4, max(shape[:2]) / 640.0)


def overlay(rgb, type_map, parts_map=None, tips=None, alpha=0.45):
    """RGB frame with instruments tinted by type colour, outlined, and tips marked.

    rgb: HxWx3 uint8 RGB; type_map: HxW ids 0..7 (0 = background); parts_map: optional HxW ids
    0..3, drawn as thin part outlines; tips: objects with `u`, `v`, `instance_id`, `type_id` (and
    optionally `score`), e.g. mffseg_ros.inference.instances.Tip. Returns a new HxWx3 uint8 array."""
    rgb = np.ascontiguousarray(rgb)
    type_map = np.asarray(type_map)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f'overlay needs an HxWx3 uint8 RGB image, got {rgb.shape} {rgb.dtype}')
    if type_map.shape != rgb.shape[:2]:
        raise ValueError(f'type map {type_map.shape} does not match the image {rgb.shape[:2]}')
    type_map = np.ascontiguousarray(type_map, dtype=np.uint8) if type_map.dtype != np.uint8 else type_map
    fg = _label_mask(type_map, len(TYPE_COLORS))
    colours = _colour_map(_TYPE_LUT, type_map)
    out = rgb.copy()
    cv2.copyTo(cv2.addWeighted(rgb, 1.0 - alpha, colours, alpha, 0.0), fg, out)
    if parts_map is not None:
        parts_map = np.ascontiguousarray(parts_map, dtype=np.uint8)
        part_edges = cv2.bitwise_and(_edges(parts_map), _label_mask(parts_map, len(PART_COLORS)))
        cv2.copyTo(_colour_map(_PART_LUT, parts_map), part_edges, out)
    cv2.copyTo(colours, cv2.bitwise_and(_edges(type_map), fg), out)
    for tip in tips or ():
        _draw_tip(out, tip)
    return out


def _draw_tip(img, tip):
    s = _scale(img.shape)
    if not (np.isfinite(float(tip.u)) and np.isfinite(float(tip.v))):
        return  # a tip without an image position (e.g. only triangulated) has nothing to draw
    u, v = int(round(float(tip.u))), int(round(float(tip.v)))
    type_id = int(getattr(tip, 'type_id', 0))
    colour = tuple(int(c) for c in TYPE_COLORS[type_id % len(TYPE_COLORS)]) if type_id else (255, 255, 255)
    r = max(3, int(6 * s))
    thick = max(1, int(round(s)))
    cv2.circle(img, (u, v), r + thick, (0, 0, 0), thick + 1, cv2.LINE_AA)
    cv2.circle(img, (u, v), r, colour, thick, cv2.LINE_AA)
    cv2.drawMarker(img, (u, v), (255, 255, 255), cv2.MARKER_CROSS, r, 1)
    names = TASK_CLASSES['type']
    label = f'#{getattr(tip, "instance_id", "?")} {names[type_id] if 0 <= type_id < len(names) else type_id}'
    _text(img, label, (u + r + 2, v - r - 2), 0.45 * s, colour)


def _text_box(img, text, font_scale):
    """(width, height, baseline, thickness) of `text` as _text draws it."""
    thick = max(1, int(round(font_scale * 2)))
    (w, h), base = _text_size(text, font_scale, thick)
    return w, h, base, thick


@functools.lru_cache(maxsize=1024)
def _text_size(text, font_scale, thick):
    """cv2.getTextSize, remembered: the overlay asks for the same labels' sizes again and again."""
    return cv2.getTextSize(text, _FONT, font_scale, thick)


def _text_rect(img, text, origin, font_scale):
    """(x, y, box) of `text` placed at `origin` and kept inside the image, box = (x0, y0, x1, y1)."""
    w, h, base, _ = _text_box(img, text, font_scale)
    x = min(max(2, int(origin[0])), max(2, img.shape[1] - w - 2))
    y = min(max(h + 2, int(origin[1])), img.shape[0] - base - 2)
    return x - 2, y - h - 2, x + w + 2, y + base + 1


def _text(img, text, origin, font_scale, colour=(255, 255, 255)):
    """Text on a dark box (a box, not a halo: a halo drawn thicker than the text leaves ghost strokes).
    Returns the box (x0, y0, x1, y1) it covered."""
    _, h, base, thick = _text_box(img, text, font_scale)
    x0, y0, x1, y1 = _text_rect(img, text, origin, font_scale)
    x, y = x0 + 2, y0 + h + 2
    roi = img[max(0, y0):y1, max(0, x0):x1]
    roi[...] = (roi * 0.35).astype(np.uint8)
    cv2.putText(img, text, (x, y), _FONT, font_scale, tuple(int(c) for c in colour), thick, cv2.LINE_AA)
    return x0, y0, x1, y1


# Distinct colours (RGB) for tracked instruments: each track keeps the palette index it was given
# (tracking.Tracker: one no live track uses), so colours are stable and differ within a frame.
INSTRUMENT_COLORS = ((64, 200, 255), (255, 214, 40), (255, 64, 64), (90, 230, 90), (240, 110, 255),
                     (255, 150, 40), (40, 240, 200), (170, 140, 255), (120, 120, 255), (150, 220, 40))


def instrument_color(colour_index):
    return INSTRUMENT_COLORS[int(colour_index) % len(INSTRUMENT_COLORS)]


def type_name(type_id):
    """Display name of a type id (the unknown id included)."""
    names = TASK_CLASSES['type']
    return names[type_id] if 0 <= type_id < len(names) else 'unknown'


def _overlaps(box, boxes):
    return any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes)


def instrument_overlay(rgb, frame, alpha=0.4):
    """RGB frame with each tracked instrument tinted in its own colour, its parts outlined (thin white
    lines between shaft, wrist and claspers), its tip marked and numbered, and a legend
    (colour, id, voted type and score). frame: perception.FramePerception of this image."""
    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f'overlay needs an HxWx3 uint8 RGB image, got {rgb.shape} {rgb.dtype}')
    if tuple(frame.result.size) != rgb.shape[:2]:
        raise ValueError(f'perception of a {frame.result.size} frame does not match the image {rgb.shape[:2]}')
    out = rgb.copy()
    s = _scale(rgb.shape)
    lut = np.zeros((256, 1, 3), np.uint8)
    order = {inst.track_id: k for k, inst in enumerate(frame.instruments, start=1)}
    for inst in frame.instruments:
        lut[order[inst.track_id], 0] = instrument_color(inst.colour)
    small = frame.paint(lambda i: order[i.track_id])  # instruments numbered 1..N for an 8-bit colour table
    # Tint and outlines only in the instruments' bounding box (with a margin for the 5x5 median and
    # the 3x3 outlines): the rest of a 1280x1024 frame is copied untouched.
    x, y, w, h = cv2.boundingRect(cv2.inRange(small, 1, 255))
    if w and h:
        rows = slice(max(y - _ROI_MARGIN, 0), y + h + _ROI_MARGIN)
        cols = slice(max(x - _ROI_MARGIN, 0), x + w + _ROI_MARGIN)
        _tint(out[rows, cols], rgb[rows, cols], small[rows, cols], frame.parts_image()[rows, cols], lut, alpha)
    legend_rows = [(instrument_color(i.colour), f'#{i.track_id} {type_name(i.type_id)} {i.type_score:.2f}')
                   for i in frame.instruments]
    placed = [_legend(out, legend_rows, s)]  # labels keep clear of the legend and of each other
    for inst in frame.instruments:
        colour = instrument_color(inst.colour)
        u, v = int(round(inst.tip[0])), int(round(inst.tip[1]))
        r = max(3, int(5 * s))
        cv2.circle(out, (u, v), r, (0, 0, 0), max(1, int(round(s))) + 2, cv2.LINE_AA)
        cv2.circle(out, (u, v), r, colour, max(1, int(round(s))), cv2.LINE_AA)
        label = f'#{inst.track_id}'
        w, h, base, _ = _text_box(out, label, 0.5 * s)
        candidates = [(u + dx, v + dy) for dx in (r + 3, -r - w - 3, r + 3 + w, -r - 2 * w - 6)
                      for dy in (-r - 3, r + h + 3, -r - 2 * h - 8, r + 2 * h + 8)]
        origin = next((o for o in candidates if not _overlaps(_text_rect(out, label, o, 0.5 * s), placed)),
                      candidates[0])
        placed.append(_text(out, label, origin, 0.5 * s, colour))
    return out


def _tint(out, rgb, small, parts, lut, alpha):
    """In place on `out` (a view): instruments tinted in their colours, part borders in white, instrument
    outlines in colour. small: instrument numbers (0 = none); parts: the part labels."""
    fg = cv2.inRange(small, 1, 255)
    colours = _colour_map(lut, small)
    cv2.copyTo(cv2.addWeighted(rgb, 1.0 - alpha, colours, alpha, 0.0), fg, out)
    parts = cv2.medianBlur(np.ascontiguousarray(parts), 5)  # outlines of part regions, not of single noisy pixels
    part_edges = cv2.bitwise_and(_edges(parts), fg)
    part_edges = cv2.bitwise_and(part_edges, cv2.erode(fg, _KERNEL))  # inner lines only
    cv2.copyTo(np.full_like(rgb, 235), part_edges, out)
    cv2.copyTo(colours, cv2.bitwise_and(_edges(small), fg), out)


def _legend(img, rows, s):
    """Legend at the top-right corner: a colour swatch and a line of text per instrument. Returns its box."""
    if not rows:
        rows = [((128, 128, 128), 'no instruments')]
    font = 0.45 * s
    y = int(6 * s)
    width = max(_text_box(img, text, font)[0] for _, text in rows)
    x = y1 = img.shape[1]
    for colour, text in rows:
        w, h, base, _ = _text_box(img, text, font)
        x = img.shape[1] - width - h - int(14 * s)
        box = _text(img, text, (x + h + 6, y + h + 2), font)
        cv2.rectangle(img, (x, box[1] + 1), (x + h + 2, box[3] - 1), colour, -1)
        y = y1 = box[3] + 2
    return x, int(6 * s) - 2, img.shape[1], y1


def colorize(label_map, task='type'):
    """Label map -> RGB picture in the task's colour table (parts or type; binary = white)."""
    label_map = np.asarray(label_map)
    if task == 'parts':
        return _colour_map(_PART_LUT, label_map)
    if task == 'binary':
        return np.where((label_map == 1)[..., None], np.uint8(255), np.uint8(0)).repeat(3, axis=2)
    return _colour_map(_TYPE_LUT, label_map)


def contact_sheet(images, cols, labels=None, pad=4):
    """Tile RGB images into one picture, `cols` per row, each resized to the first one's size,
    with an optional caption drawn on top of each tile."""
    images = [np.asarray(im) for im in images]
    if not images:
        raise ValueError('contact_sheet needs at least one image')
    cols = max(1, min(int(cols), len(images)))
    h, w = images[0].shape[:2]
    rows = (len(images) + cols - 1) // cols
    sheet = np.full((rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, 3), 32, np.uint8)
    for i, im in enumerate(images):
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, axis=2)
        if im.shape[:2] != (h, w):
            im = cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA)
        tile = np.ascontiguousarray(im, dtype=np.uint8).copy()
        if labels is not None and i < len(labels) and labels[i]:
            _text(tile, str(labels[i]), (4, 4 + int(14 * _scale(tile.shape))), 0.4 * _scale(tile.shape))
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y:y + h, x:x + w] = tile
    return sheet


def save_png(path, rgb):
    """Write an RGB (HxWx3) or grey/label (HxW, uint8 or uint16) image as PNG, creating folders."""
    path = Path(path)
    img = np.asarray(rgb)
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img, dtype=np.uint8), cv2.COLOR_RGB2BGR)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ok = cv2.imwrite(str(path), img)
    except (OSError, cv2.error) as e:
        raise MffsegError(f'{path}: cannot write PNG: {e}') from e
    if not ok:
        raise MffsegError(f'{path}: cannot write PNG (unwritable folder or unsupported image)')
    return path


def load_rgb(path):
    """Read an image file as HxWx3 uint8 RGB; an unreadable file raises ImageFormatError."""
    path = Path(path)
    if not path.is_file():
        raise ImageFormatError(f'{path}: no such image file')
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageFormatError(f'{path}: not a readable image (OpenCV could not decode it)')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
