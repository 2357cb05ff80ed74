"""MuJoCo re-implementation of the Furniture-Bench simulation task one_leg (IsaacGym in the original).

Faithful where it matters for RL fine-tuning, following the furniture-bench code and the fork DPPO used
(`tasks-and-data.md`):
- Scene: the square table's top and four legs (sizes from the wheel's meshes, densities 498.68 and
  369.98 kg/m^3, friction 0.15), the three-sided obstacle fixture, the table, and a Franka Panda (robosuite's
  MJCF and gripper, loaded from the installed robosuite) with the base 1.5 cm above the table.
- Frames: part poses are observed in the AprilTag base frame (x right, y away from the robot, z down; origin
  on the table 0.3015 m in front of the robot base); the end effector in the robot base frame.
- Observation (58): ee position 3, ee rotation 6-D 6 (first two rows of the rotation matrix, pytorch3d's
  convention, as DPPO's wrapper), ee linear velocity 3, ee angular velocity 3, gripper width 1, then
  position + quaternion (x, y, z, w) of top, leg1..leg4 and the obstacle.
- Action (10): absolute ee target in the robot base frame (position 3, 6-D rotation 6, gripper 1: > 0
  closes, < 0 opens, |g| below 0.02 keeps the last command), clipped to furniture-bench's position limits,
  tracked by damped differential IK into joint position targets (stiffness 1000, damping 200, as the fork's
  diffik controller), recomputed every 20 ms, at 10 Hz control.
- Reward: 1.0 the first time the (top, leg4) pair reaches an assembled relative pose (each position axis
  within 5 mm, each rotation axis with cosine >= 0.94); the episode terminates when every pair is
  assembled, and is truncated at 700 steps.
- Randomness: at reset a random horizontal force and vertical torque act on every part for
  `FORCE_SECONDS` (low 0.2 N / 0.007 Nm, med 0.5 N / 0.01 Nm), the obstacle is moved by up to +-2 / +-4 cm
  and the robot's joints by up to +-5 / +-10 degrees.

Differences from the IsaacGym original, by design (README "Furniture-Bench"):
- Collision uses primitives fitted to the meshes (boxes for the top, leg bodies and obstacles, a cylinder
  for the leg's screw peg) instead of PhysX SDF collision of the meshes; the hole is not a collision shape:
  the peg does not collide with the top.
- Screwing is modelled explicitly: when the peg tip is within `CAPTURE_M` of a hole's axis with the leg
  tilted less than `ALIGN_DEG` and low enough to enter, a thread engages. From then on the leg's pose
  relative to the top is constrained to the hole's axis, and its rotation about the axis sets its height
  (right-handed, `THREAD_PITCH_M` per turn), reaching the assembled pose when fully turned in. Unscrewing
  past the thread's start releases it.
- The ee point is the fingertip centre of robosuite's Panda gripper.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np

# --- geometry (metres), in each part's own frame; measured from the furniture-bench 0.1 meshes ---------
TOP_HALF = (0.08125, 0.0156, 0.08125)  # local y is the thickness
HOLES = np.array([[sx * 0.05625, 0.0, sz * 0.05625] for sx in (-1, 1) for sz in (-1, 1)])  # in top frame
SEAT_Y = 0.046875  # leg centre above the top's centre (top frame y) when assembled
LEG_HALF = (0.015, 0.0312, 0.015)  # square leg body; local y is the leg's axis
PEG_RADIUS, PEG_Y = 0.0122, (-0.0562, -0.0312)  # screw peg along local y below the body
OBSTACLE_BARS = [((0.0, 0.0, 0.0), (0.175, 0.01, 0.015)),  # front bar (the fixture's frame), April axes
                 ((-0.175, -0.075, 0.0), (0.01, 0.085, 0.015)),  # side bars
                 ((0.175, -0.075, 0.0), (0.01, 0.085, 0.015))]
DENSITY = {"top": 498.68, "leg": 369.98}
FRICTION = 0.15

# --- frames -------------------------------------------------------------------------------------------
ROBOT_BASE = np.array([-0.3, 0.0, 0.43])  # world; table surface at z = 0.415, base clamp 1.5 cm
# April frame in the robot base frame: rot_mat((pi, 0, pi/2)) at (0.3015, 0, -0.015)
R_ROBOT_APRIL = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
P_ROBOT_APRIL = np.array([0.3015, 0.0, -0.015])
RESET_JOINTS = np.array([-0.02630888, 0.3758795, 0.12485036, -2.1383357, -0.09431414, 2.49649072, 0.01921718])
POSITION_LIMITS = np.array([[0.3, 0.8], [-0.55, 0.55], [0.005, 0.4]])  # ee target, robot base frame
MAX_GRIPPER_WIDTH = 0.065

# --- control ------------------------------------------------------------------------------------------
CONTROL_HZ, TIMESTEP, IK_EVERY = 10, 0.002, 10  # IK every 10 physics steps (20 ms)
JOINT_KP, JOINT_KV = 1000.0, 200.0
IK_DAMPING, IK_MAX_DQ, NULLSPACE_GAIN = 0.05, 0.25, 0.2
GRIPPER_FORCE, GRASP_MARGIN = 20.0, 0.02

# --- thread model -------------------------------------------------------------------------------------
THREAD_PITCH_M = 0.0125  # descent per turn
THREAD_LENGTH_M = 0.0125  # the thread is the peg's lower half: the last 1.25 cm (one turn) screw in
CAPTURE_M, ALIGN_DEG = 0.006, 12.0
PEG_LENGTH = PEG_Y[1] - PEG_Y[0]

# --- reward -------------------------------------------------------------------------------------------
POS_THRESHOLD, ORI_BOUND = 0.005, 0.94

# --- randomness ---------------------------------------------------------------------------------------
FORCE_SECONDS = 0.015  # low: legs turn up to ~20 degrees and slide a few mm


@dataclass(frozen=True)
class Randomness:
    force: float  # N, max horizontal force on each part at reset
    torque: float  # Nm, max vertical torque
    obstacle: float  # m, max obstacle offset (x and y, April frame)
    joints_deg: float  # max robot joint offset


RANDOMNESS = {"low": Randomness(0.2, 0.007, 0.02, 5.0), "med": Randomness(0.5, 0.01, 0.04, 10.0)}


@dataclass(frozen=True)
class Furniture:
    name: str
    parts: tuple[str, ...]  # observed in this order, then the obstacle
    reset_pos: dict  # part -> April position
    reset_rpy: dict  # part -> April rot_mat angles (x, y, z)
    should_be_assembled: tuple[tuple[int, int], ...]
    max_episode_steps: int


ONE_LEG = Furniture(
    name="one_leg",
    parts=("square_table_top", "square_table_leg1", "square_table_leg2", "square_table_leg3", "square_table_leg4"),
    reset_pos={"square_table_top": (0.0, 0.24, -0.015625), "square_table_leg1": (-0.20, 0.07, -0.015),
               "square_table_leg2": (-0.12, 0.07, -0.015), "square_table_leg3": (0.12, 0.07, -0.015),
               "square_table_leg4": (0.20, 0.07, -0.015)},
    reset_rpy={"square_table_top": (-np.pi / 2, 0.0, np.pi), **{f"square_table_leg{i}": (0.0, -np.pi / 2, 0.0)
                                                               for i in range(1, 5)}},
    should_be_assembled=((0, 4),),
    max_episode_steps=700,
)
OBSTACLE_RESET_POS = np.array([0.0, 0.38, -0.015])  # April; front bar centre


# --- rotation helpers (matrices act on column vectors) ------------------------------------------------
def rot_mat(angles) -> np.ndarray:
    """furniture-bench's rot_mat: Rz @ Ry @ Rx."""
    x, y, z = angles
    cx, sx, cy, sy, cz, sz = np.cos(x), np.sin(x), np.cos(y), np.sin(y), np.cos(z), np.sin(z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def mat_to_quat_wxyz(r: np.ndarray) -> np.ndarray:
    q = np.empty(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(r, dtype=np.float64).reshape(9))
    return q


def quat_wxyz_to_mat(q: np.ndarray) -> np.ndarray:
    m = np.empty(9)
    mujoco.mju_quat2Mat(m, np.asarray(q, dtype=np.float64))
    return m.reshape(3, 3)


def rot6d_from_mat(r: np.ndarray) -> np.ndarray:
    """First two rows, flattened (pytorch3d's matrix_to_rotation_6d)."""
    return np.asarray(r)[..., :2, :].reshape(*np.shape(r)[:-2], 6)


def mat_from_rot6d(d6: np.ndarray) -> np.ndarray:
    """Gram-Schmidt on the two rows (pytorch3d's rotation_6d_to_matrix); a degenerate input gives identity."""
    a1, a2 = np.asarray(d6[:3], np.float64), np.asarray(d6[3:6], np.float64)
    n1 = np.linalg.norm(a1)
    if n1 < 1e-8:
        return np.eye(3)
    b1 = a1 / n1
    b2 = a2 - b1 * (b1 @ a2)
    n2 = np.linalg.norm(b2)
    if n2 < 1e-8:
        return np.eye(3)
    b2 = b2 / n2
    return np.stack([b1, b2, np.cross(b1, b2)])


def quat_xyzw_rot6d(q) -> np.ndarray:
    x, y, z, w = q
    return rot6d_from_mat(quat_wxyz_to_mat(np.array([w, x, y, z])))


def axis_angle_mat(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation by `angle` about unit `axis`."""
    q, m = np.empty(4), np.empty(9)
    mujoco.mju_axisAngle2Quat(q, np.asarray(axis, np.float64), float(angle))
    mujoco.mju_quat2Mat(m, q)
    return m.reshape(3, 3)


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Axis-angle vector (world) rotating `current` onto `target`."""
    q = np.empty(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(target @ current.T).reshape(9))
    v = np.empty(3)
    mujoco.mju_quat2Vel(v, q, 1.0)
    return v


# April <-> world
R_WORLD_APRIL = R_ROBOT_APRIL
P_WORLD_APRIL = ROBOT_BASE + P_ROBOT_APRIL


def april_to_world(pos, rot):
    return P_WORLD_APRIL + R_WORLD_APRIL @ np.asarray(pos), R_WORLD_APRIL @ rot


def world_to_april(pos, rot):
    return R_WORLD_APRIL.T @ (np.asarray(pos) - P_WORLD_APRIL), R_WORLD_APRIL.T @ rot


def is_assembled(top_pos, top_rot, leg_pos, leg_rot) -> bool:
    """furniture-bench's test: the leg's pose in the top's frame matches an assembled pose (any corner;
    identity rotation) within POS_THRESHOLD per axis and ORI_BOUND cosine per rotation axis."""
    rel_pos = top_rot.T @ (leg_pos - top_pos)
    rel_rot = top_rot.T @ leg_rot
    if np.min(np.diag(rel_rot)) < ORI_BOUND:  # cosine of each axis with the identity's
        return False
    targets = HOLES + np.array([0.0, SEAT_Y, 0.0])
    return bool((np.abs(targets - rel_pos) <= POS_THRESHOLD).all(axis=1).any())


def _robosuite_assets() -> Path:
    spec = importlib.util.find_spec("robosuite")
    if spec is None:
        raise ImportError("robosuite is needed for the Panda model (pip install robosuite==1.5.1)")
    return Path(spec.origin).parent / "models" / "assets"


def _box(body, half, pos=(0, 0, 0), contype=3, conaffinity=3, density=None, rgba=(0.8, 0.7, 0.5, 1)):
    g = body.add_geom(type=mujoco.mjtGeom.mjGEOM_BOX, size=list(half), pos=list(pos), rgba=list(rgba))
    g.contype, g.conaffinity, g.friction = contype, conaffinity, [FRICTION, 0.005, 0.0001]
    if density is not None:
        g.density = density
    return g


def build_model(furniture: Furniture = ONE_LEG, visual_meshes: bool = False):
    """The scene as an MjModel. Collision groups: the top (bit 2) never touches a leg's peg (bit 1)."""
    spec = mujoco.MjSpec()
    spec.option.timestep = TIMESTEP
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 10.0  # stiffer friction: grasped parts do not slip
    world = spec.worldbody
    table = world.add_body(name="table", pos=[0.2, 0.0, 0.4])
    _box(table, (0.6, 0.6, 0.015), rgba=(0.5, 0.5, 0.5, 1))
    # obstacle fixture: static; its pose is set per reset (model.body_pos)
    obstacle = world.add_body(name="obstacle", pos=list(april_to_world(OBSTACLE_RESET_POS, np.eye(3))[0]),
                              quat=list(mat_to_quat_wxyz(R_WORLD_APRIL)))
    for pos, half in OBSTACLE_BARS:
        _box(obstacle, half, pos, rgba=(0.2, 0.2, 0.6, 1))
    for name in furniture.parts:
        body = world.add_body(name=name)
        body.add_freejoint(name=name)
        if name.endswith("_top"):
            _box(body, TOP_HALF, contype=2, conaffinity=2, density=DENSITY["top"])
        else:
            _box(body, LEG_HALF, density=DENSITY["leg"])
            peg = body.add_geom(type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[PEG_RADIUS, PEG_LENGTH / 2, 0],
                                pos=[0, (PEG_Y[0] + PEG_Y[1]) / 2, 0], quat=[np.sqrt(0.5), np.sqrt(0.5), 0, 0],
                                rgba=[0.6, 0.5, 0.4, 1])
            peg.contype, peg.conaffinity, peg.density = 1, 1, DENSITY["leg"]
            peg.friction = [FRICTION, 0.005, 0.0001]
        if visual_meshes:
            from envs.furniture_assets import mesh_path

            mesh = spec.add_mesh(name=f"{name}_mesh", file=str(mesh_path(f"square_table/{name}.obj")))
            g = body.add_geom(type=mujoco.mjtGeom.mjGEOM_MESH, meshname=mesh.name, group=1)
            g.contype = g.conaffinity = 0
            g.mass = 0.0
    _add_panda(spec, world)
    return spec.compile()


def _add_panda(spec, world) -> None:
    root = _robosuite_assets()
    robot = mujoco.MjSpec.from_file(str(root / "robots/panda/robot.xml"))
    gripper = mujoco.MjSpec.from_file(str(root / "grippers/panda_gripper.xml"))
    for s in (robot, gripper):  # physics only: drop visual meshes, cameras, sensors, original actuators
        for g in list(s.geoms):
            if g.group == 1 or g.type == mujoco.mjtGeom.mjGEOM_MESH and g.contype == 0 and g.conaffinity == 0:
                s.delete(g)
        for item in list(s.actuators) + list(s.sensors) + list(s.cameras):
            s.delete(item)
        for m in list(s.meshes):
            if "vis" in m.name:
                s.delete(m)
    frame = robot.body("right_hand").add_frame()
    frame.attach_body(gripper.body("right_gripper"), "", "")
    for b in robot.bodies:
        if b.name != "world":
            b.gravcomp = 1.0
    for g in robot.geoms:  # the robot also touches the top (collision bit 2)
        g.contype, g.conaffinity = g.contype | (2 * bool(g.contype)), g.conaffinity | (2 * bool(g.conaffinity))
    mount = world.add_frame(pos=list(ROBOT_BASE))
    mount.attach_body(robot.body("base"), "panda_", "")
    for i in range(1, 8):
        j = spec.joint(f"panda_joint{i}")
        j.armature = 0.1
        act = spec.add_actuator(name=f"panda_act{i}", target=f"panda_joint{i}",
                                trntype=mujoco.mjtTrn.mjTRN_JOINT)
        act.set_to_position(kp=JOINT_KP, kv=JOINT_KV)
    for i, sign in ((1, 1.0), (2, -1.0)):
        act = spec.add_actuator(name=f"panda_finger{i}", target=f"panda_finger_joint{i}",
                                trntype=mujoco.mjtTrn.mjTRN_JOINT)
        act.set_to_position(kp=200.0, kv=5.0)
        act.forcelimited, act.forcerange = True, [-GRIPPER_FORCE, GRIPPER_FORCE]
        act.ctrlrange, act.ctrllimited = sorted([0.0, sign * MAX_GRIPPER_WIDTH / 2]), True
    for name in ("panda_finger1_pad_collision", "panda_finger2_pad_collision"):
        g = spec.geom(name)
        g.friction = [1.5, 0.05, 0.001]
        g.condim = 6  # torsional friction: a pinched leg turns with the wrist


def _route_mujoco_warnings() -> None:
    """MuJoCo's default warning handler writes MUJOCO_LOG.TXT into the working directory. Its Newton
    solver warns "linesearch objective is not convex" now and then with elliptic friction cones (it then
    falls back, harmlessly); send warnings to logging instead, unless the user installed a handler."""
    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(lambda msg: logging.getLogger(__name__).debug("MuJoCo warning: %s", msg))


class FurnitureSimEnv(gym.Env):
    """One furniture task in MuJoCo, with furniture-bench's observation, action and reward."""

    metadata = {"render_modes": []}

    def __init__(self, furniture: Furniture = ONE_LEG, randomness: str = "low",
                 max_episode_steps: int | None = None, visual_meshes: bool = False):
        if randomness not in RANDOMNESS:
            raise ValueError(f"unknown randomness {randomness!r}; valid: {', '.join(RANDOMNESS)}")
        self.furniture, self.randomness = furniture, RANDOMNESS[randomness]
        self.max_episode_steps = max_episode_steps or furniture.max_episode_steps
        _route_mujoco_warnings()
        self.model = build_model(furniture, visual_meshes)
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._arm_q = np.array([m.jnt_qposadr[m.joint(f"panda_joint{i}").id] for i in range(1, 8)])
        self._arm_joints = np.array([m.joint(f"panda_joint{i}").id for i in range(1, 8)])
        self._arm_v = np.array([m.jnt_dofadr[m.joint(f"panda_joint{i}").id] for i in range(1, 8)])
        self._finger_q = [m.jnt_qposadr[m.joint(f"panda_finger_joint{i}").id] for i in (1, 2)]
        self._ee_site = m.site("panda_grip_site").id
        self._base_body = m.body("panda_base").id
        self._part_body = [m.body(p).id for p in furniture.parts]
        self._part_q = [m.jnt_qposadr[m.joint(p).id] for p in furniture.parts]
        self._part_v = [m.jnt_dofadr[m.joint(p).id] for p in furniture.parts]
        self._obstacle = m.body("obstacle").id
        self._obstacle_pos0 = m.body_pos[self._obstacle].copy()
        obs_dim = 16 + 7 * (len(furniture.parts) + 1)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (10,), np.float32)
        self._jac = np.zeros((6, m.nv))
        self._rng = np.random.default_rng()
        self._t = 0
        self.assembled: set[tuple[int, int]] = set()
        self.thread: dict | None = None  # engaged thread: {"hole": i, "r": remaining rotation (rad)}

    # -- state ------------------------------------------------------------------------------------------
    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """ee position and rotation in the robot base frame (its axes are the world's)."""
        return self.data.site_xpos[self._ee_site] - ROBOT_BASE, self.data.site_xmat[self._ee_site].reshape(3, 3).copy()

    def gripper_width(self) -> float:
        return float(self.data.qpos[self._finger_q[0]] - self.data.qpos[self._finger_q[1]])

    def part_pose_world(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        b = self._part_body[i]
        return self.data.xpos[b].copy(), self.data.xmat[b].reshape(3, 3).copy()

    def part_pose_april(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return world_to_april(*self.part_pose_world(i))

    def obstacle_pose_april(self) -> tuple[np.ndarray, np.ndarray]:
        return world_to_april(self.data.xpos[self._obstacle], self.data.xmat[self._obstacle].reshape(3, 3))

    def _obs(self) -> np.ndarray:
        pos, rot = self.ee_pose()
        vel = np.zeros(6)
        mujoco.mj_objectVelocity(self.model, self.data, mujoco.mjtObj.mjOBJ_SITE, self._ee_site, vel, 0)
        poses = [self.part_pose_april(i) for i in range(len(self._part_body))] + [self.obstacle_pose_april()]
        flat = [np.concatenate([p, np.roll(mat_to_quat_wxyz(r), -1)]) for p, r in poses]  # quats x, y, z, w
        return np.concatenate([pos, rot6d_from_mat(rot), vel[3:], vel[:3], [self.gripper_width()], *flat]).astype(np.float32)

    # -- reset ------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        rng, rnd, m, d = self._rng, self.randomness, self.model, self.data
        mujoco.mj_resetData(m, d)
        offset = np.zeros(3)
        offset[:2] = rng.uniform(-rnd.obstacle, rnd.obstacle, 2)
        m.body_pos[self._obstacle] = self._obstacle_pos0 + R_WORLD_APRIL @ offset
        q0 = RESET_JOINTS + np.deg2rad(rng.uniform(-rnd.joints_deg, rnd.joints_deg, 7))
        d.qpos[self._arm_q] = q0
        d.qpos[self._finger_q] = [MAX_GRIPPER_WIDTH / 2, -MAX_GRIPPER_WIDTH / 2]
        for i, name in enumerate(self.furniture.parts):
            p, r = april_to_world(self.furniture.reset_pos[name], rot_mat(self.furniture.reset_rpy[name]))
            d.qpos[self._part_q[i]:self._part_q[i] + 3] = p
            d.qpos[self._part_q[i] + 3:self._part_q[i] + 7] = mat_to_quat_wxyz(r)
        d.ctrl[:7] = q0
        d.ctrl[7:9] = [MAX_GRIPPER_WIDTH / 2, -MAX_GRIPPER_WIDTH / 2]
        self._q_nominal = q0.copy()
        self._gripper_closed = False
        # random pushes on every part (furniture-bench fork's reset perturbation), then let them settle
        n = len(self._part_body)
        angle = rng.uniform(0, 2 * np.pi, n)
        force = rng.uniform(0, rnd.force, n)
        torque = rng.uniform(-rnd.torque, rnd.torque, n)
        for i, b in enumerate(self._part_body):
            d.xfrc_applied[b, :3] = force[i] * np.array([np.cos(angle[i]), np.sin(angle[i]), 0.0])
            d.xfrc_applied[b, 5] = torque[i]
        mujoco.mj_step(m, d, nstep=int(round(FORCE_SECONDS / TIMESTEP)))
        d.xfrc_applied[:] = 0.0
        mujoco.mj_step(m, d, nstep=int(round(0.2 / TIMESTEP)))
        self._t = 0
        self.assembled = set()
        self.thread = None
        return self._obs(), {"success": False}

    # -- control ----------------------------------------------------------------------------------------
    def _ik(self, target_pos: np.ndarray, target_rot: np.ndarray) -> np.ndarray:
        m, d = self.model, self.data
        pos, rot = self.ee_pose()
        err = np.concatenate([target_pos - pos, rotation_error(target_rot, rot)])
        mujoco.mj_jacSite(m, d, self._jac[:3], self._jac[3:], self._ee_site)
        j = self._jac[:, self._arm_v]
        jjt = j @ j.T + IK_DAMPING**2 * np.eye(6)
        j_pinv = j.T @ np.linalg.solve(jjt, np.eye(6))
        q = d.qpos[self._arm_q]
        dq = j_pinv @ err + (np.eye(7) - j_pinv @ j) @ (NULLSPACE_GAIN * (self._q_nominal - q))
        norm = np.abs(dq).max()
        if norm > IK_MAX_DQ:
            dq *= IK_MAX_DQ / norm
        lo, hi = self.model.jnt_range[self._arm_joints].T
        return np.clip(q + dq, lo + 0.05, hi - 0.05)  # stay off the joint limits, where IK would stall

    def step(self, action):
        a = np.asarray(action, np.float64)
        target_pos = np.clip(a[:3], POSITION_LIMITS[:, 0], POSITION_LIMITS[:, 1])
        target_rot = mat_from_rot6d(a[3:9])
        if abs(a[9]) > GRASP_MARGIN:
            self._gripper_closed = a[9] > 0
        half = 0.0 if self._gripper_closed else MAX_GRIPPER_WIDTH / 2
        self.data.ctrl[7:9] = [half, -half]
        for _ in range(int(round(1 / CONTROL_HZ / TIMESTEP)) // IK_EVERY):
            self.data.ctrl[:7] = self._ik(target_pos, target_rot)
            mujoco.mj_step(self.model, self.data, nstep=IK_EVERY)
            self._thread_step()
        self._t += 1
        reward = self._reward()
        done = len(self.assembled) == len(self.furniture.should_be_assembled)
        truncated = self._t >= self.max_episode_steps and not done
        return self._obs(), reward, done, truncated, {"success": done}

    def _reward(self) -> float:
        new = 0
        for pair in self.furniture.should_be_assembled:
            if pair in self.assembled:
                continue
            if is_assembled(*self.part_pose_world(pair[0]), *self.part_pose_world(pair[1])):
                self.assembled.add(pair)
                new += 1
        return float(new)

    # -- thread model -----------------------------------------------------------------------------------
    def _thread_step(self) -> None:
        """Engage the screw thread of the leg to assemble when its peg enters a hole, and keep an engaged
        leg on the thread (height set by its rotation about the hole axis)."""
        top_i, leg_i = self.furniture.should_be_assembled[0]
        top_p, top_r = self.part_pose_world(top_i)
        leg_p, leg_r = self.part_pose_world(leg_i)
        rel_p, rel_r = top_r.T @ (leg_p - top_p), top_r.T @ leg_r
        x_axis = rel_r[:, 0]
        psi = np.arctan2(-x_axis[2], x_axis[0])  # rotation about the hole axis (top's y)
        if self.thread is None:
            if rel_r[1, 1] < np.cos(np.deg2rad(ALIGN_DEG)):
                return
            lateral = np.linalg.norm((HOLES[:, [0, 2]] - rel_p[[0, 2]]), axis=1)
            hole = int(np.argmin(lateral))
            height = rel_p[1] - SEAT_Y  # above the assembled height
            if lateral[hole] > CAPTURE_M or not (-0.002 <= height <= THREAD_LENGTH_M + THREAD_PITCH_M / 2):
                return
            # the thread catches at the nearest height whose phase matches the leg's rotation, so that
            # turning it fully in ends at the assembled (identity) rotation
            phase = np.mod(psi, 2 * np.pi)
            turns = max(0, int(round(height / THREAD_PITCH_M - phase / (2 * np.pi))))
            self.thread = {"hole": hole, "r": phase + 2 * np.pi * turns, "psi": psi}
        else:
            delta = np.mod(psi - self.thread["psi"] + np.pi, 2 * np.pi) - np.pi
            r = self.thread["r"] + delta
            if r > 2 * np.pi * (THREAD_LENGTH_M / THREAD_PITCH_M + 1):  # unscrewed out of the thread
                self.thread = None
                return
            self.thread["r"] = max(r, 0.0)
        r = self.thread["r"]
        self.thread["psi"] = np.mod(r + np.pi, 2 * np.pi) - np.pi
        c, s = np.cos(r), np.sin(r)
        rel_rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        rel_pos = HOLES[self.thread["hole"]] + np.array([0.0, SEAT_Y + THREAD_PITCH_M * r / (2 * np.pi), 0.0])
        d, qa, va = self.data, self._part_q[leg_i], self._part_v[leg_i]
        d.qpos[qa:qa + 3] = top_p + top_r @ rel_pos
        d.qpos[qa + 3:qa + 7] = mat_to_quat_wxyz(top_r @ rel_rot)
        d.qvel[va:va + 6] = 0.0  # the thread's friction holds the leg still unless something turns it
        mujoco.mj_kinematics(self.model, d)


def make_furniture_env(env_id: str, max_episode_steps: int) -> gym.Env:
    """env_id: '<furniture>_<randomness>', e.g. 'one_leg_low'."""
    furniture, _, randomness = env_id.rpartition("_")
    return FurnitureSimEnv({"one_leg": ONE_LEG}[furniture], randomness, max_episode_steps)
