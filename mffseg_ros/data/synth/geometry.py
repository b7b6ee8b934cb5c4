"""Capsules (segment + radius) and their exact ray intersection, vectorised over pixels."""
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Capsule:
    """All points within `radius` of the segment a-b (metres, left optical frame).

    part: label id (1 shaft, 2 wrist, 3 claspers); look: index into the instrument's materials;
    s0: arc length (m) of `a` along the instrument, for stripes and bands."""
    a: np.ndarray
    b: np.ndarray
    radius: float
    part: int
    look: int = 0
    s0: float = 0.0

    @property
    def volume(self):
        length = float(np.linalg.norm(self.b - self.a))
        return np.pi * self.radius ** 2 * length + 4 / 3 * np.pi * self.radius ** 3

    @property
    def centroid(self):
        return (self.a + self.b) / 2


def clip_to_near_plane(a, b, near):
    """Move `a` towards `b` so the segment stays at z >= near (shafts reach behind the camera)."""
    if a[2] >= near or b[2] <= near:
        return a
    t = (near - a[2]) / (b[2] - a[2])
    return a + t * (b - a)


def intersect_capsule(origin, dirs, cap):
    """First hit of unit rays from `origin` with `cap`; dirs = (dx, dy, dz), 1-D float32 arrays.

    Returns (t, hit, normal, s): distance along the ray (inf where missed), hit points and unit outward
    normals as (x, y, z) array triples, and the arc length of the closest axis point (m)."""
    dx, dy, dz = dirs
    ba = cap.b - cap.a
    oa = origin - cap.a
    baba = float(ba @ ba)
    baoa = float(ba @ oa)
    oaoa = float(oa @ oa)
    r2 = cap.radius ** 2
    bard = dx * np.float32(ba[0]) + dy * np.float32(ba[1]) + dz * np.float32(ba[2])
    rdoa = dx * np.float32(oa[0]) + dy * np.float32(oa[1]) + dz * np.float32(oa[2])
    # Infinite cylinder around the axis (|dirs| = 1), scaled by |ba|^2 to avoid a division.
    qa = baba - bard * bard
    qb = baba * rdoa - baoa * bard
    disc = qb * qb - qa * np.float32(baba * oaoa - baoa * baoa - r2 * baba)
    with np.errstate(invalid='ignore', divide='ignore'):
        t = (-qb - np.sqrt(disc)) / qa
    y = baoa + t * bard
    on_side = (y > 0) & (y < baba) & (t > 0)  # NaN (missed) compares False
    t = np.where(on_side, t, np.float32(np.inf))
    # Spherical caps for rays that reach the infinite cylinder beyond either end.
    rest = np.flatnonzero(~on_side & (disc >= 0))
    if len(rest):
        rx, ry, rz = dx[rest], dy[rest], dz[rest]
        best = t[rest]
        for centre in (cap.a, cap.b):
            oc = origin - centre
            b = rx * np.float32(oc[0]) + ry * np.float32(oc[1]) + rz * np.float32(oc[2])
            h = b * b - np.float32(oc @ oc - r2)
            with np.errstate(invalid='ignore'):
                ts = -b - np.sqrt(h)
            best = np.where(ts > 0, np.minimum(best, ts), best)  # NaN where h < 0 -> no hit
        t[rest] = best
    tt = np.where(np.isfinite(t), t, 0)
    hit = [np.float32(origin[k]) + d * tt for k, d in enumerate((dx, dy, dz))]
    rel = [hit[k] - np.float32(cap.a[k]) for k in range(3)]
    axial = np.clip((rel[0] * ba[0] + rel[1] * ba[1] + rel[2] * ba[2]) / baba, 0.0, 1.0).astype(np.float32)
    inv_r = np.float32(1 / cap.radius)
    normal = [(rel[k] - axial * np.float32(ba[k])) * inv_r for k in range(3)]
    return t, hit, normal, cap.s0 + axial * np.float32(np.sqrt(baba))


def rotate(v, axis, angle):
    """Rodrigues rotation of vectors `v` about the unit `axis`."""
    axis = axis / np.linalg.norm(axis)
    c, s = np.cos(angle), np.sin(angle)
    return v * c + np.cross(axis, v) * s + axis * (axis @ v) * (1 - c)


def orthonormal_basis(direction):
    """Two unit vectors perpendicular to `direction` and to each other."""
    d = direction / np.linalg.norm(direction)
    helper = np.array([0.0, 1.0, 0.0]) if abs(d[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(d, helper)
    u /= np.linalg.norm(u)
    return u, np.cross(d, u)
