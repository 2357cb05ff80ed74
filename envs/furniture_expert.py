"""Scripted one_leg expert (state-based: it reads part poses from the simulator), in the spirit of
furniture-bench's own scripted assembly: push the tabletop into the fixture's corner, pick the leg up,
turn it upright, put its peg in the nearest corner hole, then screw it in with grasp-twist-release cycles
of the wrist. An `ExpertStyle` makes it imperfect like human teleoperation: noisy targets, hesitations
and sloppier placements.

Every action is furniture-bench's absolute ee target (robot base frame): position, 6-D rotation, gripper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.furniture_sim import (
    HOLES, LEG_HALF, P_ROBOT_APRIL, PEG_LENGTH, R_ROBOT_APRIL, ROBOT_BASE, SEAT_Y, TOP_HALF, FurnitureSimEnv,
    axis_angle_mat, rot6d_from_mat, rotation_error,
)

TABLE_Z = -0.015  # table surface in the robot base frame
MAX_STEP_M, MAX_STEP_RAD = 0.02, 0.3  # how far one action moves the target (teleoperation speed)
CORNER = np.array([0.08, 0.275])  # April x, y of the tabletop's centre pushed into the fixture corner
TWIST = 2 * np.pi / 3  # wrist turn per screwing grasp
LEG_GRASP_PITCH = np.deg2rad(60)
NEUTRAL_YAW = 2.44  # finger direction at the reset joints (joint 7 mid-range)


@dataclass(frozen=True)
class ExpertStyle:
    pos_noise: float = 0.0  # m, std of the noise added to each target
    rot_noise_deg: float = 0.0
    pause_prob: float = 0.0  # chance per step of repeating the last action (hesitation)
    placement_noise: float = 0.0  # m, std of a per-demo offset of where the leg is aimed


STYLES = {"ph": ExpertStyle(0.001, 1.0, 0.0, 0.0), "mh": ExpertStyle(0.003, 3.0, 0.05, 0.002)}


def r_down(yaw: float) -> np.ndarray:
    """ee rotation pointing straight down with the fingers closing along (cos yaw, sin yaw, 0)."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])


def grasp_yaw(yaw: float) -> float:
    """The finger direction is symmetric (yaw + pi grips alike): pick the one within pi/2 of the wrist's
    middle, away from joint 7's limits."""
    return NEUTRAL_YAW + (yaw - NEUTRAL_YAW + np.pi / 2) % np.pi - np.pi / 2


def rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def april_to_robot(p) -> np.ndarray:
    return P_ROBOT_APRIL + R_ROBOT_APRIL @ np.asarray(p)


