"""Scripted expert for robomimic Transport (robosuite TwoArmTransport, two Pandas facing each other).

robosuite counts the task solved while the payload (a hammer) touches the base of the target bin and
the trash (a 4 cm cube) touches the base of the trash bin. Geometry (robosuite 1.5.1, "opposed"): robot 0
stands at y = -0.81 facing +y, robot 1 at y = +0.81 facing -y; table 0 (y = -0.45) holds the start bin
at x = +0.2 with a lid on it and the hammer inside; table 1 (y = +0.45) holds the target bin at x = -0.2
with the trash inside and the trash bin at x = +0.2. The tables are 0.6 m apart, out of one arm's reach
of the other's table, so the hammer is handed over in the gap between them.

The script (each arm a phase machine; they meet at the hand-over):
  robot 0: lift the lid by its handle and drop it into the gap between the tables (it falls to the
           floor), grasp the hammer's handle on the side nearest robot 0, lift it out of the bin, turn
           it so the handle points along y, and hold it out at the hand-over point between the robots;
           once robot 1 has closed on the handle, let go and back off.
  robot 1: pick the trash out of the target bin and drop it into the trash bin, wait above the
           hand-over point, grasp the presented handle on its own side, and once robot 0 has let go,
           carry the hammer over the target bin, lower it and let go.
A grasp that does not come up with its object is retried; trash that misses its bin is picked up again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from envs.experts.common import (
    GRIPPER_CLOSE,
    GRIPPER_OPEN,
    DemonstratorStyle,
    ScriptedExpert,
    YawTracker,
    body_pose,
    down_rotation,
    gripper_opening,
    plan_wrist_turns,
    quat_to_mat,
    wrap_angle,
    yaw_of_quat,
)

HOVER_HEIGHT = 0.08  # metres above a grasp point for the pre-grasp pose
BIN_CLEARANCE = 0.06  # grip site this far above the bin walls' top when travelling over them
LID_LIFT = 0.05  # lid handle raised this far before it is carried off
LID_DROP_HEIGHT = 1.05  # grip-site height at which the lid is let go over the gap
HAMMER_GRASP_OFFSET = 0.06  # grasp points on the hammer handle, this far either side of its centre
HAMMER_LIFT = 0.03  # grip site this far above the bin-clearing height before the hammer is carried out
HANDOVER_CENTRE = np.array([0.0, 0.0, 1.05])  # hammer centre while it is held out between the robots
HANDOVER_STEADY_STEPS = 3  # robot 0 holds the hammer this long at the hand-over point before robot 1 reaches in
RELEASE_STEPS = 6  # steps with the gripper opening before backing off (more until the fingers are apart)
OPEN_WIDTH = 0.06  # finger-joint gap at which the fingers have let go of anything held
TRASH_DROP_OFFSET = 0.07  # trash dropped this far from its bin's centre, away from robot 1
TRASH_RELEASE_Z = 1.0  # grip-site height at which the trash is dropped into its bin
HAMMER_RELEASE_ABOVE_BASE = 0.09  # hammer centre this far above the target-bin base when let go
SETTLE_STEPS = 25  # steps after opening by which a dropped object has landed
SHUT_OPENING = 0.005  # finger-joint gap below which the gripper has closed on nothing
FINE_NOISE_SCALE = 0.35  # action noise while grasping and handing over, relative to the style's


@dataclass
class Grasp:
    """One top-down grasp: where (following the object), with which gripper yaw, and what comes next."""

    point: Callable[[], np.ndarray]  # world grasp point now
    yaw: float  # continuous gripper yaw (YawTracker units) to grasp with
    lift_z: float  # grip-site height to lift to once closed
    held: Callable[[], bool]  # the object is between the fingers
    then: str  # phase after the lift
    replan: Callable[[], "Grasp"]  # a fresh grasp of the same object after a miss
    close_steps: int = 0  # extra steps closing (beyond the operator's grasp_wait)
    clear_z: float = 0.0  # grip-site height to travel at until over the object (above bin walls)
    lift_shift: tuple[float, float] = (0.0, 0.0)  # horizontal move (metres) while lifting


class ArmScript(ScriptedExpert):
    """One arm of the two-arm script: top-down grasps (`start_grasp`) plus the arm's own phases."""

    GRASP_PHASES = ("detour", "approach", "descend", "close", "lift", "regrasp")
    FINE_PHASES = ("descend", "close")

    def __init__(self, env, rng: np.random.Generator, style: DemonstratorStyle, robot: int):
        super().__init__(env, rng, style, robot=robot)
        self.transport = env.transport
        # grip-site height that keeps the fingertips above the walls of the bins on this arm's table
        self.clear_z = float(env.table_offsets[robot][2] + env.bin_size[2] + BIN_CLEARANCE)
        self.yaw = YawTracker(self.eef()[1])
        self.noise_std = np.array(self.filter.noise_std)
        self.grasp: Grasp | None = None
        self.partner: ArmScript | None = None
        self.hold_pos = self.eef()[0]

    def careful(self) -> bool:
        """Operators steady their hand when grasping and handing over."""
        return self.phase in self.FINE_PHASES

    def act(self, obs: dict | None = None) -> np.ndarray:
        self.filter.noise_std = self.noise_std * (FINE_NOISE_SCALE if self.careful() else 1.0)
        self.yaw.update(self.eef()[1])
        return super().act(obs)

    def level(self) -> np.ndarray:
        """Pointing straight down at the current yaw (holding the orientation without letting noise
        tilt the gripper)."""
        return down_rotation(self.yaw.value)

    def rot_toward(self, yaw: float) -> np.ndarray:
        """Down-pointing orientation toward a continuous yaw, at most 1 rad ahead (keeps the turn's way)."""
        return down_rotation(self.yaw.value + np.clip(yaw - self.yaw.value, -1.0, 1.0))

    def grasp_offset(self, height: tuple[float, float] = (-0.004, 0.006)) -> np.ndarray:
        """The operator's imprecision about a grasp point."""
        s = self.style
        return np.array([*(s.grasp_pos_std * self.rng.standard_normal(2)), np.clip(s.grasp_height_std * self.rng.standard_normal(), *height)])

    def grasp_yaw(self, options: list[float], carry_turn: float = 0.0) -> tuple[float, float]:
        """Continuous grasp yaw among equivalent `options` (and the carry turn's direction), keeping the
        wrist inside its range; includes the operator's yaw error."""
        turn, carry = plan_wrist_turns(self.env, self.yaw.value, options, carry_turn, robot=self.robot)
        return self.yaw.value + turn + self.style.grasp_yaw_std * self.rng.standard_normal(), carry

    def start_grasp(self, grasp: Grasp) -> None:
        self.grasp = grasp
        hover = grasp.point() + np.array([0.0, 0.0, HOVER_HEIGHT])
        self.detour = self.detour_waypoint(self.eef()[0], hover)
        self.set_phase("detour" if self.detour is not None else "approach")

    def grasp_phase(self) -> tuple[np.ndarray, float]:
        g = self.grasp
        pos, _ = self.eef()
        point = g.point()
        hover = point + np.array([0.0, 0.0, HOVER_HEIGHT])
        if self.phase == "detour":
            if self.reached(self.detour, tolerance=0.03):
                self.set_phase("approach")
            return self.servo(self.detour, self.rot_toward(g.yaw)), GRIPPER_OPEN
        if self.phase == "approach":
            if self.reached(hover, axes=slice(0, 2)) and abs(g.yaw - self.yaw.value) < 0.1 and pos[2] > point[2] + 0.02:
                self.set_phase("descend")
            # stay above any bin walls until over the object, then come down to the hover point
            if not self.reached(hover, 0.05, slice(0, 2)):
                hover = np.array([*hover[:2], max(hover[2], g.clear_z)])
            return self.servo(hover, self.rot_toward(g.yaw)), GRIPPER_OPEN
        if self.phase == "descend":
            # near the robot's base the arm is slow to close the last centimetres; the fingers are
            # wide enough for those
            close_enough = self.reached(point, 0.02) and abs(point[2] - pos[2]) < 0.01 and self.phase_steps > 8
            if self.reached(point) or close_enough or self.phase_steps > 30:
                self.set_phase("close")
                self.close_pos = point
            return self.servo(point, self.rot_toward(g.yaw), speed=0.6), GRIPPER_OPEN
        if self.phase == "close":
            if self.phase_steps >= self.style.grasp_wait + g.close_steps:
                self.set_phase("lift")
            return self.servo(self.close_pos, self.rot_toward(g.yaw)), GRIPPER_CLOSE
        if self.phase == "lift":
            if not g.held():
                self.set_phase("regrasp")
            elif pos[2] > g.lift_z - 0.02:
                self.set_phase(g.then)
            speed = 0.3 if self.phase_steps < 4 else 0.8  # ease the object up
            lift = np.array([*(self.close_pos[:2] + g.lift_shift), g.lift_z])
            return self.servo(lift, self.level(), speed=speed), GRIPPER_CLOSE
        # regrasp: open, rise, and try again from the object's current pose
        if self.phase_steps >= RELEASE_STEPS:
            self.start_grasp(g.replan())
        return self.servo(pos + np.array([0.0, 0.0, 0.05]), self.level(), speed=0.5), GRIPPER_OPEN

    def released(self) -> bool:
        """The gripper has been opening long enough for the fingers to be clear of what they held."""
        wide = gripper_opening(self.env, self.robot) > OPEN_WIDTH
        return self.phase_steps >= RELEASE_STEPS and (wide or self.phase_steps >= 3 * RELEASE_STEPS)

    def holding(self, point: np.ndarray, radius: float) -> bool:
        """The grip site is within `radius` of `point` on the object and the fingers are not shut on air."""
        near = np.linalg.norm(point - self.eef()[0]) < radius
        return bool(near and gripper_opening(self.env, self.robot) > SHUT_OPENING)


