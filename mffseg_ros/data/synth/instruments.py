"""Da Vinci-like instruments: type-specific looks, smooth per-episode motion, and their capsules."""
from dataclasses import dataclass, field

import numpy as np

from mffseg_ros.data.synth.geometry import Capsule, orthonormal_basis, rotate
from mffseg_ros.model.classes import PART_CLASPERS, PART_SHAFT, PART_WRIST, TASK_CLASSES

MM = 1e-3
SHAFT, WRIST, JAW = 0, 1, 2  # material slots
JAW_SEGMENTS = 2
WRIST_SEGMENT = 0.75  # length of each of the two wrist segments, in shaft diameters


@dataclass(frozen=True)
class Material:
    """Display-space RGB albedo (0..1), specular strength/exponent, how much it mirrors red tissue,
    optional stripes along the axis (cycles per metre, darkening) and a band (s range in m, colour)."""
    rgb: tuple
    spec: float = 0.6
    shininess: float = 30.0
    metal: float = 0.0
    stripes: float = 0.0
    stripe_depth: float = 0.0
    band: tuple = None  # (s_from, s_to, rgb), s measured from the wrist start (negative = on the shaft)


@dataclass(frozen=True)
class Look:
    """Shape and materials of one EndoVis instrument type (lengths and radii in metres)."""
    jaw_length: float
    jaw_radius: tuple  # (base, tip)
    max_opening_deg: float  # full angle between the jaws
    curve_deg: float
    wrist_radius_ratio: float
    materials: tuple  # (shaft, wrist, jaw)


# Da Vinci shafts are near-black with a bright specular line; wrists are bright metal with pulleys and
# cable grooves (ridges across the axis), which is what tells them apart from the jaws.
_DARK_SHAFT = Material((0.09, 0.09, 0.10), spec=0.9, shininess=20, metal=0.2)
# Bright metal shafts (laparoscopic tools, suction, some robotic tools): a model that only ever saw dark
# shafts calls an over-exposed silver shaft background.
_BRIGHT_SHAFT = Material((0.70, 0.70, 0.72), spec=1.1, shininess=30, metal=0.5)
BRIGHT_SHAFT_SHARE = 0.25
_SILVER = Material((0.66, 0.66, 0.68), spec=1.0, shininess=40, metal=0.5, stripes=260, stripe_depth=0.35)
LOOKS = {
    1: Look(14 * MM, (1.9 * MM, 1.5 * MM), 36, 0, 0.85,  # bipolar forceps: slim blue-grey jaws
            (_DARK_SHAFT, _SILVER, Material((0.35, 0.45, 0.75), spec=0.8, shininess=35, metal=0.2))),
    2: Look(17 * MM, (2.3 * MM, 1.8 * MM), 40, 0, 0.85,  # prograsp: silver, fenestrated (dark slots)
            (_DARK_SHAFT, Material((0.62, 0.62, 0.64), spec=0.9, shininess=40, metal=0.45, stripes=260,
                                   stripe_depth=0.35, band=(0.0, 2 * MM, (0.12, 0.12, 0.13))),
             Material((0.58, 0.58, 0.60), spec=1.0, shininess=45, metal=0.5, stripes=180, stripe_depth=0.6))),
    3: Look(20 * MM, (1.8 * MM, 1.3 * MM), 26, 0, 0.8,  # large needle driver: long, bright, barely opens
            (_DARK_SHAFT, _SILVER, Material((0.62, 0.62, 0.64), spec=1.1, shininess=60, metal=0.55,
                                            stripes=500, stripe_depth=0.25))),
    4: Look(18 * MM, (2.9 * MM, 2.2 * MM), 28, 0, 1.0,  # vessel sealer: bulky pale-gold jaws, blue band
            (Material((0.09, 0.09, 0.10), spec=0.9, shininess=20, metal=0.2,
                      band=(-12 * MM, -6 * MM, (0.20, 0.35, 0.80))),
             Material((0.55, 0.55, 0.57), spec=0.8, shininess=35, metal=0.4, stripes=260, stripe_depth=0.4),
             Material((0.82, 0.72, 0.48), spec=0.7, shininess=25, metal=0.3))),
    5: Look(23 * MM, (2.6 * MM, 2.4 * MM), 22, 0, 0.9,  # grasping retractor: long dark paddles
            (_DARK_SHAFT, _SILVER, Material((0.30, 0.30, 0.32), spec=0.6, shininess=20, metal=0.2,
                                            stripes=120, stripe_depth=0.35))),
    6: Look(13 * MM, (1.8 * MM, 1.3 * MM), 36, 28, 0.85,  # monopolar curved scissors: curved, orange cover
            (_DARK_SHAFT, Material((0.85, 0.45, 0.18), spec=0.5, shininess=15, metal=0.0),
             Material((0.58, 0.58, 0.60), spec=1.0, shininess=50, metal=0.5))),
    7: Look(12 * MM, (2.2 * MM, 1.9 * MM), 12, 0, 0.95,  # other: a white plastic probe-like tool
            (Material((0.55, 0.58, 0.55), spec=0.4, shininess=12),
             Material((0.85, 0.86, 0.84), spec=0.4, shininess=12),
             Material((0.35, 0.70, 0.45), spec=0.5, shininess=15))),
}
assert sorted(LOOKS) == list(range(1, len(TASK_CLASSES['type'])))


