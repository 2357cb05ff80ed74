"""Scripted expert for robomimic Can (robosuite PickPlaceCan): pick the can from bin 1 with a top-down
grasp, lift it over the bin walls, carry it above its quadrant of bin 2 (`env.target_bin_placements`),
lower it, release and retreat (PickPlace only counts the can as placed once the gripper has left it).
A grasp that fails or a can dropped on the way is picked up again from where it lies."""

from __future__ import annotations

import numpy as np

from envs.experts.common import (
    GRIPPER_CLOSE,
    GRIPPER_OPEN,
    DemonstratorStyle,
    ScriptedExpert,
    body_pose,
    down_rotation,
    gripper_yaw,
)

CARRY_CLEARANCE = 0.20  # carry height above the bin base with the default lift height (walls are 0.1)
PLACE_MARGIN = np.array([0.06, 0.07])  # release point: this far inside the quadrant corner nearest the robot
GRASP_ABOVE_CENTRE = 0.015  # the can is short: grasping at its centre would push the fingertips into the bin
RELEASE_HEIGHT = 0.13  # gripper height above the bin-2 base when the can is let go
RETREAT_HEIGHT = 0.08  # metres the gripper rises after releasing


class CanExpert(ScriptedExpert):
    def __init__(self, env, rng: np.random.Generator, style: DemonstratorStyle):
        super().__init__(env, rng, style)
        self.can_id = env.obj_body_id[env.objects[env.object_id].name]
        # The quadrant's centre is at the edge of the Panda's reach with a top-down gripper, so the can
        # goes near the quadrant's corner closest to the robot (success only needs it inside the quadrant).
        quadrant_centre = env.target_bin_placements[env.object_id][:2]
        quadrant_half = np.asarray(env.bin_size[:2]) / 4.0
        place_xy = quadrant_centre - quadrant_half + PLACE_MARGIN + 3 * style.grasp_pos_std * rng.standard_normal(2)
        self.carry_z = float(env.bin2_pos[2] + CARRY_CLEARANCE + (style.lift_height - 0.15) / 2)
        self.above_bin = np.array([*place_xy, self.carry_z])
        self.release_pos = np.array([*place_xy, env.bin2_pos[2] + RELEASE_HEIGHT])
        self.plan_grasp()

    def can_pos(self) -> np.ndarray:
        return body_pose(self.env, self.can_id)[0]

    def plan_grasp(self) -> None:
        """Grasp the can where it is now; it is round, so the wrist keeps its yaw, levelled to point down."""
        self.aim_grasp(self.can_pos(), down_rotation(gripper_yaw(self.eef()[1])), height_offset=GRASP_ABOVE_CENTRE)
        self.lift_pos = np.array([*self.grasp_pos[:2], self.carry_z])

    def holding(self) -> bool:
        """The can is still between the fingers (within a few cm of the grip site)."""
        return bool(np.linalg.norm(self.can_pos() - self.eef()[0]) < 0.05)

    def plan(self) -> tuple[np.ndarray, float]:
        picking = self.pick_step()
        if picking is not None:
            return picking
        if self.phase in ("lift", "detour_carry", "transit", "lower") and not self.holding():
            self.set_phase("release")  # lost the can: open, back off upward, pick it up again
        if self.phase == "lift":
            if self.reached(self.lift_pos, tolerance=0.03):
                self.carry_detour = self.detour_waypoint(self.eef()[0], self.above_bin)
                self.set_phase("detour_carry" if self.carry_detour is not None else "transit")
            return self.servo(self.lift_pos, self.grasp_rot, speed=0.8), GRIPPER_CLOSE
        if self.phase == "detour_carry":
            # a carry detour never dips below the carry height (the bin walls are in the way)
            waypoint = np.array([*self.carry_detour[:2], max(self.carry_detour[2], self.carry_z)])
            if self.reached(waypoint, tolerance=0.04):
                self.set_phase("transit")
            return self.servo(waypoint, self.grasp_rot), GRIPPER_CLOSE
        if self.phase == "transit":
            if self.reached(self.above_bin, tolerance=0.02, axes=slice(0, 2)):
                self.set_phase("lower")
            return self.servo(self.above_bin, self.grasp_rot), GRIPPER_CLOSE
        if self.phase == "lower":
            if self.reached(self.release_pos, tolerance=0.015) or self.phase_steps > 40:
                self.set_phase("open")
            return self.servo(self.release_pos, self.grasp_rot, speed=0.6), GRIPPER_CLOSE
        if self.phase == "open":
            if self.phase_steps >= 4:
                self.set_phase("retreat")
            return self.servo(self.release_pos, self.grasp_rot), GRIPPER_OPEN
        if self.phase == "retreat":
            retreat = self.release_pos + np.array([0.0, 0.0, RETREAT_HEIGHT])
            if self.reached(retreat, tolerance=0.02):
                if self.env._check_success():
                    self.finish()
                else:  # the can missed its quadrant: pick it up again
                    self.plan_grasp()
            return self.servo(retreat, self.grasp_rot), GRIPPER_OPEN
        if self.phase == "release":
            return self.release_step(then=self.plan_grasp)
        # finished: hold still above the bin
        return np.zeros(6), GRIPPER_OPEN
