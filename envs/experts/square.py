"""Scripted expert for robomimic Square (robosuite NutAssemblySquare): grasp the square nut by its
handle, lift it above the square peg's top, turn it so its square hole lines up with the peg and its
handle points back at the robot, servo the nut (not the gripper) over the peg, lower it down the peg,
let go and back off.

Geometry (robosuite 1.5.1 `square-nut.xml`, `pegs_arena.xml`): the nut is a 0.0875 m square ring with
a 0.032 m wide handle along its local x axis (handle site at x = 0.054); its hole has half-width 0.0228,
the peg (`peg1`, at (0.23, 0.1) on the table) half-width 0.016 and its top is at z = 0.95. robosuite
calls the task solved when the nut centre is within 0.03 m of the peg axis (x and y), less than 0.05 m
above the table top, and the gripper is more than ~0.042 m from the nut centre.

The peg is at the edge of the Panda's reach, so the nut always goes down with its handle pointing at the
robot (-x): the gripper then works 6 cm closer to the base. Turning the nut there can take up to half a
turn of the wrist, whose last joint has a +-2.9 rad range; the grasp yaw (two choices, the fingers are
symmetric) and the turning direction are chosen to keep that joint inside its range.

A grasp that does not carry the nut is retried; a nut that jams on the peg top is lifted and re-aligned.
"""

from __future__ import annotations

import numpy as np

from envs.experts.common import (
    GRIPPER_CLOSE,
    GRIPPER_OPEN,
    DemonstratorStyle,
    ScriptedExpert,
    YawTracker,
    body_pose,
    down_rotation,
    plan_wrist_turns,
    rotation_error,
    wrap_angle,
    yaw_of_quat,
)

HANDLE_GRASP_X = 0.06  # grasp point on the handle, along the nut's local x axis (handle spans 0.029-0.079)
GRASP_HEIGHT_RANGE = (-0.004, 0.008)  # grip site vs handle centre; the finger pads reach 4 mm below the site
EXTRA_CLOSE_STEPS = 4  # the fingers travel further to close on the 3.2 cm handle than on Lift's cube
HOVER_HEIGHT = 0.08  # metres above the grasp point for the pre-grasp pose
PLACE_YAW = np.pi  # nut yaw over the peg: handle towards the robot
PEG_TOP_CLEARANCE = 0.045  # nut centre this far above the peg top while it is carried over the peg
ALIGN_HEIGHT = 0.025  # nut centre this far above the peg top while it is lined up
ALIGN_TOLERANCE = 0.0035  # nut centre to peg axis (metres) before lowering
ALIGN_YAW_TOLERANCE = 0.06  # radians, nut yaw error before lowering
LOWER_STEP = 0.015  # metres below the nut's current height that the lowering servo aims at
SEATED_HEIGHT = 0.035  # nut centre below table top + this: the nut is down the peg
JAM_STEPS = 25  # steps without the nut going down while lowering before lifting and re-aligning
FINE_PHASES = ("descend", "close", "align", "lower")  # phases where the operator moves with care
FINE_NOISE_SCALE = 0.35  # their action noise there, relative to the style's
SLIP_DISTANCE = 0.1  # the nut is no longer held once its centre is this far from the grip site
RETREAT_HEIGHT = 0.1  # metres the gripper rises after letting go