class OneLegExpert:
    def __init__(self, env: FurnitureSimEnv, rng: np.random.Generator, style: ExpertStyle = STYLES["ph"]):
        self.env, self.rng, self.style = env, rng, style
        self.aim = rng.normal(0.0, style.placement_noise, 2) if style.placement_noise else np.zeros(2)
        self.phase, self.t_phase = "top_above", 0
        pos, rot = env.ee_pose()
        self.pos, self.rot, self.grip = pos, rot, -1.0
        self.twist_base = 0.0
        self.last = None

    # -- world state in the robot base frame -----------------------------------------------------------
    def _part(self, i):
        p, r = self.env.part_pose_world(i)
        return p - ROBOT_BASE, r

    def _goto(self, pos, rot, grip):
        """Target a step from the ee's current pose toward (pos, rot), at teleoperation speed; True once
        the ee is there. Stepping from the observed pose (not from the last target) keeps the action a
        function of the observation and the phase, which is what behaviour cloning can learn."""
        ee_pos, ee_rot = self.env.ee_pose()
        step = pos - ee_pos
        n = np.linalg.norm(step)
        self.pos = ee_pos + (step * MAX_STEP_M / n if n > MAX_STEP_M else step)
        err = rotation_error(rot, ee_rot)
        a = np.linalg.norm(err)
        self.rot = axis_angle_mat(err / a, min(a, MAX_STEP_RAD)) @ ee_rot if a > 1e-9 else ee_rot
        self.grip = grip
        return n < 0.008 and a < 0.08

    def _next(self, phase):
        self.phase, self.t_phase = phase, 0

    def act(self) -> np.ndarray:
        st = self.style
        if self.last is not None and self.rng.random() < st.pause_prob:
            return self.last
        self._plan()
        self.t_phase += 1
        pos = self.pos + self.rng.normal(0.0, st.pos_noise, 3)
        rot = self.rot
        if st.rot_noise_deg:
            rot = rz(np.deg2rad(self.rng.normal(0.0, st.rot_noise_deg))) @ rot
        self.last = np.concatenate([pos, rot6d_from_mat(rot), [self.grip]]).astype(np.float32)
        return self.last

    # -- the plan ---------------------------------------------------------------------------------------
    def _plan(self) -> None:
        env = self.env
        top_p, top_r = self._part(0)
        leg_p, leg_r = self._part(4)
        top_april = R_ROBOT_APRIL.T @ (top_p - P_ROBOT_APRIL)
        low = TABLE_Z + 0.021  # the closed fingers reach ~1 cm below the ee point
        ph = self.phase
        # 1. push the tabletop sideways (April +x) against the side bar, then forward toward the front bar
        if ph == "top_above":
            behind = april_to_robot([top_april[0] - TOP_HALF[0] - 0.025, top_april[1], 0.0])
            if self._goto(behind + [0, 0, 0.06], r_down(grasp_yaw(0.0)), 1.0):
                self._next("top_down")
        elif ph == "top_down":
            behind = april_to_robot([top_april[0] - TOP_HALF[0] - 0.025, top_april[1], 0.0])
            if self._goto(np.array([behind[0], behind[1], low]), r_down(grasp_yaw(0.0)), 1.0):
                self._next("push_x")
        elif ph == "push_x":
            goal = april_to_robot([CORNER[0] - TOP_HALF[0] - 0.012, top_april[1], 0.0])
            if self._goto(np.array([goal[0], goal[1], low]), r_down(grasp_yaw(0.0)), 1.0) or self.t_phase > 40:
                self._next("up_1")
        elif ph == "up_1":
            if self._goto(self.pos + [0, 0, 0.07 - (self.pos[2] - low)], r_down(grasp_yaw(0.0)), 1.0) or self.t_phase > 15:
                self._next("front_above")
        elif ph in ("front_above", "front_down"):
            near = april_to_robot([top_april[0], top_april[1] - TOP_HALF[0] - 0.025, 0.0])
            z = low if ph == "front_down" else low + 0.07
            if self._goto(np.array([near[0], near[1], z]), r_down(grasp_yaw(np.pi / 2)), 1.0):
                self._next("push_y" if ph == "front_down" else "front_down")
        elif ph == "push_y":
            goal = april_to_robot([top_april[0], CORNER[1] - TOP_HALF[0] - 0.012, 0.0])
            if self._goto(np.array([goal[0], goal[1], low]), r_down(grasp_yaw(np.pi / 2)), 1.0) or self.t_phase > 30:
                self._next("up_2")
        elif ph == "up_2":
            if self._goto(np.array([self.pos[0], self.pos[1], low + 0.08]), r_down(grasp_yaw(np.pi / 2)), -1.0) or self.t_phase > 15:
                self._next("leg_above")
        # 2. pick the leg up across its width
        elif ph in ("leg_above", "leg_down"):
            rot = leg_grasp_rot(leg_r[:, 1])
            back = 0.0 if ph == "leg_down" else 0.08
            if self._goto(leg_p - back * rot[:, 2], rot, -1.0) or self.t_phase > 30:
                self._next("grasp" if ph == "leg_down" else "leg_down")
        elif ph == "grasp":
            self._goto(self.pos, self.rot, 1.0)
            if self.t_phase >= 4:
                self._next("lift")
        elif ph == "lift":
            if self._goto(np.array([self.pos[0], self.pos[1], 0.12]), self.rot, 1.0):
                self._next("upright")
        # 3. turn it upright (peg down) about the finger axis and bring the peg over the hole nearest the robot
        elif ph == "upright":
            rot = axis_rotation(leg_r[:, 1], np.array([0.0, 0.0, 1.0])) @ env.ee_pose()[1]
            if self._goto(np.array([0.5, 0.0, 0.15]), rot, 1.0) or self.t_phase > 30:
                self._next("over_hole")
        elif ph in ("over_hole", "insert"):
            holes = top_p + (top_r @ (HOLES + [0.0, SEAT_Y, 0.0]).T).T
            hole = holes[np.argmin(np.linalg.norm(holes[:, :2], axis=1))]  # the corner nearest the robot
            hole = hole + np.array([self.aim[0], self.aim[1], 0.0])
            lift = PEG_LENGTH + (0.03 if ph == "over_hole" else -0.004)
            offset = env.ee_pose()[0] - leg_p  # keep the grasp offset
            if self._goto(hole + [0, 0, lift] + offset, self.rot, 1.0) or (ph == "insert" and env.thread is not None):
                self._next("insert" if ph == "over_hole" else "release")
        elif ph == "release":
            self._goto(self.pos, self.rot, -1.0)
            if self.t_phase >= 4:
                self._next("retreat")
        elif ph == "retreat":
            if self._goto(np.array([self.pos[0], self.pos[1], 0.16]), self.rot, -1.0) or self.t_phase > 10:
                self._next("screw_above")
        # 4. screw: grasp the leg's upper end, turn the wrist clockwise (seen from above), release, turn back
        elif ph in ("screw_above", "screw_down", "screw_grasp", "screw_turn", "screw_open", "screw_back"):
            x = leg_r[:, 0]
            face_yaw = np.arctan2(x[1], x[0])
            grasp_z = leg_p[2] + LEG_HALF[1] - 0.012
            if ph == "screw_above":
                self.twist_base = _face_yaw(face_yaw) + TWIST / 2
                if self._goto(np.array([leg_p[0], leg_p[1], grasp_z + 0.05]), r_down(self.twist_base), -1.0):
                    self._next("screw_down")
            elif ph == "screw_down":
                if self._goto(np.array([leg_p[0], leg_p[1], grasp_z]), r_down(self.twist_base), -1.0):
                    self._next("screw_grasp")
            elif ph == "screw_grasp":
                self._goto(self.pos, self.rot, 1.0)
                if self.t_phase >= 3:
                    self._next("screw_turn")
            elif ph == "screw_turn":
                done = self._goto(np.array([leg_p[0], leg_p[1], grasp_z]), r_down(self.twist_base - TWIST), 1.0)
                if done or self.t_phase > 12:
                    self._next("screw_open")
            elif ph == "screw_open":
                self._goto(self.pos, self.rot, -1.0)
                if self.t_phase >= 3:
                    self._next("screw_back")
            elif ph == "screw_back":
                self.twist_base = _face_yaw(face_yaw) + TWIST / 2
                if self._goto(np.array([leg_p[0], leg_p[1], grasp_z + 0.01]), r_down(self.twist_base), -1.0) \
                        or self.t_phase > 12:
                    self._next("screw_down")



