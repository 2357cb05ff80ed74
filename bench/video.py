"""`bench video`: deterministic evaluation episodes of a run's policy, rendered offscreen to MP4 or GIF.

The episodes are the ones `bench eval --episodes N` evaluates: the run's evaluation envs, eval seed and
noise, through `bench.runner.evaluate`. A wrapper inside each env renders the env's own MuJoCo scene with
`mujoco.Renderer` (gymnasium's MjModel/MjData, the robosuite sim's, the furniture sim's) after the reset
and every `every`-th step; it changes nothing else, so the printed returns are `bench eval`'s. Beside the
video goes a frame strip PNG of its first episode (what `bench report` embeds).

Offscreen OpenGL: without a display (no $DISPLAY or $WAYLAND_DISPLAY) and with MUJOCO_GL unset, MUJOCO_GL
is set to egl, or osmesa where only OSMesa is installed (Debian/Ubuntu: `apt-get install libegl1
libgl1-mesa-dri`, or `libosmesa6`); an explicit MUJOCO_GL is kept.
"""

from __future__ import annotations

import ctypes.util
import dataclasses
import importlib
import io
import math
import os
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np

from core.atomic import atomic_path
from core.errors import BenchError

VIDEO_DIR = "video"  # inside the run directory: final.mp4 / pretrained.mp4 and their .png strips
FORMATS = (".mp4", ".gif")
MAX_FPS = 30.0  # default: every k-th env step, k the smallest that keeps real time at <= 30 frames/s
PREFERRED_CAMERAS = ("track", "frontview", "agentview")  # gymnasium's tracking camera, robosuite's views
# the free camera of a scene without those (lookat, distance, azimuth, elevation); default: MuJoCo's free
# camera over the whole scene. Furniture: from in front of the robot, over the parts.
FREE_CAMERAS = {"furniture": ((0.15, 0.0, 0.45), 1.4, 180.0, -30.0)}
STRIP_FRAMES = 6
INSTALL_HINT = ("apt-get install libegl1 libgl1-mesa-dri (EGL) or libosmesa6 (OSMesa), or set MUJOCO_GL "
                "to a backend that works here")


def default_path(run_dir: Path, pretrained: bool) -> Path:
    return Path(run_dir) / VIDEO_DIR / f"{'pretrained' if pretrained else 'final'}.mp4"


def strip_path(video: Path) -> Path:
    return Path(video).with_suffix(".png")


def find_strip(run_dir: Path) -> tuple[Path, str] | None:
    """The frame strip a default `bench video` left in the run directory: (PNG, "fine-tuned" or
    "pre-trained"), the fine-tuned policy's first; None without one."""
    for pretrained, policy in ((False, "fine-tuned"), (True, "pre-trained")):
        for ext in FORMATS:
            strip = strip_path(default_path(run_dir, pretrained).with_suffix(ext))
            if strip.is_file():
                return strip, policy
    return None


def choose_gl() -> str:
    """The MuJoCo GL backend: MUJOCO_GL, else egl (or osmesa) when there is no display (set in MUJOCO_GL)."""
    gl = os.environ.get("MUJOCO_GL")
    if not gl:
        if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
            return "glfw"
        gl = "egl" if ctypes.util.find_library("EGL") else "osmesa" if ctypes.util.find_library("OSMesa") else None
        if gl is None:
            raise BenchError(f"offscreen rendering needs EGL or OSMesa and neither is installed: {INSTALL_HINT}")
        os.environ["MUJOCO_GL"] = gl
    if "mujoco" in sys.modules and gl in ("egl", "osmesa"):
        # mujoco reads MUJOCO_GL when imported: imported before (e.g. by a gymnasium env) it may hold GLFW
        from mujoco.rendering.classic import gl_context

        gl_context.GLContext = importlib.import_module(f"mujoco.{gl}").GLContext
    return gl


def check_renderer(width: int, height: int) -> str:
    """Render one frame of a tiny scene (before any work): a one-line BenchError when offscreen GL fails."""
    gl = choose_gl()
    import mujoco

    try:
        model = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=".1"/></worldbody></mujoco>')
        model.vis.global_.offwidth, model.vis.global_.offheight = width, height
        renderer = mujoco.Renderer(model, height, width)
        try:
            renderer.update_scene(mujoco.MjData(model))
            renderer.render()
        finally:
            renderer.close()
    except Exception as e:  # noqa: BLE001 (any GL failure: one line naming the fix)
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        raise BenchError(f"offscreen rendering with MUJOCO_GL={gl} failed ({msg}); {INSTALL_HINT}") from None
    return gl


