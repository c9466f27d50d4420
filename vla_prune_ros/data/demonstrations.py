"""Demonstrations on disk: the format ``vla-prune collect`` writes and ``vla-prune train`` reads.

A dataset is a directory::

    meta.json                      {"format": "vla_prune_demos/1", "camera_names": [...],
                                    "action_names": [...], "control_dt": 0.1, "image_size": 128, ...}
    episodes/episode_000000.npz    one episode each (numpy savez_compressed):
        <camera name>   (T, H, W, 3) uint8 RGB, one array per camera, model camera order
        proprio         (T, P) float32   the robot state the policy sees
        actions         (T, A) float32   the action executed at each step (un-normalised)
        instruction     ()     str
        success         ()     bool
        task, seed      ()     str, int
        privileged      (T, K) float32   optional: simulator-only targets for training-only auxiliary
                                         losses (``PRIVILEGED_NAMES``); never a policy input

Any robot's data can be converted into this: one ``.npz`` per episode plus ``meta.json``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = 'vla_prune_demos/1'
# Target cube minus TCP (m), goal minus target cube in the table plane (m; zero where there is none).
PRIVILEGED_NAMES = ('cube_dx', 'cube_dy', 'cube_dz', 'goal_dx', 'goal_dy')
FAR_TARGET_MM = 60   # a target cube farther than this from the TCP in xy: a "far" sample (the first steps)


def write_meta(directory: Path, meta: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / 'meta.json', 'w') as handle:
        json.dump({'format': FORMAT, **meta}, handle, indent=2)


def read_meta(directory: Path) -> dict:
    path = Path(directory) / 'meta.json'
    if not path.is_file():
        raise FileNotFoundError(f'{path}: missing; not a vla_prune demonstration directory')
    with open(path) as handle:
        meta = json.load(handle)
    if meta.get('format') != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def write_episode(directory: Path, index: int, frames: dict[str, np.ndarray], proprio: np.ndarray,
                  actions: np.ndarray, instruction: str, success: bool, task: str = '', seed: int = 0,
                  privileged: np.ndarray | None = None) -> Path:
    episodes = Path(directory) / 'episodes'
    episodes.mkdir(parents=True, exist_ok=True)
    path = episodes / f'episode_{index:06d}.npz'
    extra = {} if privileged is None else {'privileged': np.asarray(privileged, dtype=np.float32)}
    np.savez_compressed(path, **{name: np.asarray(array, dtype=np.uint8) for name, array in frames.items()},
                        proprio=np.asarray(proprio, dtype=np.float32), actions=np.asarray(actions, dtype=np.float32),
                        instruction=np.array(instruction), success=np.array(bool(success)), task=np.array(task),
                        seed=np.array(int(seed)), **extra)
    return path


@dataclass
class Episode:
    frames: dict[str, np.ndarray]
    proprio: np.ndarray
    actions: np.ndarray
    instruction: str
    success: bool
    privileged: np.ndarray | None = None
    task: str = ''
    seed: int | None = None          # the simulator's episode seed, when recorded: its scene can be redrawn

    def __len__(self) -> int:
        return len(self.actions)


def load_episodes(directory: Path, camera_names: list[str] | None = None, successful_only: bool = True,
                  limit: int | None = None, frame_size: int | None = None) -> tuple[dict, list[Episode]]:
    """``frame_size``: resize each frame to a square of this size (the model's, uncropped) as it is read,
    so a large dataset is never held at its recorded resolution."""
    meta = read_meta(directory)
    cameras = camera_names or meta['camera_names']
    privileged_columns = _privileged_columns(meta.get('privileged_names'), directory)
    episodes = []

    def frames_of(data, name):
        if frame_size is None:
            return data[name]
        from ..model.processing import prepare_frames
        return prepare_frames(data[name], frame_size)

    for path in sorted((Path(directory) / 'episodes').glob('episode_*.npz')):
        with np.load(path) as data:
            episode = Episode(frames={name: frames_of(data, name) for name in cameras}, proprio=data['proprio'],
                              actions=data['actions'], instruction=str(data['instruction']),
                              success=bool(data['success']),
                              privileged=(data['privileged'][:, privileged_columns]
                                          if 'privileged' in data.files else None),
                              task=str(data['task']) if 'task' in data.files else '',
                              seed=int(data['seed']) if 'seed' in data.files else None)
        if successful_only and not episode.success:
            continue
        episodes.append(episode)
        if limit is not None and len(episodes) >= limit:
            break
    if not episodes:
        raise ValueError(f'{directory}: no usable episodes')
    return meta, episodes


def _privileged_columns(recorded_names: list[str] | None, directory) -> list[int] | slice:
    """The columns of ``PRIVILEGED_NAMES`` in a collection's privileged targets, found by name, so a
    collection that recorded extra targets trains the same heads as one that did not."""
    if recorded_names is None or list(recorded_names) == list(PRIVILEGED_NAMES):
        return slice(None)
    missing = [name for name in PRIVILEGED_NAMES if name not in recorded_names]
    if missing:
        raise ValueError(f'{directory}: privileged targets {missing} were not recorded (it has {recorded_names})')
    return [list(recorded_names).index(name) for name in PRIVILEGED_NAMES]


def action_chunk(actions: np.ndarray, start: int, chunk_len: int) -> np.ndarray:
    """Actions start..start+chunk_len; past the end the arm holds still (zero motion, last gripper)."""
    chunk = actions[start:start + chunk_len]
    if len(chunk) < chunk_len:
        hold = np.zeros((chunk_len - len(chunk), actions.shape[1]), dtype=actions.dtype)
        hold[:, -1] = actions[-1, -1]
        chunk = np.concatenate([chunk, hold])
    return chunk


def q01_q99(values: np.ndarray) -> tuple[list[float], list[float]]:
    return np.quantile(values, 0.01, axis=0).tolist(), np.quantile(values, 0.99, axis=0).tolist()


def dataset_statistics(episodes: list[Episode], min_range: float = 1e-3) -> dict:
    """BOUNDS_Q99 statistics in OFT's ``dataset_statistics.json`` shape.

    Dimensions whose q01..q99 range is below ``min_range`` (a gripper that never changes, a
    rotation the expert holds fixed) are masked out: normalising them would blow sensor noise
    up to the full [-1, 1] range, an unlearnable target and a noisy input.
    """
    actions = np.concatenate([e.actions for e in episodes])
    proprio = np.concatenate([e.proprio for e in episodes])
    action_q01, action_q99 = q01_q99(actions)
    proprio_q01, proprio_q99 = q01_q99(proprio)

    def mask(q01, q99):
        return [bool(high - low >= min_range) for low, high in zip(q01, q99)]

    return {'action': {'q01': action_q01, 'q99': action_q99, 'mask': mask(action_q01, action_q99),
                       'mean': actions.mean(0).tolist(), 'std': actions.std(0).tolist()},
            'proprio': {'q01': proprio_q01, 'q99': proprio_q99, 'mask': mask(proprio_q01, proprio_q99)},
            'num_transitions': int(len(actions)), 'num_trajectories': len(episodes)}