# ----------------------------------------------------------------------------------------------------
# robot 0: lid off, hammer out, hold it out for the hand-over


class LidHammerArm(ArmScript):
    FINE_PHASES = ("descend", "close", "give")

    def __init__(self, env, rng: np.random.Generator, style: DemonstratorStyle):
        super().__init__(env, rng, style, robot=0)
        table_y = float(env.table_offsets[0][1])
        inner_edge = table_y + env.table_full_size[1] / 2.0
        lid_half = env.bin_size[1] / 2.0
        # over the gap between the tables, far enough that the falling lid clears both table edges
        self.lid_drop = np.array([self.transport.lid_handle_pos[0], inner_edge + lid_half + 0.03, LID_DROP_HEIGHT])
        self.lid_drop[:2] += 2 * style.grasp_pos_std * rng.standard_normal(2)
        self.table_top = float(env.table_offsets[0][2])
        self.start_grasp(self.lid_grasp())

    # -- lid -----------------------------------------------------------------------------------------

    def lid_grasp(self) -> Grasp:
        # the handle is thin along x: the fingers close along x (gripper yaw 0 or pi)
        yaw, _ = self.grasp_yaw([0.0, np.pi])
        offset = self.grasp_offset(height=(-0.003, 0.006))
        offset[0] *= 0.3  # across the 2 cm handle the fingers centre themselves; keep the error small
        return Grasp(
            point=lambda: self.transport.lid_handle_pos + offset,
            yaw=yaw,
            lift_z=float(self.transport.lid_handle_pos[2] + LID_LIFT),
            held=lambda: self.holding(self.transport.lid_handle_pos, 0.04),
            then="carry_lid",
            replan=self.lid_grasp,
        )

    # -- hammer --------------------------------------------------------------------------------------

    def hammer_axis(self) -> tuple[np.ndarray, np.ndarray]:
        """Hammer handle centre and unit axis (toward the head)."""
        pos, quat = body_pose(self.env, self.transport.payload_body_id)
        return pos, quat_to_mat(quat)[:, 2]

    def hammer_grasp(self) -> Grasp:
        centre, axis = self.hammer_axis()
        # +1 or -1: the direction along the hammer axis of the handle end nearest robot 0 (-y)
        self.side = side = -1.0 if axis[1] > 0 else 1.0
        axis_yaw = float(np.arctan2(axis[1], axis[0]))
        # hand-over pose: handle along y, robot 0's end toward -y
        target_axis_yaw = np.pi / 2 if side < 0 else -np.pi / 2
        self.hammer_turn = wrap_angle(target_axis_yaw - axis_yaw)
        across = axis_yaw + np.pi / 2
        yaw, self.hammer_turn = self.grasp_yaw([across, across + np.pi], self.hammer_turn)
        offset = self.grasp_offset()
        return Grasp(
            point=lambda: self.hammer_point(side) + offset,
            yaw=yaw,
            lift_z=self.clear_z + HAMMER_LIFT,
            held=lambda: self.holding(self.hammer_point(side), 0.04),
            then="present",
            replan=self.hammer_grasp,
            close_steps=3,
            clear_z=self.clear_z,
        )

    def hammer_point(self, side: float) -> np.ndarray:
        centre, axis = self.hammer_axis()
        return centre + side * HAMMER_GRASP_OFFSET * axis

    def present_target(self) -> tuple[np.ndarray, np.ndarray]:
        """Grip pose putting the held hammer's centre at the hand-over point with its handle along y."""
        pos, _ = self.eef()
        centre, axis = self.hammer_axis()
        remaining = self.present_yaw - self.yaw.value
        lever = centre[:2] - pos[:2]
        c, s = np.cos(remaining), np.sin(remaining)
        swung = np.array([c * lever[0] - s * lever[1], s * lever[0] + c * lever[1]])
        target = np.array([*(HANDOVER_CENTRE[:2] - swung), pos[2] + HANDOVER_CENTRE[2] - centre[2]])
        return target, self.rot_toward(self.present_yaw)

    def presenting(self) -> bool:
        return self.phase == "present" and self.steady >= HANDOVER_STEADY_STEPS

    def careful(self) -> bool:
        return super().careful() or (self.phase == "present" and self.steady > 0)

    # -- phases --------------------------------------------------------------------------------------

    def plan(self) -> tuple[np.ndarray, float]:
        if self.phase in self.GRASP_PHASES:
            action = self.grasp_phase()
            if self.phase == "present":  # just lifted the hammer
                self.present_yaw = self.yaw.value + self.hammer_turn
                self.steady = 0
            return action
        pos, _ = self.eef()
        if self.phase == "carry_lid":
            if not self.holding(self.transport.lid_handle_pos, 0.04):
                self.set_phase("regrasp")  # dropped on the way: pick it up again
                return self.servo(pos, self.level()), GRIPPER_OPEN
            if self.reached(self.lid_drop, tolerance=0.03):
                self.set_phase("drop_lid")
            return self.servo(self.lid_drop, self.level()), GRIPPER_CLOSE
        if self.phase == "drop_lid":
            if self.released():
                self.start_grasp(self.hammer_grasp())
            return self.servo(self.lid_drop, self.level(), speed=0.3), GRIPPER_OPEN
        if self.phase == "present":
            if not self.holding(self.hammer_point(self.side), 0.05):
                if self.hammer_axis()[0][2] < self.table_top:
                    self.set_phase("lost")  # fell into the gap between the tables, out of reach
                else:
                    self.start_grasp(self.hammer_grasp())  # dropped back onto table 0: pick it up again
                return self.servo(pos, self.level()), GRIPPER_OPEN
            target, rot = self.present_target()
            self.steady = self.steady + 1 if self.reached(target, tolerance=0.015) else 0
            if self.partner.phase == "take_over":
                self.set_phase("give")
            return self.servo(target, rot), GRIPPER_CLOSE
        if self.phase == "give":
            if self.released():
                self.set_phase("back_off")
                self.hold_pos = pos + np.array([0.0, -0.15, 0.05])
            return self.servo(pos, self.level(), speed=0.2), GRIPPER_OPEN
        if self.phase == "back_off":
            if self.reached(self.hold_pos, tolerance=0.03):
                self.finish()
            return self.servo(self.hold_pos, self.level()), GRIPPER_OPEN
        return self.servo(self.hold_pos, self.level(), speed=0.3), GRIPPER_OPEN


