"""Pinhole geometry of the simulator's cameras, for training-only pointing targets.

``camera_geometry(env)`` reads each camera's pose and vertical field of view from MuJoCo once:
the fixed third-person camera in the world frame, the wrist camera in the TCP frame (it rides
on the wrist). ``project`` then maps a world point to normalised image coordinates for any TCP
pose, so targets can be computed from what a demonstration stores (proprio TCP pose and the
privileged target positions) without the simulator.
"""
from __future__ import annotations

import numpy as np

from .scene import CAMERA_NAMES, rotation_matrix_from_vector


def camera_geometry(env) -> dict[str, dict]:
    """Camera name -> {'frame': 'world' | 'tcp', 'position', 'rotation' (camera axes as columns), 'fovy'}."""
    model, data = env.model, env.data
    tcp_position, tcp_rotation = env.tcp_pose()
    geometry = {}
    for name in CAMERA_NAMES:
        camera = model.camera(name).id
        position = data.cam_xpos[camera].copy()
        rotation = data.cam_xmat[camera].reshape(3, 3).copy()
        frame = 'world' if model.cam_bodyid[camera] == 0 else 'tcp'
        if frame == 'tcp':
            position = tcp_rotation.T @ (position - tcp_position)
            rotation = tcp_rotation.T @ rotation
        geometry[name] = {'frame': frame, 'position': position.tolist(), 'rotation': rotation.tolist(),
                          'fovy': float(model.cam_fovy[camera])}
    return geometry


def world_pose(camera: dict, tcp_position, tcp_rotation_vector) -> tuple[np.ndarray, np.ndarray]:
    """The camera's world position and rotation (axes as columns) at this TCP pose."""
    position, rotation = np.asarray(camera['position']), np.asarray(camera['rotation'])
    if camera['frame'] == 'tcp':
        tcp_rotation = rotation_matrix_from_vector(tcp_rotation_vector)
        position = np.asarray(tcp_position) + tcp_rotation @ position
        rotation = tcp_rotation @ rotation
    return position, rotation


def project(camera: dict, point, tcp_position, tcp_rotation_vector) -> tuple[float, float] | None:
    """Normalised (column, row) in [0, 1] of a world point in a square image; None behind the camera."""
    position, rotation = world_pose(camera, tcp_position, tcp_rotation_vector)
    local = rotation.T @ (np.asarray(point, dtype=float) - position)
    depth = -local[2]                      # MuJoCo cameras look along their -z axis, y up
    if depth <= 1e-6:
        return None
    scale = 0.5 / np.tan(np.radians(camera['fovy']) / 2) / depth
    return 0.5 + local[0] * scale, 0.5 - local[1] * scale


def plane_points(camera: dict, uv, tcp_position, tcp_rotation_vector, height: float) -> np.ndarray:
    """Where the rays through normalised (column, row) image points ``uv`` (N, 2) meet the plane
    z = ``height``: (N, 3) world points, NaN where a ray runs parallel to the plane or away from it.
    The inverse of ``project`` for points on that plane."""
    position, rotation = world_pose(camera, tcp_position, tcp_rotation_vector)
    uv = np.asarray(uv, dtype=float)
    focal = 0.5 / np.tan(np.radians(camera['fovy']) / 2)
    local = np.stack([(uv[:, 0] - 0.5) / focal, (0.5 - uv[:, 1]) / focal, -np.ones(len(uv))], axis=1)
    directions = local @ rotation.T
    with np.errstate(divide='ignore', invalid='ignore'):
        distance = (height - position[2]) / directions[:, 2]
    points = position + distance[:, None] * directions
    points[~(distance > 0)] = np.nan
    return points