def _face_yaw(yaw: float) -> float:
    """Fingers square to the leg's faces (any multiple of pi/2), near the wrist's middle."""
    return NEUTRAL_YAW + (yaw - NEUTRAL_YAW + np.pi / 4) % (np.pi / 2) - np.pi / 4


def axis_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector a onto unit vector b."""
    axis = np.cross(a, b)
    n = np.linalg.norm(axis)
    return axis_angle_mat(axis / n, np.arctan2(n, a @ b)) if n > 1e-9 else np.eye(3)


def leg_grasp_rot(leg_axis: np.ndarray) -> np.ndarray:
    """Grasp a lying leg across its width with the gripper pitched LEG_GRASP_PITCH toward the peg end: after
    the 90-degree turn that stands the leg up, the gripper points 90 degrees - LEG_GRASP_PITCH the other
    way. Neither pose is near the Panda's wrist limits, which pointing straight down and then level hit."""
    l = leg_axis - leg_axis[2] * np.array([0.0, 0.0, 1.0])
    l /= np.linalg.norm(l)
    yaw = grasp_yaw(np.arctan2(l[1], l[0]) + np.pi / 2)  # fingers across the leg
    down = r_down(yaw)
    approach = -(np.sin(LEG_GRASP_PITCH) * l + np.cos(LEG_GRASP_PITCH) * np.array([0.0, 0.0, 1.0]))
    return axis_rotation(down[:, 2], approach) @ down
