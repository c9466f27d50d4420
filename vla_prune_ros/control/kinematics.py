"""Measured end-effector velocity from joint states, with pinocchio and the robot's URDF.

The coarse/fine controller needs the *measured* speed of the end effector. A robot reports joint
states (``sensor_msgs/JointState``: names, positions, maybe velocities); this module turns them
into the world-frame twist of one URDF frame (LOCAL_WORLD_ALIGNED: the frame's origin velocity
and angular velocity, expressed in the base/world axes):

* with joint velocities:   v = J(q) @ qdot   (pinocchio frame Jacobian), ``source='jacobian'``;
* without (empty list):    finite difference of the frame pose between this update and the
                           previous one with valid positions, using the stamps,
                           ``source='finite_difference'``.

Joints are matched by name, never by order. Names the URDF does not know are ignored (and listed
in ``reason``); a missing needed joint, NaN/Inf or inconsistent lengths make the estimate invalid.
Joints of the URDF that are not in ``joint_names`` are locked at their neutral position.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np
import pinocchio as pin


@dataclasses.dataclass
class VelocityEstimate:
    linear: np.ndarray      # (3,) m/s, world axes at the end-effector frame origin
    angular: np.ndarray     # (3,) rad/s, world axes
    valid: bool
    reason: str = ''        # '' when valid and clean; why invalid; or a warning when valid
    source: str = 'jacobian'
    stamp: float = math.nan

    @property
    def linear_speed(self) -> float:
        return float(np.linalg.norm(self.linear)) if self.valid else math.nan

    @property
    def angular_speed(self) -> float:
        return float(np.linalg.norm(self.angular)) if self.valid else math.nan

    @classmethod
    def invalid(cls, reason: str, source: str, stamp: float = math.nan) -> 'VelocityEstimate':
        return cls(np.full(3, np.nan), np.full(3, np.nan), False, reason, source, stamp)


def _non_finite(names, values) -> str:
    """'joint1=NaN, joint2=Inf': each bad value as what it is (an Inf is not a NaN)."""
    def text(value: float) -> str:
        return 'NaN' if math.isnan(value) else ('Inf' if value > 0 else '-Inf')
    return ', '.join(f'{name}={text(value)}' for name, value in zip(names, values) if not math.isfinite(value))


class EndEffectorVelocity:
    """Stateful estimator: call ``update`` with every joint-state message."""

    def __init__(self, urdf_xml: str, ee_frame: str, joint_names: list[str] | None = None,
                 smoothing: float = 0.0, max_joint_velocity: float = math.inf):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f'smoothing must be in [0, 1), got {smoothing}')
        try:
            full_model = pin.buildModelFromXML(urdf_xml)
        except Exception as error:  # pinocchio raises ValueError/RuntimeError depending on the fault
            raise ValueError(f'could not build a robot model from the URDF: {error}') from error
        if not full_model.existFrame(ee_frame):
            frames = sorted({frame.name for frame in full_model.frames} - {'universe'})
            raise ValueError(f'end-effector frame {ee_frame!r} is not a frame of the URDF; '
                             f'known frames: {", ".join(frames)}')

        movable = [full_model.names[i] for i in range(1, full_model.njoints)
                   if full_model.joints[i].nv > 0]
        frame_joint = full_model.frames[full_model.getFrameId(ee_frame)].parentJoint
        self.chain_joint_names = [full_model.names[i] for i in full_model.supports[frame_joint]
                                  if i > 0]   # the joints that move the end effector
        self.urdf_joint_names = movable
        if joint_names is None:
            joint_names = movable
        joint_names = list(joint_names)
        not_in_urdf = [name for name in joint_names if name not in movable]
        if not_in_urdf:
            raise ValueError(f'joints {not_in_urdf} not in the URDF (as movable joints); '
                             f'movable joints: {movable}')
        locked = [full_model.getJointId(name) for name in movable if name not in joint_names]
        self.model = (pin.buildReducedModel(full_model, locked, pin.neutral(full_model))
                      if locked else full_model)
        self.data = self.model.createData()
        self.ee_frame = ee_frame
        self.frame_id = self.model.getFrameId(ee_frame)
        self.joint_names = joint_names
        self.smoothing = float(smoothing)
        # |q_dot| beyond this (rad/s or m/s) is a sensor fault, not motion: treated like NaN.
        self.max_joint_velocity = float(max_joint_velocity)

        self._q_index, self._q_size, self._v_index = [], [], []
        for name in joint_names:
            joint = self.model.joints[self.model.getJointId(name)]
            if joint.nv != 1:
                raise ValueError(f'joint {name!r} has {joint.nv} DoF; only 1-DoF joints '
                                 '(revolute, continuous, prismatic) can come from joint states')
            self._q_index.append(joint.idx_q)
            self._q_size.append(joint.nq)   # 2 for continuous joints: (cos, sin)
            self._v_index.append(joint.idx_v)
        self._known_names = set(movable)
        self._neutral = pin.neutral(self.model)
        self.reset()

    @staticmethod
    def from_file(path, ee_frame: str, joint_names: list[str] | None = None,
                  smoothing: float = 0.0) -> 'EndEffectorVelocity':
        return EndEffectorVelocity(pathlib.Path(path).read_text(), ee_frame, joint_names, smoothing)

    def reset(self):
        """Forget the previous sample (finite differences) and the smoothing state."""
        self._previous_pose: pin.SE3 | None = None
        self._previous_stamp = math.nan
        self._smoothed: tuple[np.ndarray, np.ndarray] | None = None
        self.last_pose: pin.SE3 | None = None

    # ------------------------------------------------------------------ kinematics
    def configuration(self, positions_by_joint: np.ndarray) -> np.ndarray:
        """Pinocchio configuration vector from joint positions in ``joint_names`` order."""
        q = self._neutral.copy()
        for value, index, size in zip(positions_by_joint, self._q_index, self._q_size):
            if size == 1:
                q[index] = value
            else:
                q[index:index + 2] = (math.cos(value), math.sin(value))
        return q

    def forward_kinematics(self, positions_by_joint) -> pin.SE3:
        """World pose of the end-effector frame for positions in ``joint_names`` order."""
        pin.framesForwardKinematics(self.model, self.data, self.configuration(positions_by_joint))
        return pin.SE3(self.data.oMf[self.frame_id])

    def jacobian(self, positions_by_joint) -> np.ndarray:
        """6 x len(joint_names) Jacobian [linear; angular], LOCAL_WORLD_ALIGNED."""
        jacobian = pin.computeFrameJacobian(self.model, self.data,
                                            self.configuration(positions_by_joint), self.frame_id,
                                            pin.ReferenceFrame.LOCAL_WORLD_ALIGNED)
        # eigenpy hands a 6 x 1 matrix back as a vector: restore the column axis.
        return np.asarray(jacobian).reshape(6, self.model.nv)[:, self._v_index]

    # ------------------------------------------------------------------ estimation
    def update(self, names, positions, velocities, stamp: float) -> VelocityEstimate:
        names = list(names)
        positions = np.asarray(positions if positions is not None else [], dtype=np.float64).reshape(-1)
        velocities = np.asarray(velocities if velocities is not None else [], dtype=np.float64).reshape(-1)
        use_jacobian = velocities.size > 0
        source = 'jacobian' if use_jacobian else 'finite_difference'
        stamp = float(stamp)

        def invalid(reason: str) -> VelocityEstimate:
            self._smoothed = None
            return VelocityEstimate.invalid(reason, source, stamp)

        if positions.size != len(names):
            return invalid(f'{positions.size} joint positions for {len(names)} joint names')
        if use_jacobian and velocities.size != len(names):
            return invalid(f'{velocities.size} joint velocities for {len(names)} joint names')
        index = {name: i for i, name in enumerate(names)}
        missing = [name for name in self.joint_names if name not in index]
        if missing:
            return invalid(', '.join(f'joint {name!r} missing' for name in missing))
        selected = [index[name] for name in self.joint_names]
        q_values = positions[selected]
        if not np.all(np.isfinite(q_values)):
            return invalid(f'non-finite joint positions ({_non_finite(self.joint_names, q_values)})')
        if use_jacobian:
            qdot = velocities[selected]
            if not np.all(np.isfinite(qdot)):
                return invalid(f'non-finite joint velocities ({_non_finite(self.joint_names, qdot)})')
            too_fast = [n for n, v in zip(self.joint_names, qdot) if abs(v) > self.max_joint_velocity]
            if too_fast:
                return invalid(f'non-physical joint velocities beyond max_joint_velocity '
                               f'{self.max_joint_velocity:g} ({", ".join(too_fast)})')
        if not math.isfinite(stamp):
            return invalid('stamp is not finite')
        unknown = [name for name in names if name not in self._known_names]
        note = f'unknown joints ignored: {", ".join(unknown)}' if unknown else ''

        pose = self.forward_kinematics(q_values)
        previous_pose, previous_stamp = self._previous_pose, self._previous_stamp
        if use_jacobian:
            twist = self.jacobian(q_values) @ qdot
            linear, angular = twist[:3], twist[3:]
        else:
            if previous_pose is None:
                self._remember(pose, stamp)
                return invalid('waiting for a second sample')
            dt = stamp - previous_stamp
            if dt <= 0.0:
                if dt < 0.0:   # time went backwards (e.g. a simulator reset): start over
                    self._remember(pose, stamp)
                return invalid(f'stamp did not increase (dt = {dt:.6f} s)')
            linear = (pose.translation - previous_pose.translation) / dt
            angular = pin.log3(pose.rotation @ previous_pose.rotation.T) / dt
        self._remember(pose, stamp)

        linear, angular = np.array(linear, dtype=np.float64), np.array(angular, dtype=np.float64)
        if not (np.all(np.isfinite(linear)) and np.all(np.isfinite(angular))):
            return invalid('the end-effector twist is not finite')
        if self.smoothing > 0.0 and self._smoothed is not None:
            a = self.smoothing
            linear = a * self._smoothed[0] + (1.0 - a) * linear
            angular = a * self._smoothed[1] + (1.0 - a) * angular
        self._smoothed = (linear, angular)
        return VelocityEstimate(linear.copy(), angular.copy(), True, note, source, stamp)

    def _remember(self, pose: pin.SE3, stamp: float):
        self._previous_pose, self._previous_stamp = pose, stamp
        self.last_pose = pose


def _quaternion_from_rotvec(rotvec) -> np.ndarray:
    """(w, x, y, z) of a rotation vector."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.array([1.0, 0.0, 0.0, 0.0])
    return np.concatenate([[math.cos(angle / 2)], math.sin(angle / 2) * rotvec / angle])


