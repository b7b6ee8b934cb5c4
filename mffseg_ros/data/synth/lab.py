"""Non-tissue backgrounds of robotics labs: silicone and foam suturing pads with printing, coloured
phantoms, drapes and dark cavities. Real dVRK / da Vinci bench footage shows these far more often than
tissue, and a model that only ever saw tissue calls their dark or bright regions instrument.

Each bake returns a TissueTexture (colour + smooth depth) like the tissue bake, so the scene generator
treats both alike (pans, flips, stereo disparity)."""
import cv2
import numpy as np

from mffseg_ros.data.synth.texture import DEPTH_DOWNSAMPLE, TissueTexture, fractal_noise

LAB_KINDS = ('pad', 'foam', 'phantom', 'drape', 'cavity')
LAB_WEIGHTS = (0.3, 0.15, 0.25, 0.15, 0.15)
PAD_TONES = ((0.93, 0.80, 0.76), (0.95, 0.93, 0.90), (0.90, 0.62, 0.60), (0.86, 0.74, 0.60))
FOAM_TONES = ((0.88, 0.80, 0.45), (0.70, 0.72, 0.74), (0.92, 0.92, 0.90), (0.35, 0.36, 0.40))
PHANTOM_TONES = ((0.80, 0.20, 0.22), (0.25, 0.60, 0.30), (0.20, 0.35, 0.75), (0.90, 0.75, 0.25),
                 (0.85, 0.45, 0.60), (0.60, 0.45, 0.35))
DRAPE_TONES = ((0.20, 0.40, 0.65), (0.25, 0.55, 0.45), (0.30, 0.30, 0.35))
INK_TONES = ((0.10, 0.10, 0.12), (0.15, 0.20, 0.55), (0.55, 0.12, 0.12))


def _printing(rng, h, w):
    """Suturing-pad printing: a grid or rows of dots and dashes, target circles, and incision lines."""
    ink = np.zeros((h, w), np.uint8)
    pitch = rng.uniform(0.05, 0.14) * w
    thick = max(1, int(round(rng.uniform(0.8, 2.5) * w / 640)))
    style = rng.integers(3)
    if style == 0:  # grid
        for x in np.arange(rng.uniform(0, pitch), w, pitch):
            cv2.line(ink, (int(x), 0), (int(x), h), 255, thick, cv2.LINE_AA)
        for y in np.arange(rng.uniform(0, pitch), h, pitch):
            cv2.line(ink, (0, int(y)), (w, int(y)), 255, thick, cv2.LINE_AA)
    elif style == 1:  # dot rows (suture targets)
        r = max(1, int(pitch * rng.uniform(0.05, 0.12)))
        for y in np.arange(rng.uniform(0, pitch), h, pitch):
            for x in np.arange(rng.uniform(0, pitch), w, pitch):
                cv2.circle(ink, (int(x), int(y)), r, 255, -1, cv2.LINE_AA)
    else:  # dashed lines along a direction
        for y in np.arange(rng.uniform(0, pitch), h, pitch):
            for x in np.arange(0, w, pitch * 0.5):
                cv2.line(ink, (int(x), int(y)), (int(x + pitch * 0.3), int(y)), 255, thick, cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 4))):  # target circles
        c = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        cv2.circle(ink, c, int(rng.uniform(0.03, 0.12) * w), 255, thick, cv2.LINE_AA)
    if rng.random() < 0.3:  # rotate the print
        rot = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-40, 40), 1.0)
        ink = cv2.warpAffine(ink, rot, (w, h), borderMode=cv2.BORDER_REFLECT)
    cut = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(0, 4))):  # incisions: dark gaps with a red-ish inside
        p = rng.uniform(0, 1, 2) * (w, h)
        d = rng.uniform(0.1, 0.35) * w * np.array([np.cos(a := rng.uniform(0, np.pi)), np.sin(a)])
        cv2.line(cut, tuple(int(v) for v in p), tuple(int(v) for v in p + d), 255,
                 max(1, int(rng.uniform(1.5, 4) * w / 640)), cv2.LINE_AA)
    return ink.astype(np.float32) / 255, cut.astype(np.float32) / 255


