"""The MuJoCo scene of the tabletop suite: the 6-DoF arm of ``assets/arm.urdf`` plus table, cubes, pads,
lights, cameras and actuators, and the rotation helpers the simulator and its expert share.

The robot is loaded from the URDF with ``mujoco.MjSpec`` (so the kinematic chain is the URDF's,
the one pinocchio uses in ``vla_prune_ros.control.kinematics``); everything else is added programmatically.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

import mujoco
import numpy as np


CAMERA_NAMES = ('primary', 'wrist')

ARM_JOINT_NAMES = tuple(f'joint{i}' for i in range(1, 7))
FINGER_JOINT_NAMES = ('finger_left_joint', 'finger_right_joint')
TCP_FRAME = 'tool0'
TCP_SITE = 'tcp'


COLOURS = {
    'red': (0.85, 0.12, 0.10, 1.0),
    'green': (0.15, 0.62, 0.20, 1.0),
    'blue': (0.12, 0.28, 0.85, 1.0),
    'yellow': (0.95, 0.80, 0.08, 1.0),
}
COLOUR_NAMES = tuple(COLOURS)
NUM_CUBES = 3
NUM_PADS = 2
CUBE_HALF = 0.02              # 4 cm cubes
CUBE_MASS = 0.1
PAD_HALF = 0.03               # 6 cm square pads
PAD_THICKNESS = 0.001
TABLE_HALF = (0.45, 0.45, 0.02)
TABLE_CENTRE_X = 0.35

HOME_TCP_POSITION = np.array([0.35, 0.0, 0.15])
# Tool pointing down, fingers opening along world y: a half turn about y.
HOME_TCP_ROTATION = np.diag([-1.0, 1.0, -1.0])
HOME_JOINT_GUESS = np.array([0.0, 0.3, 1.6, 0.0, 1.24, 0.0])

# Position servo stiffness per arm joint (N m / rad); damping is set for critical damping at home.
ARM_KP = np.array([1500.0, 2500.0, 1500.0, 300.0, 300.0, 150.0])
ARM_ARMATURE = np.array([0.05, 0.05, 0.05, 0.02, 0.02, 0.02])
FINGER_KP = 200.0

# Collision groups: robot geoms do not collide with each other, everything else does.
ROBOT_CONTYPE, ROBOT_CONAFFINITY = 2, 1
WORLD_CONTYPE, WORLD_CONAFFINITY = 1, 3


# ----------------------------------------------------------------------------- rotations

def rotation_matrix_from_vector(rotvec) -> np.ndarray:
    """Rodrigues: rotation vector (axis * angle) -> 3x3 matrix."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.eye(3)
    k = rotvec / angle
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * kx + (1.0 - np.cos(angle)) * kx @ kx


def quaternion_from_matrix(rotation) -> np.ndarray:
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, np.ascontiguousarray(rotation, dtype=np.float64).reshape(9))
    return quat


def rotation_vector_from_quaternion(quat) -> np.ndarray:
    """(w, x, y, z) -> axis * angle, angle = 2 atan2(|xyz|, w); keeps the sign of the quaternion."""
    quat = np.asarray(quat, dtype=np.float64)
    sin_half = float(np.linalg.norm(quat[1:]))
    if sin_half < 1e-12:
        return np.zeros(3)
    angle = 2.0 * np.arctan2(sin_half, quat[0])
    return quat[1:] / sin_half * angle


def rotation_vector_from_matrix(rotation) -> np.ndarray:
    """Principal rotation vector (angle in [0, pi]) of a rotation matrix."""
    quat = quaternion_from_matrix(rotation)
    if quat[0] < 0:
        quat = -quat
    return rotation_vector_from_quaternion(quat)


def _look_at_quaternion(position, target, up) -> np.ndarray:
    """Quaternion of a MuJoCo camera at ``position`` looking at ``target`` (camera looks along -z)."""
    forward = np.asarray(target, float) - np.asarray(position, float)
    z_axis = -forward / np.linalg.norm(forward)
    up = np.asarray(up, float)
    y_axis = up - up.dot(z_axis) * z_axis
    y_axis /= np.linalg.norm(y_axis)
    x_axis = np.cross(y_axis, z_axis)
    return quaternion_from_matrix(np.column_stack([x_axis, y_axis, z_axis]))


