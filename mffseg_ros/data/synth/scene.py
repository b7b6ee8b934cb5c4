"""SceneGenerator: deterministic stereo endoscope frames with exact labels and 3-D tips.

Frame i belongs to episode i // episode_length (its tissue, tools, effects and canvas); within an
episode everything moves smoothly with i. Nothing depends on call order: frame(i) is a pure function
of (seed, i) and the constructor arguments."""
from collections import OrderedDict
from dataclasses import dataclass, field

import cv2
import numpy as np

from mffseg_ros.data.synth.effects import (
    CANVASES,
    Effects,
    apply_effects,
    canvas_mask,
    cast_shadows,
    specular_band,
    vignette_map,
)
from mffseg_ros.data.synth.instruments import Instrument, Wave
from mffseg_ros.data.synth.lab import bake_lab
from mffseg_ros.data.synth.render import render_instruments
from mffseg_ros.data.synth.rig import StereoRig
from mffseg_ros.data.synth.texture import DEPTH_DOWNSAMPLE, bake_tissue, smoke_field
from mffseg_ros.errors import DataError
from mffseg_ros.model.classes import PART_CLASPERS, PART_SHAFT, TASK_CLASSES

NUM_TYPES = len(TASK_CLASSES['type']) - 1
# EndoVis-like draw: "other" is rarer than the named da Vinci tools.
TYPE_WEIGHTS = np.array([1, 1, 1, 1, 1, 1, 0.5]) / 6.5
# Entry directions (angle in the image plane, y down): right, bottom, left, top; tools mostly come from the sides.
ENTRY_ANGLES = np.array([0.0, 0.5, 1.0, 1.5]) * np.pi
ENTRY_WEIGHTS = np.array([0.38, 0.14, 0.38, 0.10])
# Share of lab (non-tissue) backgrounds per style: suturing pads, phantoms, drapes, cavities.
BACKGROUND_STYLES = {'tissue': 0.0, 'mixed': 0.35, 'lab': 1.0}
TOUCH_PROBABILITY = 0.3  # episodes (with 2+ tools) whose first two tools aim at the same spot


@dataclass
class StereoFrame:
    """One rendered stereo pair. Labels are dicts with 'binary', 'parts', 'type' (uint8) and 'instance'
    (uint16); tips is a list of dicts: instance_id, type_id, xyz (left optical frame, metres), uv_left,
    uv_right (px), visible (the tip lands on its own clasper pixels in both eyes), visible_left/right.
    depth_left/right: HxW float32 metres of the nearest surface (tissue or tool)."""
    index: int
    rig: StereoRig
    left: np.ndarray
    right: np.ndarray
    labels_left: dict
    labels_right: dict
    tips: list
    depth_left: np.ndarray = field(repr=False, default=None)
    depth_right: np.ndarray = field(repr=False, default=None)


@dataclass
class _Episode:
    texture_id: int
    t0: float
    pan: tuple  # (start_x, start_y, Wave x, Wave y, flip_x, flip_y)
    instruments: list
    effects: Effects
    smoke_id: int


