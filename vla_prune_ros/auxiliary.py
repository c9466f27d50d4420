"""Training-only auxiliary objectives from privileged simulator targets; never part of a saved policy.

- ``TargetHead`` regresses where the target cube is (relative to the TCP) and where its goal is
  (relative to the cube) from the mean read-out hidden state.
- ``PointingHead`` asks every patch token, after the LLM, whether the target cube (or the push
  goal) lies in its patch: a softmax over each camera's patches against the patch the target
  projects to. This is the grounding a policy needs first (which patch holds "the red cube"),
  as a dense per-token signal instead of only through the actions.
- ``PatchPositionHead`` asks every patch token where its patch lies on the table (the cube-centre
  plane): in the world for a fixed camera, relative to the TCP for the wrist camera. Pointing
  alone teaches *which* patch holds the target, yet the read-out still missed *where* it is by
  about 9 cm; a linear per-token position lets attention to the target patch carry the answer.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

PRIVILEGED_SCALE = 0.1   # metres -> regression target units (targets lie within about +-3)
PAD_HEIGHT = 0.0005      # pads are flat on the table
WORKSPACE_CENTRE = np.array([0.42, 0.0])   # world-camera patch positions are taken from here


class TargetHead(nn.Module):
    def __init__(self, hidden_size: int, outputs: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, 256), nn.GELU(),
                                 nn.Linear(256, outputs))

    def forward(self, readout: torch.Tensor) -> torch.Tensor:
        return self.net(readout.float().mean(dim=1))


class PointingHead(nn.Module):
    """Per patch token: one logit per pointing target (target cube, goal)."""

    def __init__(self, hidden_size: int, targets: int = 2):
        super().__init__()
        self.net = nn.Linear(hidden_size, targets)

    def loss(self, patch_hidden: torch.Tensor, target_patches: torch.Tensor) -> torch.Tensor:
        """``patch_hidden`` (B, cameras * P, H); ``target_patches`` (B, cameras, targets), -1 = not in view."""
        batch, cameras, targets = target_patches.shape
        logits = self.net(patch_hidden.float()).view(batch, cameras, -1, targets)     # (B, C, P, T)
        logits = logits.permute(0, 1, 3, 2).reshape(-1, logits.shape[2])             # (B*C*T, P)
        labels = target_patches.reshape(-1)
        if not bool((labels >= 0).any()):
            return logits.sum() * 0.0
        return nn.functional.cross_entropy(logits, labels, ignore_index=-1)


class PatchPositionHead(nn.Module):
    """Per patch token: a linear read of its patch's table position (PRIVILEGED_SCALE units)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.net = nn.Linear(hidden_size, 2)

    def loss(self, patch_hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``patch_hidden`` (B, cameras * P, H); ``positions`` (B, cameras * P, 2), NaN = off the table."""
        valid = ~torch.isnan(positions[..., 0])
        error = (self.net(patch_hidden.float()) - torch.nan_to_num(positions)).abs().mean(-1)
        return (error * valid).sum() / valid.sum().clamp(min=1)


def patch_positions(geometry: dict, box, grid: int, tcp_position, tcp_rotation_vector, height: float,
                    plane_points, reach: float = 1.0) -> np.ndarray:
    """(grid * grid, 2) table position of each patch centre after cropping to ``box`` (y1, x1, y2, x2),
    scaled by PRIVILEGED_SCALE: world xy for a world-fixed camera, xy from the TCP for one riding on
    it; NaN where the centre's ray misses the table plane or lands beyond ``reach`` metres."""
    y1, x1, y2, x2 = box
    centres = (np.arange(grid) + 0.5) / grid
    rows, columns = np.meshgrid(y1 + centres * (y2 - y1), x1 + centres * (x2 - x1), indexing='ij')
    points = plane_points(geometry, np.stack([columns.ravel(), rows.ravel()], 1), tcp_position,
                          tcp_rotation_vector, height)[:, :2]
    if geometry['frame'] == 'tcp':
        points = points - np.asarray(tcp_position)[:2]
        far = np.linalg.norm(points, axis=1) > reach
    else:
        far = np.linalg.norm(points - WORKSPACE_CENTRE, axis=1) > reach
        points = points - WORKSPACE_CENTRE
    points[far] = np.nan
    return points / PRIVILEGED_SCALE


def target_points(privileged: np.ndarray, tcp_position: np.ndarray) -> list[np.ndarray | None]:
    """World points to point at: the target cube, and the goal pad when there is one (push)."""
    cube = tcp_position + privileged[:3]
    goal = None
    if np.any(privileged[3:5] != 0):
        goal = np.array([cube[0] + privileged[3], cube[1] + privileged[4], PAD_HEIGHT])
    return [cube, goal]


def target_patch(normalised_uv, box: tuple[float, float, float, float], grid: int) -> int:
    """Index of the patch (row-major, ``grid`` x ``grid``) a normalised image point falls in after
    cropping to ``box`` (y1, x1, y2, x2); -1 when it falls outside the crop."""
    if normalised_uv is None:
        return -1
    y1, x1, y2, x2 = box
    column = (normalised_uv[0] - x1) / (x2 - x1)
    row = (normalised_uv[1] - y1) / (y2 - y1)
    if not (0.0 <= column < 1.0 and 0.0 <= row < 1.0):
        return -1
    return int(math.floor(row * grid)) * grid + int(math.floor(column * grid))