def _albedo(rng, kind, h, w):
    tone = lambda tones: np.asarray(tones[rng.integers(len(tones))], np.float32) * rng.uniform(0.85, 1.1, 3)
    n = fractal_noise(rng, h, w, cells=(3, 6, 12))
    if kind == 'pad':
        albedo = np.broadcast_to(tone(PAD_TONES), (h, w, 3)) * (1 + 0.03 * n)[..., None]
        ink, cut = _printing(rng, h, w)
        albedo = albedo + (tone(INK_TONES) - albedo) * (ink * rng.uniform(0.5, 0.95))[..., None]
        albedo = albedo + (np.float32((0.45, 0.10, 0.10)) - albedo) * cut[..., None]
        return albedo, 0.3
    if kind == 'foam':
        pores = fractal_noise(rng, h, w, cells=(80, 160), falloff=0.8)
        albedo = tone(FOAM_TONES) * (1 + 0.05 * n + 0.18 * np.clip(pores, -2, 0.5))[..., None]
        return albedo, 0.05
    if kind == 'phantom':  # two or three coloured parts (organ models) with soft borders
        a, b = tone(PHANTOM_TONES), tone(PHANTOM_TONES)
        m = cv2.GaussianBlur((n > rng.uniform(-0.5, 0.5)).astype(np.float32), (0, 0), max(1.0, w / 200))
        albedo = a + (b - a) * m[..., None]
        return albedo * (1 + 0.04 * fractal_noise(rng, h, w, cells=(10, 20)))[..., None], 0.7
    if kind == 'drape':  # cloth: fine weave and big folds (the folds are in the bump map)
        weave = np.sin(np.arange(w, dtype=np.float32) * rng.uniform(0.6, 1.4))[None, :]
        albedo = tone(DRAPE_TONES) * (1 + 0.05 * n + 0.04 * weave)[..., None]
        return albedo, 0.1
    # cavity: a dark, far, mostly unlit space with a faint structure
    albedo = np.broadcast_to(np.float32((0.08, 0.05, 0.05)) * rng.uniform(0.3, 1.2), (h, w, 3)) \
        * (1 + 0.3 * n)[..., None]
    return albedo, 0.2


def bake_lab(seed, height, width, *, kind=None, depth=(0.085, 0.16)):
    """One lab background canvas; `kind` one of LAB_KINDS (default: drawn from the seed)."""
    rng = np.random.default_rng(seed)
    h, w = int(height), int(width)
    if kind is None:
        kind = str(rng.choice(LAB_KINDS, p=LAB_WEIGHTS))
    yy, xx = np.mgrid[0:h:DEPTH_DOWNSAMPLE, 0:w:DEPTH_DOWNSAMPLE].astype(np.float32)
    xn, yn = (xx / w - 0.5) * 1.2, (yy / w - 0.5 * h / w) * 1.2
    z0 = rng.uniform(*depth) * (1.6 if kind == 'cavity' else 1.0)
    folds = fractal_noise(rng, xx.shape[0], xx.shape[1], cells=(2, 3), falloff=0.5)
    fold_depth = 0.02 if kind == 'drape' else 0.004
    depth_small = z0 * (1 + rng.uniform(-0.4, 0.4) * xn + rng.uniform(-0.4, 0.4) * yn) + fold_depth * folds
    depth_small = np.clip(depth_small, 0.05, 0.3).astype(np.float32)
    albedo, gloss = _albedo(rng, kind, h, w)
    bump = cv2.resize(folds, (w, h), interpolation=cv2.INTER_CUBIC) * (4.0 if kind == 'drape' else 1.0)
    bump = bump + 0.15 * fractal_noise(rng, h, w, cells=(8, 16))
    gy, gx = np.gradient(cv2.GaussianBlur(bump, (0, 0), max(1.0, w / 300)))
    k = rng.uniform(4, 10) * w / 640
    facing = 1 / np.sqrt(1 + (k * gx) ** 2 + (k * gy) ** 2)
    spec = gloss * facing ** rng.uniform(60, 300) * rng.uniform(0.5, 1.2)
    depth_full = cv2.resize(depth_small, (w, h), interpolation=cv2.INTER_LINEAR)
    falloff = np.clip((z0 / depth_full) ** 2, 0.4, 1.6) * (0.35 if kind == 'cavity' else 1.0)
    lit = albedo * (0.35 + 0.7 * facing)[..., None] * falloff[..., None] + spec[..., None] * (0.95, 0.95, 0.93)
    colour = (np.clip(lit, 0, 1) ** (1 / 1.15) * 255 + 0.5).astype(np.uint8)
    return TissueTexture(colour=colour, depth_small=depth_small)
