"""Action-aware coarse/fine controller, driven by the measured end-effector velocity.

SpecPrune-VLA prunes fewer visual tokens ("fine" mode) while the end effector
moves slowly or precisely, because fine manipulation is the part that suffers
from pruning. Their code classifies each *executed normalised action* ``a``::

    v = |a[0:3]|, v_xy = |a[0:2]|, v_z = a[2] (signed), w = |a[3:6]|
    enter fine:  v < 0.4  or  (v_xy < 0.1 and v_z < 0.1 and w < 0.2)
    leave fine:  v_z > 0.2  or  (w > 0.3 and no actions remain queued)
    coarse -> fine drops the queued actions, forcing a fresh inference.

This project feeds the same rule with the **measured** end-effector twist
(world frame, m/s and rad/s, from joint states and kinematics), so the robot's
real motion rather than the model's own output decides how hard to prune.
Differences from the published rule, all deliberate:

* Thresholds are SI parameters (see :class:`ControllerConfig`).
* Hysteresis on speed: fine is also left when ``|v| > fine_exit_speed``
  (``fine_exit_speed = inf`` switches this off and gives the published rule).
* Dwell time: a candidate switch must hold continuously for ``min_dwell_time``
  seconds before it takes effect, so sensor noise cannot make the mode chatter.
* Unknown velocity (None or NaN): fine at once, the safe side (prune less).
* "Leave" wins over "enter": coarse does not switch to fine while a leave
  condition holds. Taken literally, the published rule would enter fine
  (e.g. ``v < 0.4``) and leave it again on the next step (``v_z > 0.2``) while
  the arm lifts slowly, flushing the queue each time. Because entering fine
  flushes the queue, the angular leave condition is checked as if the queue
  were empty when deciding whether to enter.

Plain Python, no torch and no ROS.
"""
import math
from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

from ..options import Options, option

COARSE = 'coarse'
FINE = 'fine'
MODES = (COARSE, FINE)
UNKNOWN_VELOCITY_MODES = ('fine', 'hold')
INF = math.inf

# Scale from SpecPrune-VLA's normalised-action thresholds to the SI defaults below.
# On LIBERO's OSC controller one normalised translation unit is about 0.05 m per
# 20 Hz step (about 1 m/s) and one rotation unit about 0.5 rad per step (about
# 10 rad/s). A tabletop arm's *measured* motion is far slower than those nominal
# maxima, so the defaults take 1/8 of the nominal value: 0.4 unit -> 0.05 m/s.
_SI_PER_TRANSLATION_UNIT = 1.0 * 0.125   # m/s per normalised unit
_SI_PER_ROTATION_UNIT = 10.0 * 0.125     # rad/s per normalised unit