class SceneGenerator:
    """Procedural stereo surgical scenes through `rig` (a StereoRig).

    num_instruments: (min, max) per episode; types: type ids to draw from (1..7, default all);
    canvas: 'random' or one of effects.CANVASES; effects: 0..1 strength of blur, haze, glare, noise and
    colour jitter; episode_length: frames per episode; texture_pool: distinct backgrounds per seed (cached);
    background: 'tissue', 'lab' (pads, phantoms, drapes, cavities) or 'mixed'.
    Bad arguments raise DataError."""

    def __init__(self, rig=None, *, seed=0, num_instruments=(1, 3), types=None, canvas='random',
                 effects=1.0, episode_length=300, texture_pool=12, tissue_depth=(0.085, 0.16),
                 background='mixed'):
        self.rig = rig if rig is not None else StereoRig.endovis_like(scale=0.5)
        try:  # an int, (min, max), or "min,max" from a data spec string
            counts = str(num_instruments).split(',') if isinstance(num_instruments, str) else num_instruments
            lo, hi = (int(v) for v in ((counts, counts) if np.isscalar(counts) else counts))
            types = None if types is None else str(types).split(',') if isinstance(types, str) else types
            self.types = tuple(range(1, NUM_TYPES + 1)) if types is None else tuple(int(t) for t in types)
        except (TypeError, ValueError):
            raise DataError(f'synth scenes: num_instruments must be an int or (min, max) and types a list '
                            f'of ids, got {num_instruments!r} and {types!r}') from None
        if not 0 <= lo <= hi:
            raise DataError(f'synth scenes: num_instruments must be (min, max) with 0 <= min <= max, '
                            f'got {num_instruments!r}')
        self.num_instruments = (lo, hi)
        if not self.types or any(t < 1 or t > NUM_TYPES for t in self.types):
            raise DataError(f'synth scenes: types must be ids in 1..{NUM_TYPES}, got {types!r}')
        if canvas != 'random' and canvas not in CANVASES:
            raise DataError(f"synth scenes: canvas must be 'random' or one of {', '.join(CANVASES)}, "
                            f"got {canvas!r}")
        if background not in BACKGROUND_STYLES:
            raise DataError(f"synth scenes: background must be one of {', '.join(BACKGROUND_STYLES)}, "
                            f"got {background!r}")
        self.background = background
        if episode_length < 1:
            raise DataError(f'synth scenes: episode_length must be >= 1, got {episode_length}')
        self.seed, self.canvas, self.effects_strength = int(seed), canvas, float(effects)
        self.episode_length, self.texture_pool = int(episode_length), int(texture_pool)
        self.tissue_depth = tissue_depth
        h, w = self.rig.size
        # The tissue canvas holds the pan range and the right eye's disparity (tissue is never nearer than 5 cm).
        self._pan = (int(0.25 * w), int(0.25 * h))
        self._tissue_shape = (h + self._pan[1] + 2, w + self._pan[0] + int(np.ceil(self.rig.disparity(0.05))) + 4)
        # Tissue maps are smooth: they are computed on a grid 4x coarser (pixels 0, 4, 8...) and upsampled.
        self._coarse = (int(np.ceil((h - 1) / DEPTH_DOWNSAMPLE)) + 1, int(np.ceil((w - 1) / DEPTH_DOWNSAMPLE)) + 1)
        yy, xx = np.mgrid[0:self._coarse[0], 0:self._coarse[1]].astype(np.float32) * DEPTH_DOWNSAMPLE
        self._coarse_grid = (xx, yy)
        self._vignette_r2 = None
        self._vignettes = OrderedDict()
        self._textures = OrderedDict()
        self._smokes = {}
        self._noise_tile = None
        self._episodes = OrderedDict()

    # --- caches -------------------------------------------------------------------------------------
    def _texture(self, texture_id):
        tex = self._textures.get(texture_id)
        if tex is None:
            seed = [self.seed, 7919, texture_id]
            # Which pool slots are lab backgrounds: a fixed share, spread over the pool by a hash.
            lab = (texture_id * 0.618034) % 1.0 < BACKGROUND_STYLES[self.background]
            bake = bake_lab if lab else bake_tissue
            tex = bake(seed, *self._tissue_shape, depth=self.tissue_depth)
            self._textures[texture_id] = tex
            if len(self._textures) > self.texture_pool:
                self._textures.popitem(last=False)
        return tex

    def _smoke(self, smoke_id):
        if smoke_id not in self._smokes:
            self._smokes[smoke_id] = smoke_field([self.seed, 104729, smoke_id], *self._tissue_shape)
        return self._smokes[smoke_id]

    def _vignette(self, effects):
        if not effects.vignette:
            return None
        key = effects.vignette  # Effects.random rounds it to 2 decimals, so few maps serve all episodes
        if key not in self._vignettes:
            if self._vignette_r2 is None:
                h, w = self.rig.size
                yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
                self._vignette_r2 = ((xx - self.rig.cx) ** 2 + (yy - self.rig.cy) ** 2) / (0.41 * w * w)
            self._vignettes[key] = vignette_map(effects, self._vignette_r2)
            if len(self._vignettes) > 16:
                self._vignettes.popitem(last=False)
        return self._vignettes[key]

    def _noise(self):
        if self._noise_tile is None:
            h, w = self.rig.size
            rng = np.random.default_rng([self.seed, 15485863])
            self._noise_tile = rng.standard_normal((h + 32, w + 32, 3), dtype=np.float32)
        return self._noise_tile

    def episode(self, e):
        ep = self._episodes.get(e)
        if ep is None:
            ep = self._make_episode(e)
            self._episodes[e] = ep
            if len(self._episodes) > 64:
                self._episodes.popitem(last=False)
        return ep

    def _make_episode(self, e):
        rng = np.random.default_rng([self.seed, e])
        texture_id = int(rng.integers(self.texture_pool))
        tissue_depth = float(np.median(self._texture(texture_id).depth_small))
        n = int(rng.integers(self.num_instruments[0], self.num_instruments[1] + 1))
        weights = TYPE_WEIGHTS[np.array(self.types) - 1]
        types = rng.choice(self.types, size=n, p=weights / weights.sum())
        # Distinct entry sides (mostly left and right) while there are sides left, jittered by +-0.5 rad.
        sides = rng.choice(len(ENTRY_ANGLES), size=n, replace=n > len(ENTRY_ANGLES), p=ENTRY_WEIGHTS)
        instruments = [Instrument.random(rng, k + 1, int(types[k]),
                                         ENTRY_ANGLES[sides[k]] + rng.uniform(-0.5, 0.5), tissue_depth)
                       for k in range(n)]
        pan = (rng.uniform(0, self._pan[0]), rng.uniform(0, self._pan[1]),
               Wave(rng, periods=(150, 500), amplitude=0.5 * self._pan[0]),
               Wave(rng, periods=(150, 500), amplitude=0.5 * self._pan[1]),
               bool(rng.integers(2)), bool(rng.integers(2)))
        effects = Effects.random(rng, canvas=self.canvas, strength=self.effects_strength)
        t0 = float(rng.uniform(0, 1000))
        smoke_id = int(rng.integers(4))
        if n >= 2 and rng.random() < TOUCH_PROBABILITY:  # two tools working together: their jaws meet
            instruments[1].centre = instruments[0].centre + rng.normal(0, 0.003, 3)
        return _Episode(texture_id, t0, pan, instruments, effects, smoke_id)

    # --- rendering ----------------------------------------------------------------------------------
    def _pose(self, i):
        """(episode, t, [(instrument, capsules, tip xyz)]) of frame i: geometry only, no pixels."""
        if i < 0:
            raise IndexError(f'frame index must be >= 0, got {i}')
        ep = self.episode(i // self.episode_length)
        t = ep.t0 + i % self.episode_length
        return ep, t, [(inst, *inst.capsules(t)) for inst in ep.instruments]

    def tips_3d(self, i):
        """[(instance_id, type_id, xyz)] of frame i without rendering it (cheap)."""
        return [(inst.instance_id, inst.type_id, tuple(float(v) for v in tip)) for inst, _, tip in self._pose(i)[2]]

    def _view_to_canvas(self, ep, t):
        """2x3 affine from left-view pixels to tissue canvas pixels: a slow pan, and the episode's flips
        (four tissues out of each cached texture)."""
        sx, sy, wave_x, wave_y, flip_x, flip_y = ep.pan
        ox = float(np.clip(sx + wave_x(t), 0, self._pan[0]))
        oy = float(np.clip(sy + wave_y(t), 0, self._pan[1]))
        hc, wc = self._tissue_shape
        fx, fy = (-1.0 if flip_x else 1.0), (-1.0 if flip_y else 1.0)
        return np.float32([[fx, 0, (wc - 1 if flip_x else 0) + fx * ox],
                           [0, fy, (hc - 1 if flip_y else 0) + fy * oy]])

    def _render_eye(self, i, side, ep, t, posed):
        tex = self._texture(ep.texture_id)
        smoke = self._smoke(ep.smoke_id) if ep.effects.haze else None
        image, depth, eye_smoke = self._tissue(tex, side, self._view_to_canvas(ep, t), smoke)
        labels = {'parts': np.zeros(self.rig.size, np.uint8), 'type': np.zeros(self.rig.size, np.uint8),
                  'instance': np.zeros(self.rig.size, np.uint16)}
        specular_band(image, ep.effects)  # on the background only: tools pass in front of it
        render_instruments(self.rig, side, image, depth, labels, [(inst, caps) for inst, caps, _ in posed])
        cast_shadows(image, labels['parts'] > 0, ep.effects)
        rng = np.random.default_rng([self.seed, i, 31, side == 'right'])  # per eye: eyes render independently
        shift = self.rig.disparity(0.07) if side == 'right' else 0.0
        image = apply_effects(image, ep.effects, rng=rng, smoke=eye_smoke, smoke_shift=shift,
                              vignette=self._vignette(ep.effects), noise_tile=self._noise())
        mask = canvas_mask(ep.effects, *self.rig.size)
        if mask is not None:  # the endoscope's black canvas hides everything, labels included
            image[~mask] = ep.effects.canvas_grey
            for k in labels:
                labels[k][~mask] = 0
        labels['binary'] = (labels['parts'] > 0).astype(np.uint8)
        return image, labels, depth

    def frame(self, i):
        """The stereo frame number i (>= 0)."""
        ep, t, posed = self._pose(i)
        eyes = {side: self._render_eye(i, side, ep, t, posed) for side in ('left', 'right')}
        tips = [self._tip(inst, tip, eyes, caps) for inst, caps, tip in posed]
        return StereoFrame(index=int(i), rig=self.rig, left=eyes['left'][0], right=eyes['right'][0],
                           labels_left=eyes['left'][1], labels_right=eyes['right'][1], tips=tips,
                           depth_left=eyes['left'][2], depth_right=eyes['right'][2])

    def sample(self, i, side='left'):
        """One eye of frame i as a training sample (the CONTRACTS.md dict); same pixels as frame(i)."""
        if side not in ('left', 'right'):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        ep, t, posed = self._pose(i)
        image, labels, _ = self._render_eye(i, side, ep, t, posed)
        return dict(image=image, parts=labels['parts'], type=labels['type'], binary=labels['binary'],
                    instance=labels['instance'], name=f'synth_s{self.seed}_{i:07d}_{side}')

    def _tissue(self, tex, side, view_to_canvas, smoke):
        """Tissue colour, depth (HxW float32 m) and smoke density seen by one eye.

        The left eye sees canvas point view_to_canvas @ (u, v, 1) (a pan, maybe flipped). A right pixel
        u_r sees the tissue point whose left pixel u_l satisfies u_l - disparity(depth(u_l)) = u_r: a
        fixed point, solved on the coarse grid (depth is smooth: a few steps converge) and upsampled."""
        h, w = self.rig.size
        k = DEPTH_DOWNSAMPLE
        M = view_to_canvas
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # dst(u, v) = src(M @ (u, v, 1))
        if side == 'left':
            colour = cv2.warpAffine(tex.colour, M, (w, h), flags=flags, borderMode=cv2.BORDER_REFLECT)
            depth = cv2.warpAffine(tex.depth_small, M / k, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
            density = None if smoke is None else cv2.warpAffine(smoke, M, (w, h), flags=flags,
                                                                borderMode=cv2.BORDER_REFLECT)
            return colour, depth, density
        fb = self.rig.fx * self.rig.baseline
        xx, yy = self._coarse_grid
        canvas_y = M[1, 1] * yy + M[1, 2]
        u_left = xx
        for _ in range(4):
            canvas_x = M[0, 0] * u_left + M[0, 2]
            z = cv2.remap(tex.depth_small, canvas_x / k, canvas_y / k, cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
            u_left = xx + fb / z
        coarse_maps = cv2.merge([M[0, 0] * u_left + M[0, 2], canvas_y, z]).astype(np.float32)
        up = np.float32([[1 / k, 0, 0], [0, 1 / k, 0]])  # full(u, v) = coarse(u / k, v / k)
        full = cv2.warpAffine(coarse_maps, up, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
        map_x, map_y, depth = cv2.split(full)
        colour = cv2.remap(tex.colour, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        density = None if smoke is None else cv2.remap(smoke, map_x, map_y, cv2.INTER_LINEAR,
                                                         borderMode=cv2.BORDER_REFLECT)
        return colour, np.ascontiguousarray(depth), density

    def _tip(self, inst, xyz, eyes, capsules):
        out = dict(instance_id=inst.instance_id, type_id=inst.type_id, xyz=tuple(float(v) for v in xyz))
        shaft = next(c for c in capsules if c.part == PART_SHAFT)  # its axis: trocar -> wrist
        axis = np.asarray(shaft.b, np.float64) - np.asarray(shaft.a, np.float64)
        out['axis'] = tuple(float(v) for v in axis / np.linalg.norm(axis))
        visible = {}
        for side in ('left', 'right'):
            u, v = self.rig.project(xyz, side)
            out[f'uv_{side}'] = (float(u), float(v))
            labels = eyes[side][1]
            iu, iv = int(round(u)), int(round(v))
            inside = 0 <= iu < self.rig.width and 0 <= iv < self.rig.height
            visible[side] = bool(inside and xyz[2] > 0 and labels['parts'][iv, iu] == PART_CLASPERS
                                 and labels['instance'][iv, iu] == inst.instance_id)
            out[f'visible_{side}'] = visible[side]
        out['visible'] = visible['left'] and visible['right']
        return out
