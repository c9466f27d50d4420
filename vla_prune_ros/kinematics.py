"""Measured end-effector velocity from joint states and a URDF, with pinocchio.

``J(q) · q̇`` at the end-effector frame, expressed in the world (root) frame
(``LOCAL_WORLD_ALIGNED``): linear velocity of the frame origin in m/s and angular velocity in
rad/s. When the joint state carries no velocities, finite differences of forward kinematics
between successive samples stand in. Joints are matched by name, never by order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pinocchio as pin


@dataclass
class VelocityEstimate:
    linear: np.ndarray          # (3,) m/s, world frame
    angular: np.ndarray         # (3,) rad/s, world frame
    valid: bool
    reason: str = ''            # '' when valid and nothing was odd
    source: str = 'jacobian'    # 'jacobian' or 'finite_difference'

    @property
    def linear_speed(self) -> float:
        return float(np.linalg.norm(self.linear)) if self.valid else math.nan

    @property
    def angular_speed(self) -> float:
        return float(np.linalg.norm(self.angular)) if self.valid else math.nan


def _invalid(reason: str) -> VelocityEstimate:
    return VelocityEstimate(np.full(3, np.nan), np.full(3, np.nan), False, reason, 'none')


class EndEffectorVelocity:
    def __init__(self, urdf_xml: str, ee_frame: str, joint_names: list[str] | None = None, smoothing: float = 0.0):
        try:
            self.model = pin.buildModelFromXML(urdf_xml)
        except Exception as error:  # pinocchio raises plain RuntimeErrors
            raise ValueError(f'cannot parse the URDF ({error})') from None
        if not self.model.existFrame(ee_frame):
            raise ValueError(f"ee_frame '{ee_frame}' is not a frame of the URDF")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f'smoothing must be in [0, 1), got {smoothing}')
        self.data = self.model.createData()
        self.frame = self.model.getFrameId(ee_frame)
        self.smoothing = float(smoothing)
        movable = [name for name in self.model.names[1:]]
        self.joint_names = list(joint_names) if joint_names else movable
        unknown = [n for n in self.joint_names if n not in movable]
        if unknown:
            raise ValueError(f'joints not in the URDF: {unknown}')
        self._joints = [self.model.joints[self.model.getJointId(n)] for n in self.joint_names]
        for name, joint in zip(self.joint_names, self._joints):
            if joint.nv != 1:
                raise ValueError(f"joint '{name}' has {joint.nv} degrees of freedom; only 1-DoF joints are supported")
        self.reset()

    @classmethod
    def from_file(cls, path: str | Path, ee_frame: str, joint_names: list[str] | None = None,
                  smoothing: float = 0.0) -> 'EndEffectorVelocity':
        return cls(Path(path).read_text(), ee_frame, joint_names, smoothing)

    def reset(self) -> None:
        self._previous: tuple[float, pin.SE3] | None = None
        self._smoothed: tuple[np.ndarray, np.ndarray] | None = None

    def _configuration(self, positions: dict[str, float]) -> np.ndarray:
        q = pin.neutral(self.model)
        for name, joint in zip(self.joint_names, self._joints):
            if joint.nq == 1:
                q[joint.idx_q] = positions[name]
            else:   # continuous joint stored as (cos, sin)
                q[joint.idx_q:joint.idx_q + 2] = (math.cos(positions[name]), math.sin(positions[name]))
        return q

    def update(self, names, positions, velocities, stamp: float) -> VelocityEstimate:
        names = list(names)
        positions = np.asarray(positions, dtype=np.float64)
        velocities = np.asarray(velocities if velocities is not None else [], dtype=np.float64)
        if len(positions) != len(names):
            self.reset()
            return _invalid(f'{len(names)} joint names but {len(positions)} positions')
        by_name = dict(zip(names, range(len(names))))
        missing = [n for n in self.joint_names if n not in by_name]
        if missing:
            self.reset()
            return _invalid(f"joint '{missing[0]}' missing" + (f' (and {len(missing) - 1} more)' if len(missing) > 1
                                                                else ''))
        unknown = sorted(set(names) - set(self.joint_names) - set(self.model.names))
        note = f'unknown joints ignored: {unknown}' if unknown else ''
        index = [by_name[n] for n in self.joint_names]
        q_values = positions[index]
        if not np.all(np.isfinite(q_values)):
            self.reset()
            return _invalid('NaN or Inf in joint positions')
        q = self._configuration(dict(zip(self.joint_names, q_values)))
        use_jacobian = len(velocities) == len(names)
        if use_jacobian:
            qdot_values = velocities[index]
            if not np.all(np.isfinite(qdot_values)):
                self.reset()
                return _invalid('NaN or Inf in joint velocities')
            v = np.zeros(self.model.nv)
            for joint, value in zip(self._joints, qdot_values):
                v[joint.idx_v] = value
            jacobian = pin.computeFrameJacobian(self.model, self.data, q, self.frame, pin.LOCAL_WORLD_ALIGNED)
            twist = jacobian @ v
            linear, angular, source = twist[:3], twist[3:], 'jacobian'
        else:
            pin.framesForwardKinematics(self.model, self.data, q)
            pose = self.data.oMf[self.frame].copy()
            previous, self._previous = self._previous, (stamp, pose)
            if previous is None or stamp <= previous[0]:
                return _invalid('waiting for a second sample (no joint velocities: finite differences)')
            dt = stamp - previous[0]
            linear = (pose.translation - previous[1].translation) / dt
            angular = pin.log3(pose.rotation @ previous[1].rotation.T) / dt   # world-frame rotation rate
            source = 'finite_difference'
        if self.smoothing and self._smoothed is not None:
            a = self.smoothing
            linear = a * self._smoothed[0] + (1 - a) * linear
            angular = a * self._smoothed[1] + (1 - a) * angular
        self._smoothed = (np.array(linear), np.array(angular))
        return VelocityEstimate(np.array(linear), np.array(angular), True, note, source)
