"""Procedural tissue: baked colour (with wet speculars, vessels, light falloff) plus a depth field.

Feature sizes are relative to the canvas width, so a texture looks the same at any resolution."""
from dataclasses import dataclass

import cv2
import numpy as np

# Linear RGB (0..1) tissue tones; every texture jitters and mixes them.
FLESH = (0.80, 0.42, 0.40)
MUSCLE = (0.55, 0.13, 0.15)
ORGAN = (0.40, 0.14, 0.24)
FAT = (0.86, 0.72, 0.46)
MEMBRANE = (0.90, 0.74, 0.72)
BLOOD = (0.30, 0.02, 0.03)
VESSEL_TONES = ((0.45, 0.04, 0.07), (0.55, 0.08, 0.10), (0.32, 0.10, 0.28))
DEPTH_DOWNSAMPLE = 4  # depth is smooth: store it at 1/4 resolution and let cv2.remap interpolate


def fractal_noise(rng, height, width, cells=(3, 6, 12, 24), falloff=0.55):
    """Zero-mean, unit-std value noise with octaves of `cells` random values across the width.

    Built as a pyramid (upscale the sum, add the next octave) so there is one full-size resize."""
    acc = None
    amp = 1.0
    for c in sorted(cells):
        gw = max(2, int(c))
        gh = max(2, int(round(c * height / width)))
        octave = rng.standard_normal((gh, gw)).astype(np.float32) * amp
        acc = octave if acc is None else cv2.resize(acc, (gw, gh), interpolation=cv2.INTER_CUBIC) + octave
        amp *= falloff
    out = cv2.resize(acc, (width, height), interpolation=cv2.INTER_CUBIC)
    out -= out.mean()
    return out / (out.std() + 1e-6)


def _jitter(rng, colour, amount=0.08):
    return np.clip(np.asarray(colour, np.float32) * (1 + rng.uniform(-amount, amount, 3)), 0, 1).astype(np.float32)


def _smoothstep(x, lo, hi):
    t = np.clip((x - lo) / (hi - lo), 0, 1)
    return t * t * (3 - 2 * t)


def _draw_vessels(rng, height, width, count, thickness=(0.8, 2.6), steps=(15, 60), strength=1.0):
    """Branching random-walk polylines (thickness in px at 640 wide); returns a float mask (0..1)
    and a per-pixel tone index map."""
    mask = np.zeros((height, width), np.uint8)
    tone = np.zeros((height, width), np.uint8)
    step = max(2.0, width / 90)
    stack = [(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0, 2 * np.pi),
              rng.uniform(*thickness) * width / 640, int(rng.integers(len(VESSEL_TONES))))
             for _ in range(count)]
    branches = 3 * count  # a budget, so branching cannot explode
    while stack:
        x, y, heading, thick, t = stack.pop()
        pts = [(x, y)]
        for _ in range(int(rng.integers(*steps))):
            heading += rng.normal(0, 0.35)
            x, y = x + step * np.cos(heading), y + step * np.sin(heading)
            pts.append((x, y))
            if thick > 0.7 * width / 640 and rng.random() < 0.05 and branches > 0:
                branches -= 1
                stack.append((x, y, heading + rng.choice((-1, 1)) * rng.uniform(0.5, 1.2), thick * 0.6, t))
        poly = np.round(np.array(pts) * 16).astype(np.int32)  # 4 fractional bits for anti-aliasing
        th = max(1, int(round(thick)))
        cv2.polylines(mask, [poly], False, int(255 * strength), th, cv2.LINE_AA, shift=4)
        cv2.polylines(tone, [poly], False, t + 1, th, cv2.LINE_8, shift=4)
    return mask.astype(np.float32) / 255, tone


@dataclass
class TissueTexture:
    """colour: HxWx3 uint8 RGB with shading baked in; depth_small: (H/4)x(W/4) float32 metres."""
    colour: np.ndarray
    depth_small: np.ndarray

    @property
    def shape(self):
        return self.colour.shape[:2]


