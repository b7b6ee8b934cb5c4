"""Ray-cast instruments into one eye with a z-buffer against the tissue depth; write labels."""
import cv2
import numpy as np

from mffseg_ros.data.synth.geometry import intersect_capsules, surface_points

NEAR = 0.004  # metres; shafts are clipped here
STAIN_FROM = -0.02  # metres along the tool from the wrist: tissue only soils its distal end
HULL_MARGIN = 1.06  # on the projected radius: covers the second-order growth of off-axis spheres
LIGHT_REF_DEPTH = 0.09  # instruments at this distance get the nominal brightness (light at the tip)
TISSUE_REFLECTION = np.array([0.55, 0.18, 0.16])  # what metal mirrors: red tissue


def _clip_planes(rig):
    """(5, 4) half-spaces n.p + c >= 0 (camera frame of an eye): the 4 frustum sides and the near plane."""
    x0, x1 = (-0.5 - rig.cx) / rig.fx, (rig.width - 0.5 - rig.cx) / rig.fx
    y0, y1 = (-0.5 - rig.cy) / rig.fy, (rig.height - 0.5 - rig.cy) / rig.fy
    normals = np.array([[1, 0, -x0], [-1, 0, x1], [0, 1, -y0], [0, -1, y1]], np.float64)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return np.vstack([np.hstack([normals, np.zeros((4, 1))]), [0.0, 0.0, 1.0, -NEAR]])


def clip_segment(a, b, radius, planes, origin):
    """The part of a-b whose capsule can reach into the eye's frustum (None if none), near-clipped.
    planes: from _clip_planes; the side planes are widened by `radius`."""
    margin = planes[:, 3] + np.array([radius] * 4 + [0.0])
    da = planes[:, :3] @ (a - origin) + margin
    db = planes[:, :3] @ (b - origin) + margin
    if np.any((da < 0) & (db < 0)):
        return None
    with np.errstate(divide='ignore', invalid='ignore'):
        cross = da / (da - db)
    t0 = max([0.0] + list(cross[da < 0]))
    t1 = min([1.0] + list(cross[(db < 0) & (da >= 0)]))
    if t0 >= t1:
        return None
    return a + t0 * (b - a), a + t1 * (b - a)


_UNIT_CIRCLE = np.stack([np.cos(np.arange(16) * np.pi / 8), np.sin(np.arange(16) * np.pi / 8)], 1)


def _candidate_pixels(rig, planes, origin, caps):
    """Pixels whose rays may hit any of `caps`: each projected segment drawn with a conservative width."""
    strokes = []
    for cap in caps:
        clipped = clip_segment(cap.a, cap.b, cap.radius, planes, origin)
        if clipped is None:
            continue
        ends = np.array(clipped) - origin
        z = ends[:, 2]
        uv = np.stack([rig.fx * ends[:, 0] / z + rig.cx, rig.fy * ends[:, 1] / z + rig.cy], 1)
        # A sphere of radius r at distance D, angle theta off the axis, images to an ellipse with
        # semi-axes f r / (z cos(alpha)) (tangential) and that / cos(theta) (radial), sin(alpha) = r / D.
        dist = np.linalg.norm(ends, axis=1)
        stretch = dist / z
        cos_alpha = np.sqrt(np.maximum(1 - (cap.radius / dist) ** 2, 1e-4))
        rad = HULL_MARGIN * stretch * max(rig.fx, rig.fy) * cap.radius / (z * cos_alpha) + 1.0
        if np.abs(uv).max() < 2 ** 24:  # the frustum clip keeps projections bounded
            strokes.append((uv, rad))
    if not strokes:
        return None
    lo = np.floor(np.min([(uv - rad[:, None]).min(0) for uv, rad in strokes], 0)).astype(int)
    hi = np.ceil(np.max([(uv + rad[:, None]).max(0) for uv, rad in strokes], 0)).astype(int) + 1
    x0, y0 = max(lo[0], 0), max(lo[1], 0)
    x1, y1 = min(hi[0], rig.width), min(hi[1], rig.height)
    if x0 >= x1 or y0 >= y1:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for uv, rad in strokes:
        # The convex hull of the two end discs (polygons circumscribing them).
        ring = np.concatenate([uv[j] - (x0, y0) + (rad[j] / np.cos(np.pi / 16)) * _UNIT_CIRCLE for j in (0, 1)])
        hull = cv2.convexHull(np.round(ring * 16).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1, cv2.LINE_8, shift=4)
    found = cv2.findNonZero(mask)  # (N, 1, 2) x, y; several times faster than np.nonzero
    if found is None:
        return None
    found = found.reshape(-1, 2)
    return found[:, 1] + np.int32(y0), found[:, 0] + np.int32(x0)


