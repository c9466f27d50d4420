"""Put a bag's streams on one control grid: a state every ``dt`` seconds, matched by stamp.

The grid's phase follows the first camera (the circular mean of its stamps modulo ``dt``), so a
camera that runs at the control rate is sampled at its own frames rather than between them.
At each grid time:
  * each camera: the nearest frame, if it is within ``tolerance``;
  * joint states: linear interpolation between the two samples around it when both are within
    ``tolerance`` (a fast joint-state stream), else the nearest sample within ``tolerance``.
A grid time where any stream has nothing within the tolerance is invalid: it is counted per
stream and never filled in. Valid grid times form runs; actions exist only inside a run.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .streams import BagStreams


@dataclass
class GridStates:
    times: np.ndarray                    # (K,) s
    positions: np.ndarray                # (K, J) joint positions, NaN where invalid
    frames: dict[str, np.ndarray]        # camera topic -> (K,) frame index, -1 where invalid
    valid: np.ndarray                    # (K,) bool
    missing: Counter = field(default_factory=Counter)   # stream -> grid times it had nothing near

    def runs(self) -> list[tuple[int, int]]:
        """Maximal [start, stop) index ranges of consecutive valid grid times."""
        runs, start = [], None
        for k, ok in enumerate(self.valid):
            if ok and start is None:
                start = k
            elif not ok and start is not None:
                runs.append((start, k))
                start = None
        if start is not None:
            runs.append((start, len(self.valid)))
        return runs


def grid_times(reference: np.ndarray, start: float, stop: float, dt: float) -> np.ndarray:
    """Times ``start <= t <= stop`` spaced ``dt``, in phase with the ``reference`` stamps."""
    angles = 2.0 * np.pi * np.mod(reference, dt) / dt
    phase = (np.arctan2(np.sin(angles).mean(), np.cos(angles).mean()) % (2.0 * np.pi)) * dt / (2.0 * np.pi)
    first = start + np.mod(phase - start, dt)
    if first > stop:
        return np.zeros(0)
    return first + dt * np.arange(int(np.floor((stop - first) / dt + 1e-9)) + 1)


def nearest(stamps: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest stamp for each time, and its distance (s)."""
    after = np.clip(np.searchsorted(stamps, times), 0, len(stamps) - 1)
    before = np.clip(after - 1, 0, len(stamps) - 1)
    pick = np.where(np.abs(stamps[before] - times) <= np.abs(stamps[after] - times), before, after)
    return pick, np.abs(stamps[pick] - times)


def resample_joints(stamps: np.ndarray, positions: np.ndarray, times: np.ndarray,
                    tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Joint positions at ``times`` (interpolated between close neighbours, else nearest) and validity."""
    after = np.clip(np.searchsorted(stamps, times), 1, max(len(stamps) - 1, 1))
    before = after - 1
    result = np.full((len(times), positions.shape[1]), np.nan)
    valid = np.zeros(len(times), dtype=bool)
    if len(stamps) >= 2:
        bracketed = (stamps[before] <= times) & (times <= stamps[after]) & \
            (times - stamps[before] <= tolerance) & (stamps[after] - times <= tolerance)
        span = np.maximum(stamps[after] - stamps[before], 1e-12)
        weight = ((times - stamps[before]) / span)[:, None]
        blended = (1.0 - weight) * positions[before] + weight * positions[after]
        result[bracketed], valid[bracketed] = blended[bracketed], True
    pick, distance = nearest(stamps, times)
    close = ~valid & (distance <= tolerance)
    result[close], valid[close] = positions[pick[close]], True
    return result, valid


def align(streams: BagStreams, dt: float, tolerance: float) -> GridStates:
    """The bag's states on the control grid over the span every stream covers."""
    if not 0.0 < tolerance < dt / 2:
        raise ValueError(f'tolerance must be in (0, control_dt / 2) = (0, {dt / 2:g}) s, got {tolerance:g}')
    everything = [*streams.cameras, streams.joints]
    start = max(float(s.stamps[0]) for s in everything) - tolerance
    stop = min(float(s.stamps[-1]) for s in everything) + tolerance
    times = grid_times(streams.cameras[0].stamps, start, stop, dt)
    positions, valid = resample_joints(streams.joints.stamps, streams.joints.positions, times, tolerance)
    missing = Counter({streams.joints.topic: int((~valid).sum())})
    frames = {}
    for camera in streams.cameras:
        pick, distance = nearest(camera.stamps, times)
        close = distance <= tolerance
        frames[camera.topic] = np.where(close, pick, -1)
        missing[camera.topic] = int((~close).sum())
        valid &= close
    positions[~valid] = np.nan
    return GridStates(times, positions, frames, valid, +missing)
