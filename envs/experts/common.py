"""Scripted expert demonstrators for the robomimic tasks: shared pieces.

The robomimic hub datasets cannot be downloaded here, so the built-in demonstration datasets are rolled
out by scripted experts that drive robosuite's OSC_POSE controller (delta inputs in [-1, 1]; one unit is
0.05 m and 0.5 rad per control step, expressed in the frame of the arm's base).

Robomimic ships "ph" (one proficient human) and "mh" (six operators of three skill tiers: 2 "better",
2 "okay", 2 "worse", 50 demos each) datasets. `DemonstratorStyle` is the knob that imitates this: it
perturbs a clean scripted motion with correlated action noise, pauses and small back-offs, detours,
slower or more aggressive servoing, imprecise grasps and impatient grasp closing. `sample_style("ph")`
gives a proficient operator; `sample_style("mh")` draws one of six fixed operators (tier recorded in
`DemonstratorStyle.tier`, so dataset writers can emit robomimic's `mask/better|okay|worse` keys) and
jitters its parameters per episode.

`ScriptedExpert` is the base of every task expert: it reads the simulator state, turns Cartesian
targets into OSC actions (`servo`), and passes the clean action through the style (`StyleFilter`).
All randomness comes from the generator handed in, so an expert is deterministic given its seed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from core.errors import BenchError

ROT_NOISE_FRACTION = 0.5  # rotation noise relative to translation noise (operators mostly translate)
GRIPPER_OPEN = -1.0
GRIPPER_CLOSE = 1.0
PICK_HOVER_HEIGHT = 0.10  # metres above the grasp point for the pre-grasp pose
QUALITIES = ("ph", "mh", "better", "okay", "worse")
MH_TIERS = ("better", "okay", "worse")

# Gripper frame (the controller's eef site) pointing straight down with yaw 0: x along world x,
# z along world -z. `down_rotation(yaw)` turns it about the world z axis.
_DOWN = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])


# ----------------------------------------------------------------------------------------------------
# rotation utilities (quaternions are (x, y, z, w), robosuite's observation convention)


def quat_to_mat(quat_xyzw: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix of a unit quaternion given as (x, y, z, w)."""
    x, y, z, w = np.asarray(quat_xyzw, dtype=float) / np.linalg.norm(quat_xyzw)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def mat_to_rotvec(mat: np.ndarray) -> np.ndarray:
    """Axis-angle vector (axis * angle, angle in [0, pi]) of a rotation matrix."""
    cos = np.clip((np.trace(mat) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-7:
        return np.zeros(3)
    if np.pi - angle < 1e-4:
        # near pi the antisymmetric part vanishes: take the axis from the symmetric part
        sym = (mat + np.eye(3)) / 2.0
        axis = sym[np.argmax(np.diag(sym))]
        return angle * axis / np.linalg.norm(axis)
    axis = np.array([mat[2, 1] - mat[1, 2], mat[0, 2] - mat[2, 0], mat[1, 0] - mat[0, 1]])
    return angle * axis / (2.0 * np.sin(angle))


def rotz(angle: float) -> np.ndarray:
    """Rotation matrix about the z axis."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def wrap_angle(angle: float) -> float:
    """Angle wrapped to [-pi, pi)."""
    return float((angle + np.pi) % (2.0 * np.pi) - np.pi)


def yaw_of_quat(quat_xyzw: np.ndarray) -> float:
    """Heading (rotation about world z) of a body's x axis."""
    mat = quat_to_mat(quat_xyzw)
    return float(np.arctan2(mat[1, 0], mat[0, 0]))


def down_rotation(yaw: float) -> np.ndarray:
    """Gripper orientation pointing straight down, turned by `yaw` about the world z axis."""
    return rotz(yaw) @ _DOWN


def gripper_yaw(rot: np.ndarray) -> float:
    """Yaw of a (roughly) down-pointing gripper frame, the inverse of `down_rotation`."""
    return float(np.arctan2(rot[1, 0], rot[0, 0]))


def closest_symmetric_yaw(object_yaw: float, current_yaw: float, period: float) -> float:
    """The yaw among `object_yaw + k * period` nearest to `current_yaw` (e.g. period pi/2 for a cube)."""
    k = np.round((current_yaw - object_yaw) / period)
    return float(object_yaw + k * period)


# ----------------------------------------------------------------------------------------------------
# OSC_POSE action helpers


def pose_servo_action(
    pos: np.ndarray,
    rot: np.ndarray,
    target_pos: np.ndarray,
    target_rot: np.ndarray | None,
    base_rot: np.ndarray,
    pos_gain: float = 15.0,
    rot_gain: float = 1.5,
    max_pos: float = 1.0,
    max_rot: float = 1.0,
) -> np.ndarray:
    """Proportional OSC_POSE delta action (6,) moving the gripper toward a target pose.

    `pos_gain` is in action units per metre (15 saturates at ~7 cm of error) and `rot_gain` in action
    units per radian. The translation and rotation parts are clipped by norm (so the path stays
    straight) to `max_pos` / `max_rot`, then per dimension to [-1, 1]. World-frame errors are rotated
    into the controller frame (the arm base), `base_rot` being that frame's world orientation.
    `target_rot=None` keeps the current orientation.
    """
    pos_err = base_rot.T @ (np.asarray(target_pos, dtype=float) - pos)
    rot_err = np.zeros(3) if target_rot is None else base_rot.T @ mat_to_rotvec(target_rot @ rot.T)
    return np.concatenate([clip_norm(pos_gain * pos_err, max_pos), clip_norm(rot_gain * rot_err, max_rot)])


def clip_norm(vec: np.ndarray, max_norm: float) -> np.ndarray:
    """`vec` scaled down to norm `max_norm` if longer, then clipped to the action box [-1, 1]."""
    norm = np.linalg.norm(vec)
    if norm > max_norm:
        vec = vec * (max_norm / norm)
    return np.clip(vec, -1.0, 1.0)


def rotation_error(rot: np.ndarray, target_rot: np.ndarray) -> float:
    """Angle in radians between two orientations."""
    return float(np.linalg.norm(mat_to_rotvec(target_rot @ rot.T)))


def eef_site_id(env, robot: int = 0, arm: str = "right") -> int:
    """MuJoCo site id of the point the OSC controller drives (the grip site between the fingertips)."""
    return env.robots[robot].eef_site_id[arm]


def eef_pose(env, robot: int = 0, arm: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """World position (3,) and rotation matrix (3, 3) of the controller's end-effector site."""
    site = eef_site_id(env, robot, arm)
    return np.array(env.sim.data.site_xpos[site]), np.array(env.sim.data.site_xmat[site]).reshape(3, 3)


def controller_base_rotation(env, robot: int = 0, arm: str = "right") -> np.ndarray:
    """World orientation of the frame OSC delta inputs are expressed in (robosuite's `<prefix><arm>_center`
    site; identity for the single-arm robomimic tasks, rotated for two-arm setups)."""
    name = f"{env.robots[robot].robot_model.naming_prefix}{arm}_center"
    return np.array(env.sim.data.site_xmat[env.sim.model.site_name2id(name)]).reshape(3, 3)


def body_pose(env, body_id: int) -> tuple[np.ndarray, np.ndarray]:
    """World position (3,) and quaternion (x, y, z, w) of a body."""
    w, x, y, z = env.sim.data.body_xquat[body_id]
    return np.array(env.sim.data.body_xpos[body_id]), np.array([x, y, z, w])


def gripper_opening(env, robot: int = 0, arm: str = "right") -> float:
    """Distance between the two finger joints (about 0.08 fully open, near 0 fully closed)."""
    qpos = env.sim.data.qpos[env.robots[robot]._ref_gripper_joint_pos_indexes[arm]]
    return float(qpos[0] - qpos[1])



# ----------------------------------------------------------------------------------------------------
# demonstrator styles


@dataclass(frozen=True)
class DemonstratorStyle:
    """How a (simulated) human operator deviates from the clean scripted motion."""

    tier: str = "ph"
    """Skill tier: "ph" (proficient) or robomimic mh's "better", "okay", "worse"."""
    operator: int = 0
    """Operator id: 0 for ph, 1..6 for the six mh operators (two per tier)."""
    action_noise_std: float = 0.02
    """Std of the Gaussian noise added to the translation dims (action units, stationary std); the
    rotation dims get `ROT_NOISE_FRACTION` of it."""
    noise_correlation: float = 0.7
    """AR(1) coefficient of that noise: human jitter drifts over several steps rather than being white."""
    speed: float = 1.0
    """Largest commanded translation and rotation, as a fraction of the controller's per-step limit."""
    gain: float = 1.0
    """Multiplier on the proportional servo gains (<1 sluggish and slow to settle, >1 aggressive)."""
    hesitation_prob: float = 0.0
    """Per-step probability of starting a pause (outside pauses)."""
    hesitation_steps: tuple[int, int] = (3, 8)
    """Inclusive range of a pause's length in steps."""
    backoff_prob: float = 0.0
    """Probability that a pause is a small back-off (moving against the last commanded direction)."""
    backoff_speed: float = 0.3
    """Translation action used while backing off."""
    backoff_steps: int = 3
    """A back-off lasts at most this many steps of the pause; the rest of the pause is still."""
    detour_prob: float = 0.0
    """Probability that a free-space transit goes through an extra randomly displaced waypoint."""
    detour_scale: float = 0.0
    """Std in metres of that waypoint's displacement from the straight path (xy; half of it in z)."""
    grasp_pos_std: float = 0.002
    """Std in metres of the horizontal error of the chosen grasp point."""
    grasp_height_std: float = 0.002
    """Std in metres of the error of the chosen grasp height."""
    grasp_yaw_std: float = 0.02
    """Std in radians of the gripper yaw error at the grasp."""
    position_tolerance: float = 0.008
    """How close (metres) to a waypoint the operator gets before moving on."""
    grasp_wait: int = 6
    """Steps spent closing the gripper before lifting (too few and the fingers are not yet tight)."""
    lift_height: float = 0.15
    """Height in metres the object is lifted to above its resting height before a transit or hold."""


# Six mh operators, two per tier: base parameters. Per episode, `sample_style` jitters the speed and
# noise of the operator drawn. The numbers are chosen so the mix reproduces robomimic mh's shape: all
# tiers mostly succeed, "worse" operators are slow, noisy and fail more often.
_MH_OPERATORS: tuple[DemonstratorStyle, ...] = (
    DemonstratorStyle(
        tier="better", operator=1, action_noise_std=0.05, speed=0.85, gain=0.9, hesitation_prob=0.01,
        hesitation_steps=(3, 8), backoff_prob=0.2, detour_prob=0.2, detour_scale=0.03,
        grasp_pos_std=0.004, grasp_height_std=0.004, grasp_yaw_std=0.06, position_tolerance=0.01,
        grasp_wait=6, lift_height=0.12,
    ),
    DemonstratorStyle(
        tier="better", operator=2, action_noise_std=0.04, speed=0.7, gain=1.1, hesitation_prob=0.015,
        hesitation_steps=(2, 6), backoff_prob=0.3, detour_prob=0.3, detour_scale=0.03,
        grasp_pos_std=0.004, grasp_height_std=0.004, grasp_yaw_std=0.06, position_tolerance=0.01,
        grasp_wait=7, lift_height=0.18,
    ),
    DemonstratorStyle(
        tier="okay", operator=3, action_noise_std=0.07, speed=0.6, gain=0.8, hesitation_prob=0.02,
        hesitation_steps=(4, 12), backoff_prob=0.3, detour_prob=0.4, detour_scale=0.05,
        grasp_pos_std=0.006, grasp_height_std=0.006, grasp_yaw_std=0.1, position_tolerance=0.012,
        grasp_wait=5, lift_height=0.1,
    ),
    DemonstratorStyle(
        tier="okay", operator=4, action_noise_std=0.08, speed=0.75, gain=1.3, hesitation_prob=0.02,
        hesitation_steps=(3, 10), backoff_prob=0.4, detour_prob=0.5, detour_scale=0.05,
        grasp_pos_std=0.007, grasp_height_std=0.007, grasp_yaw_std=0.1, position_tolerance=0.014,
        grasp_wait=5, lift_height=0.2,
    ),
    DemonstratorStyle(
        tier="worse", operator=5, action_noise_std=0.1, speed=0.42, gain=0.7, hesitation_prob=0.035,
        hesitation_steps=(5, 18), backoff_prob=0.4, detour_prob=0.6, detour_scale=0.08,
        grasp_pos_std=0.009, grasp_height_std=0.009, grasp_yaw_std=0.15, position_tolerance=0.016,
        grasp_wait=4, lift_height=0.1,
    ),
    DemonstratorStyle(
        tier="worse", operator=6, action_noise_std=0.12, speed=0.65, gain=1.4, hesitation_prob=0.025,
        hesitation_steps=(4, 15), backoff_prob=0.5, detour_prob=0.7, detour_scale=0.08,
        grasp_pos_std=0.012, grasp_height_std=0.01, grasp_yaw_std=0.18, position_tolerance=0.018,
        grasp_wait=3, lift_height=0.22,
    ),
)


def sample_style(quality: str, rng: np.random.Generator) -> DemonstratorStyle:
    """Draw a demonstrator: "ph" a proficient operator, "mh" one of six operators (equal odds, like
    robomimic mh's 50 demos per operator), or "better" / "okay" / "worse" an operator of that tier.
    Speed and noise are jittered per episode (a person is not the same every demo)."""
    if quality not in QUALITIES:
        raise BenchError(f"unknown demonstrator quality {quality!r}; choose one of {', '.join(QUALITIES)}")
    if quality == "ph":
        return DemonstratorStyle(
            speed=float(rng.uniform(0.9, 1.0)),
            action_noise_std=float(rng.uniform(0.01, 0.03)),
            lift_height=float(rng.uniform(0.13, 0.17)),
        )
    operators = [op for op in _MH_OPERATORS if quality in ("mh", op.tier)]
    style = operators[rng.integers(len(operators))]
    return replace(
        style,
        speed=float(np.clip(style.speed * rng.uniform(0.85, 1.15), 0.3, 1.0)),
        action_noise_std=float(style.action_noise_std * rng.uniform(0.8, 1.2)),
    )


class StyleFilter:
    """Turns a clean arm action (6,) into what the operator actually commands: pauses (the first steps
    of some of them a back-off against the current motion), then AR(1)-correlated noise, then the
    action box."""

    def __init__(self, style: DemonstratorStyle, rng: np.random.Generator):
        self.style = style
        self.rng = rng
        self.noise = np.zeros(6)
        self.noise_std = style.action_noise_std * np.array([1.0, 1.0, 1.0, *[ROT_NOISE_FRACTION] * 3])
        self.pause_left = 0
        self.backoff_left = 0
        self.backoff_action = np.zeros(6)

    def __call__(self, arm_action: np.ndarray) -> np.ndarray:
        s = self.style
        if self.pause_left == 0 and s.hesitation_prob > 0 and self.rng.random() < s.hesitation_prob:
            lo, hi = s.hesitation_steps
            self.pause_left = int(self.rng.integers(lo, hi + 1))
            direction = arm_action[:3]
            self.backoff_left = 0
            if self.rng.random() < s.backoff_prob and np.linalg.norm(direction) > 1e-3:
                self.backoff_left = min(s.backoff_steps, self.pause_left)
                self.backoff_action = np.zeros(6)
                self.backoff_action[:3] = -s.backoff_speed * direction / np.linalg.norm(direction)
        if self.pause_left > 0:
            self.pause_left -= 1
            arm_action = self.backoff_action if self.backoff_left > 0 else np.zeros(6)
            self.backoff_left = max(self.backoff_left - 1, 0)
        rho = s.noise_correlation
        self.noise = rho * self.noise + np.sqrt(1.0 - rho**2) * self.noise_std * self.rng.standard_normal(6)
        return np.clip(arm_action + self.noise, -1.0, 1.0)


# ----------------------------------------------------------------------------------------------------
# expert base


class ScriptedExpert:
    """Base of a single-arm scripted expert: a phase machine over Cartesian waypoints.

    Subclasses implement `plan() -> (arm_action (6,), gripper)` using `servo` / `reached`, and call
    `set_phase` to move on. `act(obs)` adds the demonstrator style. Construct after `env.reset()`.
    """

    def __init__(self, env, rng: np.random.Generator, style: DemonstratorStyle, robot: int = 0, arm: str = "right"):
        self.env = env
        self.rng = rng
        self.style = style
        self.robot = robot
        self.arm = arm
        self.filter = StyleFilter(style, rng)
        self.phase = ""
        self.phase_steps = 0
        self.steps = 0
        self._done = False

    @property
    def done(self) -> bool:
        """The script has finished; `act` then holds the arm still."""
        return self._done

    def plan(self) -> tuple[np.ndarray, float]:
        raise NotImplementedError

    def act(self, obs: dict | None = None) -> np.ndarray:
        """Raw env action (7,): 6 OSC_POSE deltas and the gripper command."""
        arm_action, gripper = self.plan()
        if not self._done:
            arm_action = self.filter(arm_action)
        self.steps += 1
        self.phase_steps += 1
        return np.concatenate([arm_action, [gripper]]).astype(np.float64)

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.phase_steps = 0

    def finish(self) -> None:
        """End the script: from now on `plan` sees phase "done" and `act` adds no style."""
        self._done = True
        self.set_phase("done")

    # -- state ---------------------------------------------------------------------------------------

    def eef(self) -> tuple[np.ndarray, np.ndarray]:
        return eef_pose(self.env, self.robot, self.arm)

    def servo(self, target_pos: np.ndarray, target_rot: np.ndarray | None, speed: float = 1.0) -> np.ndarray:
        """Style-scaled proportional action toward a target pose; `speed` scales the operator's own."""
        pos, rot = self.eef()
        limit = self.style.speed * speed
        return pose_servo_action(
            pos,
            rot,
            target_pos,
            target_rot,
            controller_base_rotation(self.env, self.robot, self.arm),
            pos_gain=15.0 * self.style.gain,
            rot_gain=1.5 * self.style.gain,
            max_pos=limit,
            max_rot=limit,
        )

    def reached(self, target_pos: np.ndarray, tolerance: float | None = None, axes: slice = slice(None)) -> bool:
        """The gripper is within `tolerance` (default: the operator's) of `target_pos` on `axes`."""
        pos, _ = self.eef()
        tol = self.style.position_tolerance if tolerance is None else tolerance
        return bool(np.linalg.norm((np.asarray(target_pos) - pos)[axes]) < tol)

    def detour_waypoint(self, start: np.ndarray, goal: np.ndarray) -> np.ndarray | None:
        """A displaced midpoint between two waypoints, drawn with the style's detour probability."""
        s = self.style
        if s.detour_prob <= 0 or self.rng.random() >= s.detour_prob:
            return None
        offset = s.detour_scale * self.rng.standard_normal(3) * np.array([1.0, 1.0, 0.5])
        offset[2] = abs(offset[2])  # detour above the straight path, never into the table
        return (np.asarray(start) + np.asarray(goal)) / 2.0 + offset

    # -- top-down pick (shared by the pick-and-place experts) ---------------------------------------

    def aim_grasp(self, object_pos: np.ndarray, grasp_rot: np.ndarray, height_offset: float = 0.0) -> None:
        """Choose a top-down grasp at `object_pos` (raised by `height_offset`) and wrist `grasp_rot`,
        perturbed by the operator's imprecision, and start the pick: phase "detour" (if the operator
        takes one) or "approach"."""
        s = self.style
        noise = self.rng.standard_normal(4)
        self.grasp_rot = rotz(s.grasp_yaw_std * noise[0]) @ grasp_rot
        self.grasp_pos = np.asarray(object_pos) + np.array(
            [s.grasp_pos_std * noise[1], s.grasp_pos_std * noise[2], height_offset + s.grasp_height_std * noise[3]]
        )
        self.hover_pos = self.grasp_pos + np.array([0.0, 0.0, PICK_HOVER_HEIGHT])
        self.detour = self.detour_waypoint(self.eef()[0], self.hover_pos)
        self.set_phase("detour" if self.detour is not None else "approach")

    def pick_step(self) -> tuple[np.ndarray, float] | None:
        """One step of the pick set up by `aim_grasp`: detour -> approach (above the grasp, wrist
        aligned) -> descend -> close (for the operator's `grasp_wait` steps) -> phase "lift", which the
        expert handles. None outside these phases."""
        if self.phase == "detour":
            if self.reached(self.detour, tolerance=0.03):
                self.set_phase("approach")
            return self.servo(self.detour, self.grasp_rot), GRIPPER_OPEN
        if self.phase == "approach":
            # operators move on once roughly aligned, or after a while without getting there
            aligned = rotation_error(self.eef()[1], self.grasp_rot) < 0.15 or self.phase_steps > 40
            if self.reached(self.hover_pos, axes=slice(0, 2)) and aligned:
                self.set_phase("descend")
            return self.servo(self.hover_pos, self.grasp_rot), GRIPPER_OPEN
        if self.phase == "descend":
            if self.reached(self.grasp_pos) or self.phase_steps > 40:  # or stopped by a contact
                self.set_phase("close")
            return self.servo(self.grasp_pos, self.grasp_rot, speed=0.6), GRIPPER_OPEN
        if self.phase == "close":
            if self.phase_steps >= self.style.grasp_wait:
                self.set_phase("lift")
            return self.servo(self.grasp_pos, self.grasp_rot), GRIPPER_CLOSE
        return None

    def release_step(self, then) -> tuple[np.ndarray, float]:
        """Phase "release" after a lost object: open and rise for a few steps, then call `then()`."""
        if self.phase_steps >= 4:
            then()
        return self.servo(self.eef()[0] + np.array([0.0, 0.0, 0.05]), self.grasp_rot, speed=0.5), GRIPPER_OPEN


# ----------------------------------------------------------------------------------------------------
# wrist turns (appended for the Square and Transport experts)


class YawTracker:
    """Continuous (unwrapped) yaw of a down-pointing gripper, so a turn of more than half a revolution
    can be commanded in a chosen direction (`down_rotation` targets alone always take the short way)."""

    def __init__(self, rot: np.ndarray):
        self._raw = gripper_yaw(rot)
        self.value = self._raw

    def update(self, rot: np.ndarray) -> float:
        raw = gripper_yaw(rot)
        self.value += wrap_angle(raw - self._raw)
        self._raw = raw
        return self.value


def wrist_joint(env, robot: int = 0) -> tuple[float, float, float]:
    """Position and (lower, upper) limits of the arm's last joint, which spins the gripper about its axis."""
    model = env.sim.model
    joint = model.joint_name2id(env.robots[robot].robot_joints[-1])
    lower, upper = model.jnt_range[joint]
    return float(env.sim.data.qpos[model.jnt_qposadr[joint]]), float(lower), float(upper)


def plan_wrist_turns(
    env, current_yaw: float, grasp_yaws: list[float], carry_turn: float, robot: int = 0, margin: float = 0.35
) -> tuple[float, float]:
    """Choose how to turn a down-pointing gripper to one of the equivalent `grasp_yaws` and then, holding
    the object, by `carry_turn` (mod 2 pi), keeping the wrist joint `margin` inside its limits.

    For a down-pointing gripper the last joint turns by minus the change of yaw (about world z). Among
    the grasp yaws (each reached by the short way) and the two directions of the carry turn, the pair with
    the least total rotation that stays inside the limits wins (else the one overshooting least).
    Returns (grasp turn, carry turn), both in radians of gripper yaw.
    """
    q, lower, upper = wrist_joint(env, robot)
    lower, upper = lower + margin, upper - margin
    short = wrap_angle(carry_turn)
    carry_options = [short, short - 2.0 * np.pi * np.sign(short)] if abs(short) > 1e-6 else [0.0]
    best, best_cost = (0.0, short), np.inf
    for grasp_yaw in grasp_yaws:
        grasp_turn = wrap_angle(grasp_yaw - current_yaw)
        for turn in carry_options:
            path = [q - grasp_turn, q - grasp_turn - turn]
            overshoot = sum(max(lower - p, 0.0) + max(p - upper, 0.0) for p in path)
            cost = abs(grasp_turn) + abs(turn) + 100.0 * overshoot
            if cost < best_cost:
                best, best_cost = (grasp_turn, turn), cost
    return best