def _shade(mat, dirs, normal, s, depth, stains=None):
    """Light at the endoscope tip: ambient + diffuse + specular, mirrored tissue, inverse-square falloff,
    blood stains on the distal end (s > STAIN_FROM). Returns Nx3 float32 display RGB (0..1)."""
    ndl = -(normal[0] * dirs[0] + normal[1] * dirs[1] + normal[2] * dirs[2])
    np.clip(ndl, 0.0, 1.0, out=ndl)
    albedo = np.empty((len(ndl), 3), np.float32)
    albedo[:] = mat.rgb
    if mat.band is not None:
        lo, hi, band = mat.band
        albedo[(s >= lo) & (s <= hi)] = band
    if mat.stripes:
        albedo *= (1 - mat.stripe_depth * (np.sin(np.float32(2 * np.pi * mat.stripes) * s) > 0.5))[:, None]
    if stains is not None and stains.amount:
        near_tip = np.flatnonzero(s > STAIN_FROM)  # most shaft pixels are not: skip them
        if len(near_tip):
            cover = stains.mask(s[near_tip], [n[near_tip] for n in normal])
            albedo[near_tip] += (np.asarray(stains.rgb, np.float32) - albedo[near_tip]) * cover[:, None]
    falloff = np.clip((LIGHT_REF_DEPTH / depth) ** 2, 0.5, 1.7).astype(np.float32)
    colour = albedo * ((0.18 + 0.85 * ndl) * falloff)[:, None]
    colour += TISSUE_REFLECTION.astype(np.float32) * (mat.metal * (1 - ndl) ** 2 * falloff)[:, None]
    highlight = ndl
    for _ in range(max(1, round(np.log2(mat.shininess)))):  # ndl ** shininess at a power of 2: squarings
        highlight = highlight * highlight                    # are ~20x cheaper than np.power
    colour += (mat.spec * highlight * falloff)[:, None]
    return colour


def render_instruments(rig, side, image, zbuf, labels, instruments):
    """Draw `instruments` [(Instrument, capsules)] into `image` (HxWx3 uint8) in place, where nearer
    than `zbuf` (HxW float32 depth in metres, updated). labels: dict of HxW arrays 'parts', 'type',
    'instance'. All arrays must be C-contiguous (written through flat views)."""
    origin = rig.eye_origin(side)
    planes = _clip_planes(rig)
    width = rig.width
    zflat, rgb = zbuf.reshape(-1), image.reshape(-1, 3)
    parts, types, instances = (labels[k].reshape(-1) for k in ('parts', 'type', 'instance'))
    for inst, caps in instruments:
        # One ray-casting pass per material (shaft, wrist, jaws): capsules of similar size, one shading.
        for group in ([c for c in caps if c.look == look] for look in sorted({c.look for c in caps})):
            pix = _candidate_pixels(rig, planes, origin, group) if group else None
            if pix is None or len(pix[0]) == 0:
                continue
            ys, xs = pix
            x = (xs.astype(np.float32) - np.float32(rig.cx)) * np.float32(1 / rig.fx)
            y = (ys.astype(np.float32) - np.float32(rig.cy)) * np.float32(1 / rig.fy)
            inv = 1 / np.sqrt(x * x + y * y + 1)
            dirs = (x * inv, y * inv, inv)
            t, k = intersect_capsules(origin, dirs, group)
            idx = ys * width + xs
            win = np.flatnonzero(t * dirs[2] < zflat[idx])  # depth; misses are inf and never win
            if not len(win):
                continue
            idx, k, dirs = idx[win], k[win], [d[win] for d in dirs]
            hit, normal, s = surface_points(origin, dirs, t[win], k, group)
            depth = hit[2]
            zflat[idx] = depth
            part_ids = {c.part for c in group}
            parts[idx] = part_ids.pop() if len(part_ids) == 1 else np.array([c.part for c in group], np.uint8)[k]
            types[idx] = inst.type_id
            instances[idx] = inst.instance_id
            colour = _shade(inst.materials[group[0].look], dirs, normal, s, depth, inst.stains)
            rgb[idx] = np.clip(colour * 255 + 0.5, 0, 255).astype(np.uint8)