class SquareExpert(ScriptedExpert):
    def __init__(self, env, rng: np.random.Generator, style: DemonstratorStyle):
        super().__init__(env, rng, style)
        self.nut_id = env.obj_body_id["SquareNut"]
        self.peg_pos = np.array(env.sim.data.body_xpos[env.peg1_body_id])
        peg_geom = int(env.sim.model.body_geomadr[env.peg1_body_id])  # the peg's collision box
        self.peg_top = float(self.peg_pos[2] + env.sim.model.geom_size[peg_geom][2])
        self.table_z = float(env.table_offset[2])
        self.carry_z = self.peg_top + PEG_TOP_CLEARANCE + 0.3 * max(style.lift_height - 0.1, 0.0)
        self.yaw = YawTracker(self.eef()[1])
        self.retreat_pos = None
        self.noise_std = np.array(self.filter.noise_std)
        self.plan_grasp()

    def act(self, obs: dict | None = None) -> np.ndarray:
        # people steady their hand for the grasp and the insertion (the hole leaves 7 mm of play)
        self.filter.noise_std = self.noise_std * (FINE_NOISE_SCALE if self.phase in FINE_PHASES else 1.0)
        return super().act(obs)

    def nut_pose(self) -> tuple[np.ndarray, float]:
        pos, quat = body_pose(self.env, self.nut_id)
        return pos, yaw_of_quat(quat)

    # -- grasp ---------------------------------------------------------------------------------------

    def plan_grasp(self) -> None:
        """Choose the handle grasp (with the operator's imprecision) and the wrist turns for the grasp and
        for the later placement, from the nut's current yaw."""
        s = self.style
        _, nut_yaw = self.nut_pose()
        # fingers close across the handle (along the nut's local y axis): two gripper yaws, pi apart
        across = nut_yaw + np.pi / 2
        self.grasp_turn, self.place_turn = plan_wrist_turns(
            self.env, self.yaw.value, [across, across + np.pi], wrap_angle(PLACE_YAW - nut_yaw)
        )
        self.grasp_yaw = self.yaw.value + self.grasp_turn + s.grasp_yaw_std * self.rng.standard_normal()
        self.grasp_offset = np.array(
            [*(s.grasp_pos_std * self.rng.standard_normal(2)), np.clip(s.grasp_height_std * self.rng.standard_normal(), *GRASP_HEIGHT_RANGE)]
        )
        self.detour = self.detour_waypoint(self.eef()[0], self.hover_pos())
        self.set_phase("detour" if self.detour is not None else "approach")

    def grasp_pos(self) -> np.ndarray:
        """The chosen grasp point on the handle, following the nut (it settles on the table at first)."""
        nut_pos, nut_yaw = self.nut_pose()
        return nut_pos + HANDLE_GRASP_X * np.array([np.cos(nut_yaw), np.sin(nut_yaw), 0.0]) + self.grasp_offset

    def hover_pos(self) -> np.ndarray:
        return self.grasp_pos() + np.array([0.0, 0.0, HOVER_HEIGHT])

    def grasp_rot(self) -> np.ndarray:
        """Gripper orientation toward the grasp yaw, at most 1 rad ahead so the turn goes the chosen way."""
        return down_rotation(self.yaw.value + np.clip(self.grasp_yaw - self.yaw.value, -1.0, 1.0))

    # -- placement -----------------------------------------------------------------------------------

    def remaining_turn(self) -> float:
        """Gripper turn still needed to bring the nut to its placement yaw, on the planned branch."""
        _, nut_yaw = self.nut_pose()
        planned = self.place_target - self.yaw.value
        return planned + wrap_angle(wrap_angle(PLACE_YAW - nut_yaw) - planned)

    def carry_target(self, nut_height: float) -> tuple[np.ndarray, np.ndarray]:
        """Gripper pose that puts the held nut's centre over the peg axis at `nut_height` once turned to its
        placement yaw: the nut is servoed through the gripper holding it."""
        pos, _ = self.eef()
        nut_pos, _ = self.nut_pose()
        turn = self.remaining_turn()
        # turning the gripper about its own axis swings the nut centre around the grasp point
        lever = nut_pos[:2] - pos[:2]
        c, s = np.cos(turn), np.sin(turn)
        swung = np.array([c * lever[0] - s * lever[1], s * lever[0] + c * lever[1]])
        target = np.array([*(self.peg_pos[:2] - swung), pos[2] + nut_height - nut_pos[2]])
        return target, down_rotation(self.yaw.value + np.clip(turn, -1.0, 1.0))

    def nut_alignment(self) -> tuple[float, float]:
        """Horizontal distance of the nut centre from the peg axis and its yaw error (radians)."""
        nut_pos, nut_yaw = self.nut_pose()
        return float(np.linalg.norm(nut_pos[:2] - self.peg_pos[:2])), abs(wrap_angle(PLACE_YAW - nut_yaw))

    # -- phases --------------------------------------------------------------------------------------

    def plan(self) -> tuple[np.ndarray, float]:
        pos, rot = self.eef()
        self.yaw.update(rot)
        if self.phase == "detour":
            if self.reached(self.detour, tolerance=0.03):
                self.set_phase("approach")
            return self.servo(self.detour, self.grasp_rot()), GRIPPER_OPEN
        if self.phase == "approach":
            hover = self.hover_pos()
            if self.reached(hover, axes=slice(0, 2)) and abs(self.grasp_yaw - self.yaw.value) < 0.1:
                self.set_phase("descend")
            return self.servo(hover, self.grasp_rot()), GRIPPER_OPEN
        if self.phase == "descend":
            if self.reached(self.grasp_pos()) or self.phase_steps > 30:
                self.set_phase("close")
                self.close_pos = self.grasp_pos()
            return self.servo(self.grasp_pos(), self.grasp_rot(), speed=0.6), GRIPPER_OPEN
        if self.phase == "close":
            if self.phase_steps >= self.style.grasp_wait + EXTRA_CLOSE_STEPS:
                self.set_phase("lift")
            return self.servo(self.close_pos, self.grasp_rot()), GRIPPER_CLOSE
        nut_pos, _ = self.nut_pose()
        if self.phase in ("lift", "carry", "align", "lower") and np.linalg.norm(pos - nut_pos) > SLIP_DISTANCE:
            self.set_phase("release")  # the nut is not in the fingers: start over
        if self.phase == "lift":
            if nut_pos[2] > self.carry_z - 0.02:
                self.set_phase("carry")
                self.place_target = self.yaw.value + self.place_turn
                self.place_target += self.remaining_turn() - self.place_turn  # the nut's actual yaw now
            lift = np.array([*pos[:2], pos[2] + self.carry_z - nut_pos[2]])
            speed = 0.3 if self.phase_steps < 5 else 0.8  # ease the nut off the table
            return self.servo(lift, down_rotation(self.yaw.value), speed=speed), GRIPPER_CLOSE
        if self.phase == "carry":
            target, target_rot = self.carry_target(self.carry_z)
            dist, yaw_err = self.nut_alignment()
            if dist < 0.015 and yaw_err < 0.15:
                self.set_phase("align")
            return self.servo(target, target_rot), GRIPPER_CLOSE
        if self.phase == "align":
            target, target_rot = self.carry_target(self.peg_top + ALIGN_HEIGHT)
            dist, yaw_err = self.nut_alignment()
            if dist < ALIGN_TOLERANCE and yaw_err < ALIGN_YAW_TOLERANCE:
                self.set_phase("lower")
                self.lowest, self.lowest_step = nut_pos[2], 0
            return self.servo(target, target_rot, speed=0.4), GRIPPER_CLOSE
        if self.phase == "lower":
            if nut_pos[2] < self.table_z + SEATED_HEIGHT:
                self.set_phase("open")
            elif nut_pos[2] < self.lowest - 0.002:
                self.lowest, self.lowest_step = nut_pos[2], self.phase_steps
            elif self.phase_steps - self.lowest_step > JAM_STEPS:
                self.set_phase("align")  # stuck on the peg top: back up and line up again
            # a target just below the nut keeps the centring part of the action from being scaled away
            target, target_rot = self.carry_target(nut_pos[2] - LOWER_STEP)
            return self.servo(target, target_rot, speed=0.4), GRIPPER_CLOSE
        if self.phase == "open":
            if self.phase_steps >= 5:
                self.set_phase("retreat")
                self.retreat_pos = pos + np.array([0.0, 0.0, RETREAT_HEIGHT])
            return self.servo(pos, down_rotation(self.yaw.value), speed=0.2), GRIPPER_OPEN
        if self.phase == "retreat":
            if self.reached(self.retreat_pos, tolerance=0.02):
                self.finish()
            return self.servo(self.retreat_pos, down_rotation(self.yaw.value), speed=0.6), GRIPPER_OPEN
        if self.phase == "release":
            if self.phase_steps >= 5:
                self.plan_grasp()
            return self.servo(pos + np.array([0.0, 0.0, 0.05]), down_rotation(self.yaw.value), speed=0.5), GRIPPER_OPEN
        # finished: hold still above the nut
        return self.servo(self.retreat_pos, down_rotation(self.yaw.value), speed=0.3), GRIPPER_OPEN