def scene(env: gym.Env):
    """The env's MuJoCo (MjModel, MjData), read now: robosuite rebuilds its model at every reset."""
    import mujoco

    u = env.unwrapped
    rs = getattr(u, "robosuite_env", None)
    if rs is not None:
        return rs.sim.model._model, rs.sim.data._data
    if isinstance(getattr(u, "model", None), mujoco.MjModel):
        return u.model, u.data
    raise BenchError(f"{type(u).__name__} has no MuJoCo scene to render; bench video renders MuJoCo tasks "
                     f"(the gym, robomimic and furniture suites)")


class FrameRecorder(gym.Wrapper):
    """Renders the wrapped env's scene after every reset and every `every`-th step (None: chosen at the
    first step for real time at <= MAX_FPS frames/s); `episodes[i]` holds episode i's frames."""

    def __init__(self, env: gym.Env, width: int, height: int, camera: str | None, every: int | None,
                 suite: str = ""):
        super().__init__(env)
        self.width, self.height, self.camera, self.every, self.suite = width, height, camera, every, suite
        self.episodes: list[list[np.ndarray]] = []
        self.dt: float | None = None  # simulated seconds per env step
        self._renderer = self._model = None
        self._steps, self._t0 = 0, 0.0
        scene(env)  # no MuJoCo scene: fail before any episode runs

    def _render(self) -> None:
        import mujoco

        model, data = scene(self.env)
        if model is not self._model:
            self.close_renderer()
            vis = model.vis.global_
            vis.offwidth, vis.offheight = max(vis.offwidth, self.width), max(vis.offheight, self.height)
            self._renderer, self._model = mujoco.Renderer(model, self.height, self.width), model
            self._cam, self._opt = self._make_camera(model), mujoco.MjvOption()
            self._opt.sitegroup[:] = 0  # sites are markers (robosuite's grip-site cylinders), not the scene
            if hasattr(self.env.unwrapped, "robosuite_env"):
                self._opt.geomgroup[0] = 0  # robosuite's collision geoms; group 1 holds its visual meshes
            if model.nlight == 0:  # only the headlight: brighter
                model.vis.headlight.ambient[:], model.vis.headlight.diffuse[:] = 0.4, 0.6
        self._renderer.update_scene(data, camera=self._cam, scene_option=self._opt)
        self.episodes[-1].append(self._renderer.render().copy())

    def _make_camera(self, model):
        import mujoco

        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
        name = self.camera or next((n for n in PREFERRED_CAMERAS if n in names), "free")
        if name != "free" and name not in names:
            raise BenchError(f"unknown --camera {name!r}; this task's cameras: {', '.join(names + ['free'])}")
        cam = mujoco.MjvCamera()
        if name == "free":
            mujoco.mjv_defaultFreeCamera(model, cam)
            if self.suite in FREE_CAMERAS:
                cam.lookat[:], cam.distance, cam.azimuth, cam.elevation = FREE_CAMERAS[self.suite]
        else:
            cam.type, cam.fixedcamid = mujoco.mjtCamera.mjCAMERA_FIXED, names.index(name)
        return cam

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        self.episodes.append([])
        self._steps, self._t0 = 0, scene(self.env)[1].time
        self._render()
        return out

    def step(self, action):
        out = self.env.step(action)
        self._steps += 1
        if self.dt is None:
            self.dt = max(scene(self.env)[1].time - self._t0, 1e-6)
            self.every = self.every or math.ceil(1.0 / self.dt / MAX_FPS - 1e-9)
        if self._steps % self.every == 0:
            self._render()
        return out

    def close_renderer(self) -> None:
        if self._renderer is not None:
            self._renderer.close()  # explicitly: a GL context freed at interpreter exit errors
            self._renderer = self._model = None

    def close(self):
        self.close_renderer()
        super().close()


def check_options(out: Path, episodes: int, fps: float | None, every: int | None, width: int, height: int) -> None:
    if out.suffix.lower() not in FORMATS:
        raise BenchError(f"--out {out}: unknown video format {out.suffix or '(none)'!r}; valid: "
                         f"{', '.join(FORMATS)}")
    if out.is_dir():
        raise BenchError(f"--out {out} is a directory; give a file path ending in .mp4 or .gif")
    if episodes < 1:
        raise BenchError(f"--episodes must be >= 1, got {episodes}")
    if fps is not None and not 0 < fps <= 240:
        raise BenchError(f"--fps must be in (0, 240], got {fps:g}")
    if every is not None and every < 1:
        raise BenchError(f"--every must be >= 1, got {every}")
    for name, v in (("--width", width), ("--height", height)):
        if v < 16 or v > 4096 or v % 16:
            raise BenchError(f"{name} must be a multiple of 16 in 16..4096 (H.264 macroblocks), got {v}")
    if out.suffix.lower() == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise BenchError("MP4 needs imageio-ffmpeg (pip install imageio-ffmpeg; its wheel ships ffmpeg), or "
                             "give --out FILE.gif") from None