def _jitter_material(rng, m, amount):
    rgb = tuple(float(c) for c in np.clip(np.asarray(m.rgb) * (1 + rng.uniform(-amount, amount, 3)), 0, 1))
    return Material(rgb, m.spec * rng.uniform(0.8, 1.2), m.shininess * rng.uniform(0.8, 1.25), m.metal,
                    m.stripes, m.stripe_depth, m.band)


class Wave:
    """A smooth random signal: a sum of two sinusoids with random periods (frames) and phases."""

    def __init__(self, rng, periods=(40, 160), amplitude=1.0):
        self.freq = 2 * np.pi / rng.uniform(*periods, 2)
        self.phase = rng.uniform(0, 2 * np.pi, 2)
        self.amp = amplitude * np.array([1.0, rng.uniform(0.2, 0.6)]) / 1.4

    def __call__(self, t):
        return float(np.sum(self.amp * np.sin(self.freq * t + self.phase)))


@dataclass(frozen=True)
class Stains:
    """Blood and grime on a tool: a pattern of crossed waves over (arc length, surface normal),
    so it sticks to the tool as it moves. amount 0 = clean."""
    amount: float = 0.0
    freq: tuple = (50.0, 80.0, 120.0)  # cycles per metre along the tool
    normal_weights: tuple = ((0.0, 0.0, 0.0),) * 3
    phase: tuple = (0.0, 0.0, 0.0)
    threshold: float = 0.4
    rgb: tuple = (0.32, 0.04, 0.05)

    @classmethod
    def random(cls, rng):
        if rng.random() < 0.5:
            return cls()
        return cls(float(rng.uniform(0.3, 0.75)), tuple(rng.uniform(30, 160, 3)),
                   tuple(map(tuple, rng.normal(0, 2.0, (3, 3)))), tuple(rng.uniform(0, 2 * np.pi, 3)),
                   float(rng.uniform(0.15, 0.45)), tuple(np.array((0.32, 0.04, 0.05)) * rng.uniform(0.6, 1.3)))

    def mask(self, s, normal):
        """0..1 stain cover of surface points (s: arc length, m; normal: (x, y, z) arrays): the product
        of three waves, thresholded softly, gives irregular blotches."""
        cover = np.float32(1)
        for f, w, p in zip(self.freq, self.normal_weights, self.phase):
            cover = cover * (0.5 + 0.5 * np.sin(np.float32(2 * np.pi * f) * s + w[0] * normal[0]
                                                + w[1] * normal[1] + w[2] * normal[2] + np.float32(p)))
        return np.clip((cover - self.threshold) * 6, 0, 1) * np.float32(self.amount)