def _yaw_quaternion(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


# ----------------------------------------------------------------------------- model building

def _urdf_link_colours(urdf_xml: str) -> dict[str, tuple[float, ...]]:
    """Link name -> RGBA of its first visual's material (named or inline)."""
    root = ET.fromstring(urdf_xml)
    named = {}
    for material in root.findall('material'):
        colour = material.find('color')
        if colour is not None:
            named[material.get('name')] = tuple(float(v) for v in colour.get('rgba').split())
    colours = {}
    for link in root.findall('link'):
        material = link.find('visual/material')
        if material is None:
            continue
        colour = material.find('color')
        if colour is not None:
            colours[link.get('name')] = tuple(float(v) for v in colour.get('rgba').split())
        elif material.get('name') in named:
            colours[link.get('name')] = named[material.get('name')]
    return colours


def build_model(urdf_xml: str, physics_dt: float = 0.002, max_render_size: int = 1024) -> mujoco.MjModel:
    """Robot from the URDF plus table, cubes, pads, lights, cameras and actuators."""
    spec = mujoco.MjSpec.from_string(urdf_xml)
    spec.modelname = 'vla_tabletop'
    spec.compiler.fusestatic = False      # keep tool0 (a fixed link) as its own body
    spec.compiler.discardvisual = False   # keep our visual-only geoms (pads, wall); URDF visuals
                                          # were already dropped by the URDF parser
    spec.option.timestep = physics_dt
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.visual.global_.offwidth = max_render_size
    spec.visual.global_.offheight = max_render_size
    spec.visual.quality.offsamples = 0    # no MSAA: faster software rendering
    spec.visual.headlight.ambient = [0.35, 0.35, 0.35]
    spec.visual.headlight.diffuse = [0.35, 0.35, 0.35]
    spec.visual.headlight.specular = [0.0, 0.0, 0.0]

    link_colours = _urdf_link_colours(urdf_xml)
    for body in spec.bodies:
        if body.name == 'world':
            continue
        body.gravcomp = 1.0               # the servos then only fight dynamics, not gravity
        for geom in body.geoms:
            geom.contype, geom.conaffinity = ROBOT_CONTYPE, ROBOT_CONAFFINITY
            geom.rgba = link_colours.get(body.name, (0.7, 0.7, 0.7, 1.0))
            geom.friction = [1.0, 0.005, 0.0001]
    for name, armature in zip(ARM_JOINT_NAMES, ARM_ARMATURE):
        spec.joint(name).armature = armature
    for name in FINGER_JOINT_NAMES:
        spec.joint(name).armature = 0.01

    spec.body(TCP_FRAME).add_site(name=TCP_SITE, size=[0.005, 0, 0], rgba=[1, 0, 1, 0])

    # Wrist camera on the palm, behind the fingers (flange -x is "forward" at home),
    # looking down past the fingertips.
    camera_position = np.array([-0.07, 0.0, -0.015])
    spec.body('link6').add_camera(
        name='wrist', pos=camera_position, fovy=70.0,
        quat=_look_at_quaternion(camera_position, [0.0, 0.0, 0.21], up=[-1.0, 0.0, 0.0]))

    world = spec.worldbody
    world.add_geom(name='floor', type=mujoco.mjtGeom.mjGEOM_PLANE, size=[3, 3, 0.1],
                   pos=[0, 0, -0.75], rgba=[0.32, 0.33, 0.36, 1],
                   contype=WORLD_CONTYPE, conaffinity=WORLD_CONAFFINITY)
    world.add_geom(name='table', type=mujoco.mjtGeom.mjGEOM_BOX, size=TABLE_HALF,
                   pos=[TABLE_CENTRE_X, 0, -TABLE_HALF[2]], rgba=[0.72, 0.64, 0.52, 1],
                   contype=WORLD_CONTYPE, conaffinity=WORLD_CONAFFINITY, friction=[0.6, 0.005, 0.0001])
    world.add_geom(name='back_wall', type=mujoco.mjtGeom.mjGEOM_BOX, size=[0.02, 1.5, 1.0],
                   pos=[-0.6, 0, 0.2], rgba=[0.82, 0.84, 0.86, 1], contype=0, conaffinity=0)
    world.add_light(name='sun', pos=[0.4, 0.3, 1.5], dir=[-0.1, -0.2, -1.0],
                    type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL, castshadow=False,
                    diffuse=[0.6, 0.6, 0.6], specular=[0.1, 0.1, 0.1], ambient=[0.1, 0.1, 0.1])

    # Third-person view from the far side of the table, facing the robot (as LIBERO's agentview).
    primary_position = np.array([0.95, 0.0, 0.50])
    world.add_camera(name='primary', pos=primary_position, fovy=48.0,
                     quat=_look_at_quaternion(primary_position, [0.36, 0.0, 0.02], up=[0, 0, 1]))

    for i in range(NUM_CUBES):
        cube = world.add_body(name=f'cube{i}', pos=[0.4, 0.1 * i, CUBE_HALF])
        cube.add_freejoint(name=f'cube{i}_free')
        cube.add_geom(name=f'cube{i}_geom', type=mujoco.mjtGeom.mjGEOM_BOX, size=[CUBE_HALF] * 3,
                      mass=CUBE_MASS, rgba=COLOURS[COLOUR_NAMES[i]],
                      contype=WORLD_CONTYPE, conaffinity=WORLD_CONAFFINITY,
                      friction=[0.6, 0.005, 0.0001])
    for i in range(NUM_PADS):
        pad = world.add_body(name=f'pad{i}', pos=[0.4, -0.15 * (i + 1), PAD_THICKNESS / 2])
        # Visual only: cubes slide over pads as over the table.
        pad.add_geom(name=f'pad{i}_geom', type=mujoco.mjtGeom.mjGEOM_BOX,
                     size=[PAD_HALF, PAD_HALF, PAD_THICKNESS / 2],
                     rgba=COLOURS[COLOUR_NAMES[i]], contype=0, conaffinity=0)

    for name in ARM_JOINT_NAMES + FINGER_JOINT_NAMES:
        actuator = spec.add_actuator(name=f'{name}_servo', target=name,
                                     trntype=mujoco.mjtTrn.mjTRN_JOINT)
        actuator.set_to_position(kp=FINGER_KP if name in FINGER_JOINT_NAMES else 1.0)
        actuator.ctrllimited = False      # the IK clamps targets; the feed-forward may lead them
        actuator.forcelimited = True
        actuator.forcerange = spec.joint(name).actfrcrange
    return spec.compile()


def set_servo_gains(model: mujoco.MjModel, home_qpos, arm_qpos, arm_dofs, finger_dofs, arm_actuators,
                    finger_actuators) -> np.ndarray:
    """Position servos: kp per joint, kv for critical damping at home. Returns the velocity feed-forward
    lead (s) per arm joint that cancels the steady ramp lag of servo + joint damping: q = ctrl - lead * qdot."""
    data = mujoco.MjData(model)
    data.qpos[arm_qpos] = home_qpos
    mujoco.mj_forward(model, data)
    mass_matrix = np.zeros((model.nv, model.nv))
    mujoco.mj_fullM(model, data, mass_matrix)
    inertia = np.diag(mass_matrix)
    for actuator, dof, kp in zip(arm_actuators, arm_dofs, ARM_KP):
        kv = 2.0 * np.sqrt(kp * inertia[dof])
        model.actuator_gainprm[actuator, 0] = kp
        model.actuator_biasprm[actuator, 1:3] = (-kp, -kv)
    for actuator, dof in zip(finger_actuators, finger_dofs):
        kv = 2.0 * np.sqrt(FINGER_KP * inertia[dof])
        model.actuator_biasprm[actuator, 2] = -kv
    kp = model.actuator_gainprm[arm_actuators, 0]
    kv = -model.actuator_biasprm[arm_actuators, 2]
    return (kv + model.dof_damping[arm_dofs]) / kp
