"""Camera and scene effects drawn once per episode and applied identically to both eyes."""
from dataclasses import dataclass

import cv2
import numpy as np

# Field stops and black borders: a round stop, black side bars, an octagon (cut corners) and an
# ellipse wider than the frame (black corners only).
CANVASES = ('full', 'circle', 'box', 'octagon', 'ellipse')
CANVAS_WEIGHTS = (0.45, 0.2, 0.15, 0.1, 0.1)


@dataclass(frozen=True)
class Effects:
    gains: tuple = (1.0, 1.0, 1.0)  # per-channel colour jitter
    gamma: float = 1.0
    vignette: float = 0.0  # darkening at the corners, 0..1
    blur_sigma: float = 0.0  # relative to a 640-px-wide image
    haze: float = 0.0  # max smoke opacity
    smoke_rgb: tuple = (0.85, 0.82, 0.80)
    glare: float = 0.0  # peak added brightness of a soft saturating blob
    glare_at: tuple = (0.5, 0.5)  # normalised image position
    glare_size: float = 0.2  # normalised radius
    noise: float = 0.0  # sensor noise std (0..255 units)
    shadow: float = 0.0  # darkening of tissue under the tools (the light sits beside the lens)
    shadow_offset: tuple = (0.0, 0.0)  # normalised shift of the shadow from the tool
    canvas: str = 'full'
    canvas_params: tuple = ()
    canvas_grey: int = 0  # the black canvas is rarely 0: sensor black level
    band: float = 0.0  # peak gain of a bright specular band on the background (a lit, wet phantom rim)
    exposure: float = 1.0  # global gain before gamma (under/over-exposed frames clip)
    fog: float = 0.0  # lens fog: a veil of the blurred frame and white, 0..1
    motion: tuple = (0.0, 0.0)  # camera motion blur: length (px at 640 wide), direction (radians)
    band_params: tuple = (1.0, 0.0, 0.05)  # (side: +-1 = bottom/top, tilt, normalised half-thickness)

    @classmethod
    def random(cls, rng, *, canvas='random', strength=1.0):
        """Episode effects; `strength` 0 gives a clean frame, 1 the training variety."""
        on = lambda p: rng.random() < p * strength
        if canvas == 'random':
            canvas = str(rng.choice(CANVASES, p=CANVAS_WEIGHTS))
        if canvas not in CANVASES:
            raise ValueError(f'canvas must be one of {CANVASES} or "random", got {canvas!r}')
        params = ()
        if canvas == 'circle':
            params = (rng.uniform(0.48, 0.6), rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03))  # radius / width
        elif canvas == 'box':
            params = tuple(rng.uniform(0.0, 0.08, 4))
        elif canvas == 'octagon':
            params = (rng.uniform(0.1, 0.3), rng.uniform(0.0, 0.05))  # corner cut, side bars (of width)
        elif canvas == 'ellipse':
            params = (rng.uniform(0.52, 0.62), rng.uniform(0.55, 0.68))  # semi-axes / width, / height
        s = strength
        angle = rng.uniform(0, 2 * np.pi)
        # White balance: usually close, sometimes clearly warm or cool (red and blue gains opposed).
        balance = rng.uniform(-0.25, 0.25) * s if on(0.3) else 0.0
        gains = 1 + rng.uniform(-0.12, 0.12, 3) * s + np.array([balance, 0.0, -balance])
        return cls(gains=tuple(float(g) for g in gains), gamma=float(1 + rng.uniform(-0.2, 0.2) * s),
                   vignette=round(float(rng.uniform(0.1, 0.6)), 2),  # 2 decimals: a few cached maps serve all
                   # Optics are never pixel-sharp (this also anti-aliases the tool edges); sometimes defocus.
                   blur_sigma=float(rng.uniform(1.2, 3.0) if on(0.3) else rng.uniform(0.5, 0.9) * s),
                   haze=float(rng.uniform(0.15, 0.6)) if on(0.2) else 0.0,
                   smoke_rgb=tuple(rng.uniform(0.7, 0.95) * (1 + rng.uniform(-0.05, 0.05, 3))),
                   glare=float(rng.uniform(0.25, 0.7)) if on(0.2) else 0.0,
                   glare_at=tuple(rng.uniform(0.2, 0.8, 2)), glare_size=float(rng.uniform(0.06, 0.22)),
                   noise=float(rng.uniform(1.0, 6.0)) if on(0.5) else 0.0,
                   shadow=float(rng.uniform(0.25, 0.6) * s),
                   shadow_offset=tuple(rng.uniform(0.004, 0.02) * np.array([np.cos(angle), np.sin(angle)])),
                   canvas=canvas, canvas_params=params, canvas_grey=int(rng.integers(0, 14)),
                   # rare and rarely saturating: over-exposed metal is white too, and must stay a tool
                   band=float(rng.uniform(0.3, 0.7)) if on(0.08) else 0.0,
                   band_params=(float(rng.choice((-1.0, 1.0))), float(rng.uniform(-0.15, 0.15)),
                                float(rng.uniform(0.02, 0.08))),
                   exposure=float(np.exp(rng.uniform(-0.45, 0.35) * s)),
                   fog=float(rng.uniform(0.15, 0.5)) if on(0.1) else 0.0,
                   motion=(float(rng.uniform(3, 14)), float(rng.uniform(0, np.pi))) if on(0.15) else (0.0, 0.0))