class ProprioBuilder:
    """The model's proprio vector from joint positions (see the ``proprio_source`` parameter).

    ``ee_pose``: end-effector position and rotation vector in the URDF root frame (pinocchio
    forward kinematics), then the positions of ``extra_joints``. The rotation vector comes from
    the quaternion whose sign is nearest ``reference_rotvec``'s, as the simulator records it, so
    it does not flip around a tool-down pose (angle pi). ``joint_positions``: the positions of
    ``extra_joints``. ``zeros``: ``dim`` zeros.
    """

    def __init__(self, source: str, dim: int, urdf_xml: str = '', ee_frame: str = '',
                 extra_joints=(), reference_rotvec=(0.0, 0.0, 0.0)):
        self.source, self.dim, self.extra_joints = source, int(dim), list(extra_joints)
        self.chain_joints: list[str] = []
        if source == 'ee_pose':
            import pinocchio as pin
            if not urdf_xml:
                raise ValueError("proprio_source 'ee_pose' needs robot_description or urdf_path")
            try:
                self._model = pin.buildModelFromXML(urdf_xml)
            except Exception as error:  # noqa: BLE001 - pinocchio raises plain RuntimeErrors
                raise ValueError(f'cannot parse the URDF ({error})') from None
            if not self._model.existFrame(ee_frame):
                raise ValueError(f"ee_frame '{ee_frame}' is not a frame of the URDF")
            self._pin, self._data = pin, self._model.createData()
            self._frame = self._model.getFrameId(ee_frame)
            joint = self._model.frames[self._frame].parentJoint
            while joint > 0:                       # the joints between the root and the frame
                self.chain_joints.insert(0, self._model.names[joint])
                joint = self._model.parents[joint]
            self._reference = _quaternion_from_rotvec(reference_rotvec)
            self._q0 = pin.neutral(self._model)

    @property
    def required_joints(self) -> list[str]:
        return [] if self.source == 'zeros' else self.chain_joints + self.extra_joints

    def ee_pose(self, positions: dict[str, float]) -> np.ndarray:
        """Position (3) and rotation vector (3) of the end-effector frame."""
        model, q = self._model, self._q0.copy()
        for name in self.chain_joints:
            joint = model.joints[model.getJointId(name)]
            if joint.nq == 1:
                q[joint.idx_q] = positions[name]
            else:                                  # continuous joint: (cos, sin)
                q[joint.idx_q:joint.idx_q + 2] = (math.cos(positions[name]), math.sin(positions[name]))
        self._pin.framesForwardKinematics(model, self._data, q)
        placement = self._data.oMf[self._frame]
        x, y, z, w = self._pin.Quaternion(placement.rotation).coeffs()
        quat = np.array([w, x, y, z])
        if np.dot(quat, self._reference) < 0:
            quat = -quat
        sin_half = float(np.linalg.norm(quat[1:]))
        rotvec = np.zeros(3) if sin_half < 1e-12 else quat[1:] / sin_half * 2.0 * math.atan2(sin_half, quat[0])
        return np.concatenate([np.array(placement.translation, dtype=np.float64), rotvec])

    def build(self, positions: dict[str, float]) -> np.ndarray:
        if self.source == 'zeros':
            return np.zeros(self.dim)
        extra = np.array([positions[name] for name in self.extra_joints], dtype=np.float64)
        if self.source == 'joint_positions':
            return extra
        return np.concatenate([self.ee_pose(positions), extra])