def bake_tissue(seed, height, width, *, depth=(0.085, 0.16)):
    """One tissue canvas. `depth` is the range of the mean tissue distance (metres)."""
    rng = np.random.default_rng(seed)
    h, w = int(height), int(width)
    # Surface geometry: tilted plane plus smooth folds (camera looks roughly at the tissue).
    yy, xx = np.mgrid[0:h:DEPTH_DOWNSAMPLE, 0:w:DEPTH_DOWNSAMPLE].astype(np.float32)
    xn, yn = (xx / w - 0.5) * 1.2, (yy / w - 0.5 * h / w) * 1.2
    z0 = rng.uniform(*depth)
    folds = fractal_noise(rng, xx.shape[0], xx.shape[1], cells=(2, 4), falloff=0.5)
    depth_small = z0 * (1 + rng.uniform(-0.35, 0.35) * xn + rng.uniform(-0.35, 0.35) * yn) + 0.012 * folds
    depth_small = np.clip(depth_small, 0.05, 0.3).astype(np.float32)

    # Albedo: mixtures of tissue tones driven by independent noise fields.
    n1 = fractal_noise(rng, h, w, cells=(3, 6, 12))
    n2 = fractal_noise(rng, h, w, cells=(2, 5, 10))
    n3 = fractal_noise(rng, h, w, cells=(2, 4, 8))
    flesh, muscle = _jitter(rng, FLESH), _jitter(rng, MUSCLE)
    albedo = flesh + (muscle - flesh) * _smoothstep(n1, -0.6, 1.0)[..., None]
    fat_amount = rng.uniform(0.0, 0.6)
    albedo += (_jitter(rng, FAT) - albedo) * (fat_amount * _smoothstep(n2, 0.6, 1.4))[..., None]
    albedo += (_jitter(rng, ORGAN) - albedo) * (rng.uniform(0, 0.8) * _smoothstep(n3, 0.3, 1.2))[..., None]
    albedo += (_jitter(rng, MEMBRANE) - albedo) * (rng.uniform(0.0, 0.35) * _smoothstep(-n2, 0.5, 1.5))[..., None]
    # Fine fibres: stretched noise rotated to a random direction.
    fib = fractal_noise(rng, h, w, cells=(40, 80), falloff=0.6)
    fib = cv2.resize(fib[:, : max(2, w // 6)], (w, h), interpolation=cv2.INTER_LINEAR)
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(0, 180), 1.0)
    fib = cv2.warpAffine(fib, rot, (w, h), borderMode=cv2.BORDER_REFLECT)
    grain = fractal_noise(rng, h, w, cells=(60, 120), falloff=0.7)
    albedo *= (1 + 0.035 * fib + 0.025 * grain)[..., None]

    vessels, tone = _draw_vessels(rng, h, w, int(rng.integers(3, 14)))
    # Capillaries: many short, faint, thin ones (they never branch: thinner than the branching limit).
    capillaries, _ = _draw_vessels(rng, h, w, int(rng.integers(10, 50)), thickness=(0.4, 0.7), steps=(6, 25),
                                   strength=rng.uniform(0.3, 0.6))
    major = vessels
    vessels = np.maximum(vessels, capillaries)
    tone[(tone == 0) & (capillaries > 0)] = 1
    vessels = cv2.GaussianBlur(vessels, (0, 0), max(0.5, w / 1280))
    tone_rgb = np.array(((0, 0, 0),) + VESSEL_TONES, np.float32)[tone]
    tone_rgb = np.where(tone[..., None] > 0, tone_rgb, MUSCLE)
    albedo += (tone_rgb - albedo) * (rng.uniform(0.5, 0.9) * vessels)[..., None]

    # Blood: dark red pools in some tissues (wet: the speculars below catch them too).
    if rng.random() < 0.35:
        pools = _smoothstep(fractal_noise(rng, h, w, cells=(3, 6, 12)), rng.uniform(1.0, 1.8), 2.4)
        albedo += (_jitter(rng, BLOOD) - albedo) * pools[..., None]
    # Shading with the light at the camera: diffuse from the bump normal, wet speculars, falloff.
    bump = n1 + 0.25 * fractal_noise(rng, h, w, cells=(8, 16, 32), falloff=0.5) + 0.2 * major
    gy, gx = np.gradient(cv2.GaussianBlur(bump, (0, 0), max(1.0, w / 300)))
    k = rng.uniform(5, 14) * w / 640
    facing = 1 / np.sqrt(1 + (k * gx) ** 2 + (k * gy) ** 2)
    wet = _smoothstep(fractal_noise(rng, h, w, cells=(4, 8, 16)), rng.uniform(0.0, 1.0), 2.0)
    spec = wet * facing ** rng.uniform(150, 400) * rng.uniform(0.6, 1.3)
    depth_full = cv2.resize(depth_small, (w, h), interpolation=cv2.INTER_LINEAR)
    falloff = np.clip((z0 / depth_full) ** 2, 0.4, 1.6)
    lit = albedo * (0.35 + 0.75 * facing)[..., None] * falloff[..., None] + spec[..., None] * (0.95, 0.93, 0.9)
    colour = (np.clip(lit, 0, 1) ** (1 / 1.15) * 255 + 0.5).astype(np.uint8)
    return TissueTexture(colour=colour, depth_small=depth_small)


def smoke_field(seed, height, width):
    """Low-frequency density (0..1, uint8 scaled) for haze and smoke."""
    n = fractal_noise(np.random.default_rng(seed), height, width, cells=(2, 4, 8), falloff=0.6)
    return (np.clip(_smoothstep(n, -1.0, 1.8), 0, 1) * 255).astype(np.uint8)