def record(run_dir: Path, episodes: int = 1, pretrained: bool = False, out: Path | None = None,
           fps: float | None = None, every: int | None = None, width: int = 320, height: int = 240,
           camera: str | None = None) -> dict:
    """Render `episodes` deterministic evaluation episodes to `out` (default RUN/video/final.mp4 or
    pretrained.mp4) plus its frame strip; returns what was written and the episodes' returns."""
    from bench.export import check_run_dir
    from bench.runner import evaluate, load_for_eval, make_env

    store = check_run_dir(run_dir)
    out = Path(out) if out is not None else default_path(store.dir, pretrained)
    check_options(out, episodes, fps, every, width, height)
    gl = check_renderer(width, height)
    ctx, algo, norm, _ = load_for_eval(store.dir, "cpu", pretrained=pretrained)
    cfg = ctx.cfg
    if cfg.env.sim != "mujoco":
        raise BenchError(f"the run simulates with {cfg.env.sim}; bench video renders MuJoCo scenes only")
    cfg.env.vector = "sync"  # the recorders live in this process (an execution choice: same episodes)
    recorders: list[FrameRecorder] = []
    base = ctx.task.make_env

    def make(env_id, max_episode_steps, **kwargs):
        recorders.append(FrameRecorder(base(env_id, max_episode_steps, **kwargs), width, height, camera, every,
                                       ctx.task.suite))
        return recorders[-1]

    ctx = dataclasses.replace(ctx, task=dataclasses.replace(ctx.task, make_env=make))
    n_envs = min(cfg.eval.n_envs, episodes)
    env = make_env(ctx, norm, n_envs)
    try:
        res = evaluate(algo, env, episodes, cfg.eval.seed + cfg.seed, ctx.device)
    finally:
        env.close()
    # env i ran episodes quota[i] of them (evaluate's split), in the order of res["returns"]
    quota = [episodes // n_envs + (i < episodes % n_envs) for i in range(n_envs)]
    clips = [ep for rec, q in zip(recorders, quota) for ep in rec.episodes[:q]]
    rec = recorders[0]
    fps = fps or round(1.0 / (rec.dt * rec.every), 3)
    frames = [f for clip in clips for f in clip]
    write_video(out, frames, fps)
    strip = strip_path(out)
    write_strip(strip, clips[0])
    return {"video": str(out), "strip": str(strip), "frames": len(frames), "fps": fps, "every": rec.every,
            "width": width, "height": height, "gl": gl, "policy": "pre-trained" if pretrained else "fine-tuned",
            "task": cfg.task, "algorithm": cfg.algorithm, "seed": cfg.seed, "eval_seed": cfg.eval.seed + cfg.seed,
            "returns": res["returns"], "success_rate": res["success_rate"], "episode_frames": [len(c) for c in clips]}


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    import imageio.v3 as iio

    ext = path.suffix.lower()
    if ext == ".gif":  # GIF delays are in 10 ms units
        data = iio.imwrite("<bytes>", np.stack(frames), extension=".gif", duration=max(20, round(1000 / fps, -1)),
                           loop=0)
    else:
        data = iio.imwrite("<bytes>", np.stack(frames), extension=".mp4", fps=fps, codec="libx264",
                           quality=7, macro_block_size=16, ffmpeg_log_level="error")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_strip(path: Path, frames: list[np.ndarray], n: int = STRIP_FRAMES, scale: float = 0.5) -> None:
    """`n` frames evenly spaced over an episode, side by side at `scale`, as one PNG."""
    from PIL import Image

    picks = [frames[i] for i in np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int)]
    h, w = picks[0].shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    gap = 4
    strip = Image.new("RGB", (len(picks) * size[0] + (len(picks) - 1) * gap, size[1]), "white")
    for i, f in enumerate(picks):
        strip.paste(Image.fromarray(f).resize(size, Image.LANCZOS), (i * (size[0] + gap), 0))
    buf = io.BytesIO()
    strip.save(buf, format="PNG", optimize=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
