"""Preview and benchmark the generator: `python -m mffseg_ros.data.synth --out results/synth`.

Writes a contact sheet (left image over its parts overlay, tips marked: green = visible in both eyes)
and prints the time per stereo pair."""
import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mffseg_ros.data.synth import SceneGenerator, StereoRig
from mffseg_ros.errors import MffsegError
from mffseg_ros.model.classes import PART_COLORS
from mffseg_ros.sizes import parse_size


def _size(text):
    return parse_size(text, what='--size', minimum=16, error=argparse.ArgumentTypeError)


def contact_tile(frame):
    """Left image (tips marked) above its parts overlay."""
    image = frame.left.copy()
    marker = max(6, frame.rig.width // 50)
    for tip in frame.tips:
        u, v = (int(round(c)) for c in tip['uv_left'])
        cv2.drawMarker(image, (u, v), (0, 255, 0) if tip['visible'] else (255, 255, 0), cv2.MARKER_CROSS,
                       marker, max(1, marker // 6))
    parts = np.array(PART_COLORS, np.uint8)[frame.labels_left['parts']]
    overlay = np.where(frame.labels_left['binary'][..., None] > 0, (image // 2 + parts // 2), image)
    return np.concatenate([image, overlay.astype(np.uint8)], 0)


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m mffseg_ros.data.synth', description=__doc__.split('\n')[0])
    p.add_argument('--out', type=Path, default=Path('results/synth'), help='folder for the PNGs')
    p.add_argument('--frames', type=int, default=12, help='frames to render (default 12)')
    p.add_argument('--size', type=_size, default=(512, 640), help='HxW (default 512x640)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--episode-length', type=int, default=1,
                   help='frames per scene; 1 (default) shows variety, e.g. 100 shows motion')
    p.add_argument('--stereo', action='store_true', help='also write each frame as a left|right PNG')
    p.add_argument('--threads', type=int, default=1, help='OpenCV threads (default 1: one-core timing)')
    p.add_argument('--repeat', type=int, default=1,
                   help='time each frame this many more times and keep its best (steadier on a busy machine)')
    args = p.parse_args(argv)
    cv2.setNumThreads(args.threads)
    try:
        h, w = args.size
        gen = SceneGenerator(StereoRig.endovis_like().resized(w, h), seed=args.seed,
                             episode_length=args.episode_length)
        args.out.mkdir(parents=True, exist_ok=True)
        tiles, times = [], []
        for i in tqdm(range(args.frames), desc='synth frames', unit='pair'):
            start = time.process_time()
            frame = gen.frame(i)
            times.append(time.process_time() - start)
            for _ in range(max(0, args.repeat)):  # same frame again: textures are cached now
                start = time.process_time()
                gen.frame(i)
                times[-1] = min(times[-1], time.process_time() - start)
            tiles.append(contact_tile(frame))
            if args.stereo:
                pair = np.concatenate([frame.left, frame.right], 1)
                cv2.imwrite(str(args.out / f'stereo_{i:05d}.png'), cv2.cvtColor(pair, cv2.COLOR_RGB2BGR))
        cols = min(6, len(tiles))
        tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % cols)
        sheet = np.concatenate([np.concatenate(tiles[r:r + cols], 1) for r in range(0, len(tiles), cols)], 0)
        sheet_path = args.out / 'synth_contact_sheet.png'
        cv2.imwrite(str(sheet_path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    except MffsegError as e:
        print(f'synth: error: {e}', file=sys.stderr)
        return 2
    except OSError as e:
        print(f'synth: error: cannot write to {args.out}: {e}', file=sys.stderr)
        return 2
    warm = times if args.repeat > 0 else times[min(len(times) - 1, 12):]  # early frames bake textures
    print(f'wrote {sheet_path}')
    print(f'{w}x{h} stereo pair: {1000 * np.median(warm):.1f} ms CPU median, {1000 * np.percentile(warm, 90):.1f} '
          f'ms 90th percentile (textures cached); {args.threads} OpenCV thread(s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