@dataclass
class Instrument:
    """One instrument of an episode: type, look, trocar pivot and the waves that move it."""
    instance_id: int
    type_id: int
    look: Look
    materials: tuple
    shaft_radius: float
    pivot: np.ndarray
    centre: np.ndarray
    waves: dict = field(default_factory=dict)
    retract_amp: float = 0.0
    stains: Stains = Stains()

    @classmethod
    def random(cls, rng, instance_id, type_id, entry_angle, tissue_depth):
        look = LOOKS[type_id]
        # Trocars sit beside the endoscope, well outside its view; shafts reach in from the image edges.
        lateral = rng.uniform(0.05, 0.10)
        pivot = np.array([lateral * np.cos(entry_angle), lateral * np.sin(entry_angle), rng.uniform(-0.01, 0.03)])
        z = rng.uniform(0.045, max(0.05, min(0.11, tissue_depth - 0.015)))
        xn = 0.12 * np.cos(entry_angle) + rng.uniform(-0.25, 0.25)
        yn = 0.10 * np.sin(entry_angle) + rng.uniform(-0.22, 0.22)
        amp = rng.uniform(0.006, 0.02)
        waves = dict(x=Wave(rng, amplitude=amp), y=Wave(rng, amplitude=amp), z=Wave(rng, amplitude=amp * 0.7),
                     retract=Wave(rng, periods=(200, 500)),
                     bend=Wave(rng, periods=(80, 240), amplitude=np.radians(rng.uniform(10, 55))),
                     bend_dir=Wave(rng, periods=(150, 400), amplitude=2.0),
                     jaw_roll=Wave(rng, periods=(120, 400), amplitude=2.0),
                     open=Wave(rng, periods=(25, 80)))
        materials = tuple(_jitter_material(rng, m, 0.12) for m in look.materials)
        inst = cls(instance_id, type_id, look, materials, rng.uniform(3.6, 4.4) * MM, pivot,
                   np.array([xn * z, yn * z, z]), waves, retract_amp=rng.choice((0.0, 0.0, 0.5, 0.9)),
                   stains=Stains.random(rng))
        if rng.random() < BRIGHT_SHAFT_SHARE:  # not a type cue: any tool may have a bright metal shaft
            inst.materials = (_jitter_material(rng, _BRIGHT_SHAFT, 0.15),) + materials[1:]
        return inst

    def capsules(self, t):
        """Shaft (part 1), two-segment wrist (part 2) and two two-capsule jaws (part 3) at t, plus
        the 3-D tip: the volume-weighted centroid of the jaw capsules."""
        w = self.waves
        target = self.centre + np.array([w['x'](t), w['y'](t), w['z'](t)])
        target[2] = max(target[2], 0.03)
        # Retraction pulls the tool back along its shaft, out of view when deep enough.
        insertion = 1.0 - self.retract_amp * min(1.0, max(0.0, w['retract'](t)) ** 2 / 0.5)
        wrist0 = self.pivot + (target - self.pivot) * insertion
        axis = (wrist0 - self.pivot) / np.linalg.norm(wrist0 - self.pivot)
        u1, u2 = orthonormal_basis(axis)
        r_shaft = self.shaft_radius
        r_wrist = r_shaft * self.look.wrist_radius_ratio
        seg = WRIST_SEGMENT * r_shaft * 2  # EndoWrist: the wrist is about 1.5 shaft diameters long
        wrist1 = wrist0 + axis * seg
        bend_dir = np.cos(w['bend_dir'](t)) * u1 + np.sin(w['bend_dir'](t)) * u2
        axis2 = rotate(axis, np.cross(axis, bend_dir), w['bend'](t))
        wrist2 = wrist1 + axis2 * seg
        caps = [Capsule(self.pivot, wrist0, r_shaft, PART_SHAFT, SHAFT, -float(np.linalg.norm(wrist0 - self.pivot))),
                Capsule(wrist0, wrist1, r_wrist, PART_WRIST, WRIST, 0.0),
                Capsule(wrist1, wrist2, r_wrist * 0.9, PART_WRIST, WRIST, seg)]
        # Jaws open symmetrically in a plane through axis2 that rolls with the wrist.
        v1, v2 = orthonormal_basis(axis2)
        spread = np.cos(w['jaw_roll'](t)) * v1 + np.sin(w['jaw_roll'](t)) * v2
        hinge = np.cross(axis2, spread)
        half_open = np.radians(self.look.max_opening_deg) / 2 * (0.5 + 0.5 * np.clip(w['open'](t) * 1.6, -1, 1))
        r_base, r_tip = self.look.jaw_radius
        start = wrist2 + axis2 * r_wrist * 0.3
        # Each jaw: two capsules, base and tip (a gentle taper); curved tools bend at the joint.
        step = self.look.jaw_length / JAW_SEGMENTS
        jaws = []
        for sign in (1.0, -1.0):
            direction = rotate(axis2, hinge, sign * half_open)
            a = start
            for k in range(JAW_SEGMENTS):
                radius = r_base + (r_tip - r_base) * k / max(1, JAW_SEGMENTS - 1)
                b = a + direction * step
                jaws.append(Capsule(a, b, radius, PART_CLASPERS, JAW, 2 * seg + k * step))
                direction = rotate(direction, hinge, np.radians(self.look.curve_deg) / max(1, JAW_SEGMENTS - 1))
                a = b
        volumes = np.array([c.volume for c in jaws])
        tip = (volumes[:, None] * np.array([c.centroid for c in jaws])).sum(0) / volumes.sum()
        return caps + jaws, tip
