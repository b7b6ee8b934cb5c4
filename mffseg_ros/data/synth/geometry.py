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


def intersect_capsules(origin, dirs, caps):
    """First hit of unit rays from `origin` with the union of `caps` (all capsules at once).

    dirs = (dx, dy, dz), 1-D float32 arrays of N rays. Returns (t, k): the distance along each ray
    (inf where missed) and the index of the capsule hit; surface_points() gives the rest."""
    dx, dy, dz = dirs
    a = np.array([c.a for c in caps], np.float64)
    ba = np.array([c.b for c in caps], np.float64) - a
    oa = origin - a
    r = np.array([c.radius for c in caps], np.float64)
    baba = (ba * ba).sum(1)
    baoa = (ba * oa).sum(1)
    oaoa = (oa * oa).sum(1)

    def dot(v):  # (K, 3) float64 with the rays -> (K, N) float32
        v = v.astype(np.float32)
        return v[:, :1] * dx + v[:, 1:2] * dy + v[:, 2:3] * dz

    col = lambda x: x.astype(np.float32)[:, None]
    bard, rdoa = dot(ba), dot(oa)
    with np.errstate(invalid='ignore', divide='ignore'):
        # Infinite cylinder around each axis (|dirs| = 1), scaled by |ba|^2 to avoid a division.
        qa = col(baba) - bard * bard
        qb = col(baba) * rdoa - col(baoa) * bard
        disc = qb * qb - qa * col(baba * oaoa - baoa * baoa - r * r * baba)
        t = (-qb - np.sqrt(disc)) / qa
        y = col(baoa) + t * bard
        on_side = (y > 0) & (y < col(baba)) & (t > 0)  # NaN (missed) compares False
        # Rays that reach an infinite cylinder beyond its ends may hit a spherical end cap: few pixels.
        kk, nn = np.nonzero(~on_side & (disc >= 0))
        t = np.where(on_side, t, np.float32(np.inf))
        if len(kk):
            rx, ry, rz = dx[nn], dy[nn], dz[nn]
            best = t[kk, nn]
            for end in (a, a + ba):
                oc = (origin - end)[kk].astype(np.float32)
                b = rx * oc[:, 0] + ry * oc[:, 1] + rz * oc[:, 2]
                ts = -b - np.sqrt(b * b - ((oc * oc).sum(1) - (r * r)[kk].astype(np.float32)))
                best = np.where(ts > 0, np.minimum(best, ts), best)  # NaN where the sphere is missed
            t[kk, nn] = best
    if len(caps) == 1:
        return t[0], np.zeros(len(dx), np.intp)
    k = np.argmin(t, axis=0)
    return t[k, np.arange(len(dx))], k


def surface_points(origin, dirs, t, k, caps):
    """Hit points, unit outward normals ((x, y, z) array triples) and arc lengths (m, from each
    capsule's s0) where rays `dirs` hit capsule caps[k] at finite distance t."""
    a = np.array([c.a for c in caps], np.float32)
    ba = np.array([c.b for c in caps], np.float32) - a
    baba = (ba.astype(np.float64) ** 2).sum(1)
    per_cap = np.stack([1 / baba, [1 / c.radius for c in caps], np.sqrt(baba), [c.s0 for c in caps]]).astype(np.float32)
    pick = (lambda v: v[0]) if len(caps) == 1 else (lambda v: np.take(v, k))  # scalars broadcast
    hit = [np.float32(origin[i]) + d * t for i, d in enumerate(dirs)]
    rel = [hit[i] - pick(a[:, i]) for i in range(3)]
    bak = [pick(ba[:, i]) for i in range(3)]
    inv_baba, inv_r, length, s0 = (pick(v) for v in per_cap)
    axial = np.clip((rel[0] * bak[0] + rel[1] * bak[1] + rel[2] * bak[2]) * inv_baba, 0.0, 1.0)
    normal = [(rel[i] - axial * bak[i]) * inv_r for i in range(3)]
    return hit, normal, s0 + axial * length


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
