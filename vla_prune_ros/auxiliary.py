"""Training-only auxiliary objectives from privileged simulator targets; never part of a saved policy.

- ``TargetHead`` regresses where the target cube is (relative to the TCP) and where its goal is
  (relative to the cube) from the mean read-out hidden state.
- ``PointingHead`` asks every patch token, after the LLM, whether the target cube (or the push
  goal) lies in its patch: a softmax over each camera's patches against the patch the target
  projects to. This is the grounding a policy needs first (which patch holds "the red cube"),
  as a dense per-token signal instead of only through the actions.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

PRIVILEGED_SCALE = 0.1   # metres -> regression target units (targets lie within about +-3)
PAD_HEIGHT = 0.0005      # pads are flat on the table


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