# ----------------------------------------------------------------------------------------------------
# robot 1: trash out, take the hammer, put it in the target bin


class TrashReceiverArm(ArmScript):
    FINE_PHASES = ("descend", "close", "take_over")

    def __init__(self, env, rng: np.random.Generator, style: DemonstratorStyle):
        super().__init__(env, rng, style, robot=1)
        # Carry the trash over the parts of the bins away from the robot: with the gripper as high as the
        # bin walls need and this close to the base, the elbow folds to near its joint limit and the
        # wrist twists into a posture from which the far hand-over point is out of reach.
        self.base_xy = np.array(env.robots[1].base_pos[:2])
        trash_bin = self.transport.trash_bin_pos[:2]
        self.trash_drop = trash_bin + TRASH_DROP_OFFSET * self.away(trash_bin) + style.grasp_pos_std * rng.standard_normal(2)
        self.start_grasp(self.trash_grasp())

    def away(self, xy: np.ndarray) -> np.ndarray:
        """Unit horizontal direction from the robot's base to `xy`."""
        return (xy - self.base_xy) / np.linalg.norm(xy - self.base_xy)

    def trash_grasp(self) -> Grasp:
        cube_yaw = yaw_of_quat(self.transport.trash_quat)
        yaw, _ = self.grasp_yaw([cube_yaw + k * np.pi / 2 for k in range(4)])
        offset = self.grasp_offset(height=(-0.004, 0.008))
        return Grasp(
            point=lambda: self.transport.trash_pos + offset,
            yaw=yaw,
            lift_z=self.clear_z,
            held=lambda: self.holding(self.transport.trash_pos, 0.04),
            then="carry_trash",
            replan=self.trash_grasp,
            clear_z=self.clear_z,
            # rise away from the base too (the 4 cm cube clears the bin walls on the way)
            lift_shift=tuple(TRASH_DROP_OFFSET * self.away(self.transport.trash_pos[:2])),
        )

    def hammer_axis(self) -> tuple[np.ndarray, np.ndarray]:
        return self.partner.hammer_axis()

    def take_point(self) -> np.ndarray:
        """Robot 1's grasp point: the other side of the handle centre from robot 0's."""
        return self.partner.hammer_point(-self.partner.side)

    def handover_grasp(self) -> Grasp:
        _, axis = self.hammer_axis()
        across = float(np.arctan2(axis[1], axis[0])) + np.pi / 2
        yaw, _ = self.grasp_yaw([across, across + np.pi])
        offset = self.grasp_offset(height=(-0.003, 0.005))
        return Grasp(
            point=lambda: self.take_point() + offset,
            yaw=yaw,
            lift_z=0.0,  # not lifted: robot 0 still holds it (see "take_over")
            held=lambda: True,
            then="take_over",
            replan=self.handover_grasp,
            close_steps=3,
        )

    def plan(self) -> tuple[np.ndarray, float]:
        pos, _ = self.eef()
        if self.phase == "lift" and self.grasp.then == "take_over":
            self.set_phase("take_over")  # closing on the presented hammer: hand over, no lift
        if self.phase in self.GRASP_PHASES:
            return self.grasp_phase()
        if self.phase == "carry_trash":
            if not self.holding(self.transport.trash_pos, 0.04):
                self.start_grasp(self.trash_grasp())  # dropped on the way: pick it up where it lies
                return self.servo(pos, self.level()), GRIPPER_OPEN
            above = np.array([*self.trash_drop, self.clear_z])
            if self.reached(above, tolerance=0.03, axes=slice(0, 2)):
                self.set_phase("drop_trash")
            return self.servo(np.array([*above[:2], max(pos[2], self.clear_z)]), self.level()), GRIPPER_CLOSE
        if self.phase == "drop_trash":
            if self.transport.trash_in_trash_bin and self.released():
                self.set_phase("wait")
                self.wait_yaw, _ = self.grasp_yaw([0.0, np.pi])
            elif self.phase_steps > SETTLE_STEPS:
                self.start_grasp(self.trash_grasp())  # it landed somewhere else: pick it up again
            return self.servo(np.array([*pos[:2], TRASH_RELEASE_Z]), self.level(), speed=0.3), GRIPPER_OPEN
        if self.phase == "wait":
            # above where the presented handle will be, fingers already turned across a y-aligned handle
            wait = HANDOVER_CENTRE + np.array([0.0, HAMMER_GRASP_OFFSET, HOVER_HEIGHT])
            if self.partner.presenting():
                self.start_grasp(self.handover_grasp())
            return self.servo(wait, self.rot_toward(self.wait_yaw)), GRIPPER_OPEN
        if self.phase == "take_over":
            if self.partner.phase in ("back_off", "done"):
                self.set_phase("carry_hammer")
            return self.servo(self.close_pos, self.level(), speed=0.3), GRIPPER_CLOSE
        centre, axis = self.hammer_axis()
        target_bin = self.transport.target_bin_pos
        # grip position that puts the hammer centre over the bin centre
        over_bin = target_bin[:2] + (pos[:2] - centre[:2])
        if self.phase == "carry_hammer":
            if not self.holding(self.take_point(), 0.05):
                self.set_phase("lost")
                return self.servo(pos, self.level()), GRIPPER_OPEN
            if np.linalg.norm(centre[:2] - target_bin[:2]) < 0.03:
                self.set_phase("lower_hammer")
            return self.servo(np.array([*over_bin, max(pos[2], self.clear_z + 0.04)]), self.level()), GRIPPER_CLOSE
        if self.phase == "lower_hammer":
            release_z = target_bin[2] + HAMMER_RELEASE_ABOVE_BASE
            if centre[2] < release_z + 0.01:
                self.set_phase("release_hammer")
            return self.servo(np.array([*over_bin, pos[2] + release_z - centre[2]]), self.level(), speed=0.8), GRIPPER_CLOSE
        if self.phase == "release_hammer":
            if self.released():
                self.set_phase("retreat")
                self.hold_pos = pos + np.array([0.0, 0.0, 0.12])
            return self.servo(pos, self.level(), speed=0.2), GRIPPER_OPEN
        if self.phase == "retreat":
            if self.reached(self.hold_pos, tolerance=0.03):
                self.finish()
            return self.servo(self.hold_pos, self.level()), GRIPPER_OPEN
        # finished, or the hammer was lost on the way: hold still
        return self.servo(self.hold_pos, self.level(), speed=0.3), GRIPPER_OPEN


class TransportExpert:
    """Both arms' scripts; the action is robot 0's 7 dims then robot 1's (robosuite's order)."""

    def __init__(self, env, rng: np.random.Generator, style: DemonstratorStyle):
        self.style = style
        self.arm0 = LidHammerArm(env, rng, style)
        self.arm1 = TrashReceiverArm(env, rng, style)
        self.arm0.partner, self.arm1.partner = self.arm1, self.arm0

    @property
    def done(self) -> bool:
        return self.arm0.done and self.arm1.done

    @property
    def phase(self) -> str:
        return f"{self.arm0.phase}|{self.arm1.phase}"

    def act(self, obs: dict | None = None) -> np.ndarray:
        return np.concatenate([self.arm0.act(obs), self.arm1.act(obs)])