def canvas_mask(effects, height, width):
    """Boolean HxW: True where the endoscope sees (black elsewhere), or None for a full frame."""
    if effects.canvas == 'full':
        return None
    mask = np.zeros((height, width), np.uint8)
    if effects.canvas == 'circle':
        r, dx, dy = effects.canvas_params
        centre = (int(round(width * (0.5 + dx) * 16)), int(round(height * (0.5 + dy) * 16)))
        cv2.circle(mask, centre, int(round(r * width * 16)), 1, -1, cv2.LINE_8, shift=4)
    elif effects.canvas == 'box':
        left, right, top, bottom = effects.canvas_params
        mask[int(top * height):height - int(bottom * height), int(left * width):width - int(right * width)] = 1
    elif effects.canvas == 'octagon':
        cut, bar = (v * width for v in effects.canvas_params)
        x0, x1 = bar, width - bar
        pts = [(x0 + cut, 0), (x1 - cut, 0), (x1, cut), (x1, height - cut), (x1 - cut, height), (x0 + cut, height),
               (x0, height - cut), (x0, cut)]
        cv2.fillConvexPoly(mask, np.round(np.array(pts) * 16).astype(np.int32), 1, cv2.LINE_8, shift=4)
    else:
        ax, ay = effects.canvas_params
        cv2.ellipse(mask, (width * 8, height * 8), (int(ax * width * 16), int(ay * height * 16)), 0, 0, 360, 1, -1,
                    cv2.LINE_8, shift=4)
    return mask.astype(bool)


