"""Scripted expert for robomimic Lift: reach above the cube with the gripper yaw aligned to a cube face,
descend, close, lift. A grasp that does not carry the cube up is retried from the hover pose."""

from __future__ import annotations

import numpy as np

from envs.experts.common import (
    GRIPPER_CLOSE,
    DemonstratorStyle,
    ScriptedExpert,
    body_pose,
    closest_symmetric_yaw,
    down_rotation,
    gripper_yaw,
    yaw_of_quat,
)

SUCCESS_MARGIN = 0.04  # Lift succeeds once the cube centre is this far above the table top


class LiftExpert(ScriptedExpert):
    def __init__(self, env, rng: np.random.Generator, style: DemonstratorStyle):
        super().__init__(env, rng, style)
        self.cube_id = env.cube_body_id
        self.table_z = float(env.model.mujoco_arena.table_offset[2])
        self.plan_grasp()

    def plan_grasp(self) -> None:
        """Grasp the cube where it is now, the fingers square to the cube face nearest the wrist's yaw."""
        cube_pos, cube_quat = body_pose(self.env, self.cube_id)
        yaw = closest_symmetric_yaw(yaw_of_quat(cube_quat), gripper_yaw(self.eef()[1]), np.pi / 2)
        self.aim_grasp(cube_pos, down_rotation(yaw))
        self.lift_pos = self.grasp_pos + np.array([0.0, 0.0, self.style.lift_height])

    def plan(self) -> tuple[np.ndarray, float]:
        picking = self.pick_step()
        if picking is not None:
            return picking
        if self.phase == "lift":
            cube_z = self.env.sim.data.body_xpos[self.cube_id][2]
            eef_z = self.eef()[0][2]
            # went up without the cube: noticed once at the lift height (or after a while), open, retry
            if eef_z - cube_z > 0.04 and (self.reached(self.lift_pos, tolerance=0.03) or self.phase_steps > 30):
                self.set_phase("release")
            elif cube_z > self.table_z + SUCCESS_MARGIN + 0.02 and self.reached(self.lift_pos, tolerance=0.03):
                self.finish()
            return self.servo(self.lift_pos, self.grasp_rot, speed=0.7), GRIPPER_CLOSE
        if self.phase == "release":
            return self.release_step(then=self.plan_grasp)
        # finished: hold the cube up
        return self.servo(self.lift_pos, self.grasp_rot, speed=0.3), GRIPPER_CLOSE