@dataclass(frozen=True)
class ControllerConfig(Options):
    """Thresholds of the coarse/fine controller, in SI units.

    The defaults suit a tabletop arm; a robot config overrides them. Each is the
    published normalised threshold times 0.125 m/s (translation) or
    1.25 rad/s (rotation) per unit. The nominal LIBERO scale is about
    1 m/s and 10 rad/s per unit (0.05 m and 0.5 rad per 20 Hz step), but real
    measured speeds of a tabletop arm are far below those maxima.

    Enter fine (from coarse) when, for a continuous ``min_dwell_time``:
      ``|v| < fine_enter_speed``  (published 0.4), or
      ``|v_xy| < fine_enter_xy_speed`` (0.1) and ``v_z < fine_enter_z_speed`` (0.1,
      signed: descending counts) and ``|w| < fine_enter_angular_speed`` (0.2).
    Leave fine (to coarse) when, for a continuous ``min_dwell_time``:
      ``|v| > fine_exit_speed`` (ours, hysteresis; inf reproduces the published rule), or
      ``v_z > fine_exit_z_speed`` (0.2, upward), or
      ``|w| > fine_exit_angular_speed`` (0.3) while no actions are queued.
    Each exit threshold must be above its matching enter threshold.

    ``unknown_velocity_mode``: 'fine' goes to fine at once when the velocity is
    unknown (None/NaN); 'hold' keeps the current mode.

    ``min_dwell_time`` = 0.1 s, chosen from the simulated arm's measured speed traces
    (``benchmarks/speed_traces.py``, 20 expert episodes at 10 Hz): with no dwell the mode is undone
    within a chunk 1.2 times per episode (chatter at the slow-down threshold); 0.1 s (a switch must
    hold over two consecutive samples) already removes all of it, while 0.3 s (3 of the 8 steps of
    a chunk) cuts the time spent in fine from 32 % to 25 % of the steps and leaves a coarse->fine
    flush less of the chunk to save. Longer only delays the switch to fine, where pruning must ease.
    """

    prefix: ClassVar[str] = 'controller'

    fine_enter_speed: float = option(0.4 * _SI_PER_TRANSLATION_UNIT,                     # 0.05 m/s
                                     'Enter fine below this end-effector speed (m/s).', low=0.0, high=INF)
    fine_enter_xy_speed: float = option(
        0.1 * _SI_PER_TRANSLATION_UNIT,                                                  # 0.0125 m/s
        'Enter fine when the horizontal speed (m/s) is below this (with z and angular).', low=0.0, high=INF)
    fine_enter_z_speed: float = option(
        0.1 * _SI_PER_TRANSLATION_UNIT,                                                  # 0.0125 m/s
        'Enter fine when the vertical speed (m/s, signed) is below this (with xy and angular).', low=0.0, high=INF)
    fine_enter_angular_speed: float = option(
        0.2 * _SI_PER_ROTATION_UNIT,                                                     # 0.25 rad/s
        'Enter fine when the angular speed (rad/s) is below this (with xy and z).', low=0.0, high=INF)
    fine_exit_speed: float = option(0.10, 'Leave fine above this speed (m/s); inf gives the published rule.',
                                    low=0.0, high=INF)
    fine_exit_z_speed: float = option(0.2 * _SI_PER_TRANSLATION_UNIT,                     # 0.025 m/s
                                      'Leave fine above this upward speed (m/s).', low=0.0, high=INF)
    fine_exit_angular_speed: float = option(
        0.3 * _SI_PER_ROTATION_UNIT,                                                     # 0.375 rad/s
        'Leave fine above this angular speed (rad/s) when no actions are queued.', low=0.0, high=INF)
    min_dwell_time: float = option(0.1, 'A mode switch must hold this long (s) before it takes effect.',
                                   low=0.0, high=60.0)
    unknown_velocity_mode: str = option('fine', "Unknown velocity: 'fine' at once, or 'hold' the current mode.",
                                        choices=UNKNOWN_VELOCITY_MODES)

    def check(self):
        for exit_name, enter_name in (('fine_exit_speed', 'fine_enter_speed'),
                                      ('fine_exit_z_speed', 'fine_enter_z_speed'),
                                      ('fine_exit_angular_speed', 'fine_enter_angular_speed')):
            exit_value, enter_value = getattr(self, exit_name), getattr(self, enter_name)
            if not exit_value > enter_value:
                raise ValueError(f'{exit_name} ({exit_value}) must be greater than '
                                 f'{enter_name} ({enter_value}) for hysteresis')


@dataclass(frozen=True)
class ControllerDecision:
    """What one controller step decided.

    ``flush_queue`` is True exactly on a coarse -> fine switch: the queued actions
    were planned with coarse pruning and must be dropped for a fresh inference.
    Speeds are NaN (and ``velocity_valid`` False) when the velocity was unknown.
    """

    mode: str
    switched: bool
    flush_queue: bool
    reason: str
    linear_speed: float = math.nan
    angular_speed: float = math.nan
    velocity_valid: bool = False


def _vector3(value) -> Optional[tuple]:
    """Three finite floats, or None when unknown (None, wrong length, NaN or inf)."""
    if value is None:
        return None
    try:
        x, y, z = (float(c) for c in value)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(c) for c in (x, y, z)):
        return None
    return x, y, z