def specular_band(image, effects):
    """Add a bright, saturating band near the bottom or top border to a background, in place."""
    if not effects.band:
        return
    h, w = image.shape[:2]
    side, tilt, half = effects.band_params
    sw, sh = max(8, w // 8), max(8, h // 8)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    centre = (0.5 + side * (0.5 - 1.5 * half)) + tilt * (xx / sw - 0.5)
    d = (yy / sh - centre) / half
    blob = (255 * effects.band) * np.exp(-0.5 * d * d) * (0.7 + 0.3 * np.cos(xx / sw * 3 + tilt * 20))
    blob = np.clip(cv2.resize(blob, (w, h), interpolation=cv2.INTER_LINEAR), 0, 255).astype(np.uint8)
    image[:] = cv2.add(image, cv2.merge([blob] * 3))


def vignette_map(effects, r2):
    """HxWx3 uint8 gain (255 = 1) darkening the corners; r2 is the squared normalised radius."""
    gain = 1 - effects.vignette * np.minimum(r2, 1.5)
    return cv2.merge([np.clip(gain * 255 + 0.5, 0, 255).astype(np.uint8)] * 3)


def cast_shadows(image, tool_mask, effects):
    """Darken tissue (not tools) under a soft, shifted copy of the tools' silhouette, in place."""
    if not effects.shadow or not tool_mask.any():
        return
    h, w = tool_mask.shape
    sw, sh = max(4, w // 4), max(4, h // 4)  # blur at 1/4 resolution: the shadow is soft anyway
    small = cv2.resize(tool_mask.astype(np.uint8) * 255, (sw, sh), interpolation=cv2.INTER_AREA)
    dx, dy = effects.shadow_offset
    small = cv2.warpAffine(small, np.float32([[1, 0, dx * sw], [0, 1, dy * sw]]), (sw, sh))
    small = cv2.GaussianBlur(small, (0, 0), max(0.8, 0.012 * sw))
    shade = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    gain = np.where(tool_mask, np.float32(1), 1 - (effects.shadow / 255) * shade)
    image[:] = cv2.multiply(image, cv2.merge([gain] * 3), dtype=cv2.CV_8U)


def apply_effects(image, effects, *, rng, smoke, smoke_shift, vignette, noise_tile):
    """Return the finished uint8 frame (uint8 cv2 arithmetic: cheap enough for on-the-fly data).
    smoke: HxW uint8 density seen by this eye; smoke_shift: this eye's disparity of the smoke (px);
    vignette: from vignette_map or None; noise_tile: float32 >= HxWx3, std 1."""
    h, w = image.shape[:2]
    out = image if vignette is None else cv2.multiply(image, vignette, scale=1 / 255)
    if effects.haze:
        alpha = (smoke.astype(np.float32) * (effects.haze / 255))[..., None]
        mixed = out * (1 - alpha) + np.asarray(effects.smoke_rgb, np.float32) * 255 * alpha
        out = np.clip(mixed, 0, 255).astype(np.uint8)
    if effects.glare:
        gx, gy = effects.glare_at
        small_w, small_h = max(8, w // 8), max(8, h // 8)
        yy, xx = np.mgrid[0:small_h, 0:small_w].astype(np.float32)
        d2 = ((xx / small_w - gx - smoke_shift / w) ** 2 + ((yy / small_h - gy) * h / w) ** 2)
        blob = (255 * effects.glare) * np.exp(-d2 / (2 * effects.glare_size ** 2))
        blob = np.clip(cv2.resize(blob, (w, h), interpolation=cv2.INTER_LINEAR), 0, 255).astype(np.uint8)
        out = cv2.add(out, cv2.merge([blob] * 3))
    if effects.blur_sigma:
        out = cv2.GaussianBlur(out, (0, 0), effects.blur_sigma * w / 640)
    if effects.motion[0]:
        out = cv2.filter2D(out, -1, motion_kernel(effects.motion[0] * w / 640, effects.motion[1]),
                           borderType=cv2.BORDER_REFLECT)
    if effects.fog:
        veil = cv2.GaussianBlur(out, (0, 0), 0.03 * w)  # fog scatters light over large distances
        veil = cv2.addWeighted(veil, 0.6, np.full_like(out, 230), 0.4, 0.0)
        out = cv2.addWeighted(out, 1 - effects.fog, veil, effects.fog, 0.0)
    if effects.noise:
        oy, ox = rng.integers(0, noise_tile.shape[0] - h + 1), rng.integers(0, noise_tile.shape[1] - w + 1)
        out = cv2.addWeighted(out, 1.0, noise_tile[oy:oy + h, ox:ox + w], effects.noise, 0.0, dtype=cv2.CV_8U)
    return cv2.LUT(out, colour_lut(effects.gains, effects.gamma, effects.exposure))


def motion_kernel(length, angle):
    """Normalised line kernel of `length` px (>= 1) along `angle` (radians)."""
    n = max(3, int(np.ceil(length)) | 1)
    k = np.zeros((n, n), np.float32)
    c, d = (n - 1) / 2, (length - 1) / 2
    p0 = (c - d * np.cos(angle), c - d * np.sin(angle))
    p1 = (c + d * np.cos(angle), c + d * np.sin(angle))
    cv2.line(k, tuple(int(round(v * 16)) for v in p0), tuple(int(round(v * 16)) for v in p1), 1.0, 1,
             cv2.LINE_AA, shift=4)
    return k / max(k.sum(), 1e-6)


def colour_lut(gains, gamma, exposure=1.0):
    """256x1x3 uint8 table applying exposure and per-channel gains (white balance), then gamma."""
    x = np.arange(256, dtype=np.float32)[:, None] / 255 * np.asarray(gains, np.float32) * np.float32(exposure)
    return (np.clip(x, 0, 1) ** gamma * 255 + 0.5).astype(np.uint8).reshape(256, 1, 3)