class CoarseFineController:
    """Chooses 'coarse' or 'fine' pruning from the measured end-effector twist.

    Call :meth:`step` once per velocity sample (or once per control step) with
    the linear velocity (m/s) and angular velocity (rad/s) in the world frame,
    whether actions are still queued, and the sample time in seconds.
    """

    def __init__(self, config: Optional[ControllerConfig] = None, initial_mode: str = COARSE):
        if initial_mode not in MODES:
            raise ValueError(f'initial_mode must be one of {MODES}, got {initial_mode!r}')
        self.config = config if config is not None else ControllerConfig()
        self.initial_mode = initial_mode
        self.reset()

    def reset(self, mode: Optional[str] = None) -> None:
        """Back to ``mode`` (default: the initial mode) with no pending switch."""
        mode = self.initial_mode if mode is None else mode
        if mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
        self.mode = mode
        self._pending_since: Optional[float] = None  # when the current switch candidate first held

    def update_config(self, new_config: ControllerConfig) -> None:
        """Swap thresholds live (e.g. from a ROS parameter change); keeps the mode."""
        if not isinstance(new_config, ControllerConfig):
            raise TypeError(f'expected ControllerConfig, got {type(new_config).__name__}')
        self.config = new_config
        self._pending_since = None  # a candidate judged by the old thresholds starts over

    # --- the rule ------------------------------------------------------------

    def _leave_fine_reason(self, v: float, v_z: float, w: float, actions_queued: bool) -> str:
        """Why fine mode should be left, or '' if it should not."""
        c = self.config
        if v > c.fine_exit_speed:
            return f'|v|={v:.4f} > fine_exit_speed={c.fine_exit_speed:.4f} m/s'
        if v_z > c.fine_exit_z_speed:
            return f'v_z={v_z:.4f} > fine_exit_z_speed={c.fine_exit_z_speed:.4f} m/s (upward)'
        if w > c.fine_exit_angular_speed and not actions_queued:
            return (f'|w|={w:.4f} > fine_exit_angular_speed={c.fine_exit_angular_speed:.4f} rad/s '
                    'with no actions queued')
        return ''

    def _enter_fine_reason(self, v: float, v_xy: float, v_z: float, w: float) -> str:
        """Why coarse mode should switch to fine, or '' if it should not."""
        c = self.config
        # Entering flushes the queue, so judge the angular leave condition with an empty queue;
        # otherwise we would enter and leave again straight away.
        blocking = self._leave_fine_reason(v, v_z, w, actions_queued=False)
        if blocking:
            return ''
        if v < c.fine_enter_speed:
            return f'|v|={v:.4f} < fine_enter_speed={c.fine_enter_speed:.4f} m/s'
        if v_xy < c.fine_enter_xy_speed and v_z < c.fine_enter_z_speed and w < c.fine_enter_angular_speed:
            return (f'|v_xy|={v_xy:.4f} < {c.fine_enter_xy_speed:.4f}, v_z={v_z:.4f} < '
                    f'{c.fine_enter_z_speed:.4f} m/s and |w|={w:.4f} < {c.fine_enter_angular_speed:.4f} rad/s')
        return ''

    def _switch(self, new_mode: str, reason: str, speeds: dict) -> ControllerDecision:
        flush = self.mode == COARSE and new_mode == FINE
        self.mode = new_mode
        self._pending_since = None
        return ControllerDecision(new_mode, True, flush, f'switch to {new_mode}: {reason}', **speeds)

    def step(self, linear_velocity: Optional[Sequence[float]], angular_velocity: Optional[Sequence[float]],
             actions_queued: bool, stamp: float) -> ControllerDecision:
        """Feed one velocity sample taken at ``stamp`` seconds; returns the mode to use now.

        Either velocity may be None or contain NaN, meaning "unknown".
        """
        stamp = float(stamp)
        if not math.isfinite(stamp):
            raise ValueError(f'stamp must be a finite time in seconds, got {stamp!r}')
        linear, angular = _vector3(linear_velocity), _vector3(angular_velocity)

        if linear is None or angular is None:
            self._pending_since = None
            unknown = dict(linear_speed=math.nan, angular_speed=math.nan, velocity_valid=False)
            if self.config.unknown_velocity_mode == FINE and self.mode != FINE:
                return self._switch(FINE, 'end-effector velocity unknown', unknown)
            return ControllerDecision(self.mode, False, False, f'velocity unknown, staying {self.mode}', **unknown)

        v = math.sqrt(linear[0] ** 2 + linear[1] ** 2 + linear[2] ** 2)
        v_xy = math.hypot(linear[0], linear[1])
        v_z = linear[2]
        w = math.sqrt(angular[0] ** 2 + angular[1] ** 2 + angular[2] ** 2)
        speeds = dict(linear_speed=v, angular_speed=w, velocity_valid=True)

        if self.mode == FINE:
            target, why = COARSE, self._leave_fine_reason(v, v_z, w, bool(actions_queued))
        else:
            target, why = FINE, self._enter_fine_reason(v, v_xy, v_z, w)

        if not why:
            self._pending_since = None
            return ControllerDecision(self.mode, False, False, f'staying {self.mode}', **speeds)

        # The candidate must hold continuously; a clock that jumps back restarts it.
        if self._pending_since is None or stamp < self._pending_since:
            self._pending_since = stamp
        held = stamp - self._pending_since
        if held >= self.config.min_dwell_time:
            return self._switch(target, why, speeds)
        return ControllerDecision(
            self.mode, False, False,
            f'pending {target} ({held:.3f}/{self.config.min_dwell_time:.3f} s): {why}', **speeds)
