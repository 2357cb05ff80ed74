"""Offline dataset loaders (envs/datasets.py) on small files written in the real formats.

D4RL hdf5 files are written with h5py directly in D4RL's layout; Minari datasets with Minari's own
writer, offline, under a tmp MINARI_DATASETS_PATH. Nothing is written outside tmp_path.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from core.errors import BenchError
from envs import datasets as D
from envs.tasks import get_task

HOPPER = get_task("hopper")
OBS, ACT = HOPPER.obs_dim, HOPPER.act_dim  # 11, 3

# 12 transitions, three episodes:
#   0..3  ends with a termination (terminals[3])
#   4..8  ends with a time limit (timeouts[8])
#   9..11 cut by the end of the data (no flag in the file; the loader closes it with a timeout)
N = 12
TERMINALS = np.zeros(N, bool)
TERMINALS[3] = True
TIMEOUTS = np.zeros(N, bool)
TIMEOUTS[8] = True
REWARDS = np.arange(1, N + 1, dtype=np.float32)  # episode returns 1+2+3+4, 5+...+9, 10+11+12
EXPECTED_STARTS = np.array([0, 4, 9])
EXPECTED_ENDS = np.array([4, 9, 12])
EXPECTED_RETURNS = np.array([10.0, 35.0, 33.0])


def _arrays(seed=0, obs_dim=OBS, act_dim=ACT):
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((N, obs_dim)).astype(np.float32)
    next_obs = np.concatenate([obs[1:], rng.standard_normal((1, obs_dim)).astype(np.float32)])
    return {
        "observations": obs,
        "actions": rng.uniform(-1, 1, (N, act_dim)).astype(np.float32),
        "rewards": REWARDS.copy(),
        "terminals": TERMINALS.copy(),
        "timeouts": TIMEOUTS.copy(),
        "next_observations": next_obs,
    }


def write_d4rl_like(path, arrays, skip=()):
    """Write `arrays` the way D4RL's hdf5 files are laid out (incl. infos/ and metadata/ groups)."""
    n = len(arrays["rewards"])
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            if k not in skip:
                f.create_dataset(k, data=v)
        f.create_dataset("infos/qpos", data=np.zeros((n, 6), np.float32))
        f.create_dataset("infos/qvel", data=np.zeros((n, 6), np.float32))
        f.create_dataset("infos/action_log_probs", data=np.zeros(n, np.float32))
        f["metadata/algorithm"] = np.bytes_("SAC")
        f["metadata/iteration"] = np.int64(1_000_000)
        f["metadata/policy/nonlinearity"] = np.bytes_("relu")
        f.create_dataset("metadata/policy/fc0/weight", data=np.zeros((256, OBS), np.float32))
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))


# ---------------------------------------------------------------------------------------------------
# D4RL hdf5


def test_load_d4rl_hdf5_real_layout(tmp_path):
    arrays = _arrays()
    path = write_d4rl_like(tmp_path / "hopper_medium-v2.hdf5", arrays)
    ds = D.load_d4rl_hdf5(path)

    assert ds.observations.dtype == np.float32 and ds.observations.shape == (N, OBS)
    assert ds.actions.dtype == np.float32 and ds.actions.shape == (N, ACT)
    assert ds.rewards.dtype == np.float32 and ds.rewards.shape == (N,)
    assert ds.terminals.dtype == bool and ds.timeouts.dtype == bool
    np.testing.assert_array_equal(ds.observations, arrays["observations"])
    np.testing.assert_array_equal(ds.actions, arrays["actions"])
    np.testing.assert_array_equal(ds.rewards, REWARDS)
    np.testing.assert_array_equal(ds.terminals, TERMINALS)
    expected_timeouts = TIMEOUTS.copy()
    expected_timeouts[-1] = True  # the data's end closes the last episode
    np.testing.assert_array_equal(ds.timeouts, expected_timeouts)
    assert ds.source == str(path)

    starts, ends = ds.episode_bounds()
    np.testing.assert_array_equal(starts, EXPECTED_STARTS)
    np.testing.assert_array_equal(ends, EXPECTED_ENDS)
    np.testing.assert_allclose(ds.episode_returns(), EXPECTED_RETURNS)


@pytest.mark.parametrize("horizon, expected", [
    (1, list(range(N))),
    (2, [0, 1, 2, 4, 5, 6, 7, 9, 10]),
    (3, [0, 1, 4, 5, 6, 9]),
    (4, [0, 4, 5]),  # the last episode (3 steps) is too short for a 4-step chunk
    (5, [4]),
    (6, []),
])
def test_chunk_starts_stay_inside_one_episode(tmp_path, horizon, expected):
    ds = D.load_d4rl_hdf5(write_d4rl_like(tmp_path / "d.hdf5", _arrays()))
    got = ds.chunk_starts(horizon)
    np.testing.assert_array_equal(got, np.array(expected, dtype=got.dtype))
    # brute force: i..i+Tp-1 lies in one episode
    starts, ends = ds.episode_bounds()
    brute = [i for i in range(N) for s, e in zip(starts, ends) if s <= i and i + horizon <= e]
    assert got.tolist() == brute


def test_terminal_and_timeout_on_same_step_end_one_episode(tmp_path):
    arrays = _arrays()
    arrays["timeouts"][3] = True  # both flags at index 3: still one boundary
    arrays["terminals"][-1] = True  # the data ends with a termination: no extra timeout added
    ds = D.load_d4rl_hdf5(write_d4rl_like(tmp_path / "d.hdf5", arrays))
    assert not ds.timeouts[-1]
    starts, ends = ds.episode_bounds()
    np.testing.assert_array_equal(starts, EXPECTED_STARTS)
    np.testing.assert_array_equal(ends, EXPECTED_ENDS)


def test_load_dataset_with_hdf5_path(tmp_path):
    arrays = _arrays()
    path = write_d4rl_like(tmp_path / "hopper.hdf5", arrays)
    ds = D.load_dataset("hopper", str(path), n_transitions=0, seed=0, make_missing=False)
    np.testing.assert_array_equal(ds.observations, arrays["observations"])
    assert ds.checksum == D.load_d4rl_hdf5(path).checksum
    # ".h5" is accepted too
    h5 = write_d4rl_like(tmp_path / "hopper.h5", arrays)
    assert D.load_dataset("hopper", str(h5), 0, 0, make_missing=False).checksum == ds.checksum


def test_checksum_is_stable_and_tracks_content(tmp_path):
    arrays = _arrays()
    a = D.load_d4rl_hdf5(write_d4rl_like(tmp_path / "a.hdf5", arrays))
    b = D.load_d4rl_hdf5(write_d4rl_like(tmp_path / "b.hdf5", arrays))
    assert len(a.checksum) == 64
    assert a.checksum == b.checksum == D.load_d4rl_hdf5(tmp_path / "a.hdf5").checksum
    # infos/, metadata/ and next_observations are not part of the content checksum
    c = D.load_d4rl_hdf5(write_d4rl_like(tmp_path / "c.hdf5", arrays, skip=("next_observations",)))
    assert c.checksum == a.checksum

    seen = {a.checksum}
    for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
        changed = {k: v.copy() for k, v in arrays.items()}
        if changed[key].dtype == bool:
            changed[key][1] = ~changed[key][1]
        else:
            changed[key][1] += 0.5
        d = D.load_d4rl_hdf5(write_d4rl_like(tmp_path / f"{key}.hdf5", changed))
        assert d.checksum not in seen, key
        seen.add(d.checksum)


def test_write_then_load_round_trip(tmp_path):
    arrays = _arrays(seed=3)
    ds = D.TransitionDataset(arrays["observations"], arrays["actions"], arrays["rewards"],
                             arrays["terminals"], arrays["timeouts"], source="mem")
    path = tmp_path / "sub" / "rt.hdf5"
    attrs = {"task": "hopper", "seed": 3, "info": {"a": 1}}
    D.write_d4rl_hdf5(path, ds, arrays["next_observations"], attrs)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["rt.hdf5"]  # no temp file left behind

    back = D.load_d4rl_hdf5(path)
    for name in D.D4RL_KEYS:
        np.testing.assert_array_equal(getattr(back, name), getattr(ds, name))
    assert back.checksum == ds.checksum
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["next_observations"][()], arrays["next_observations"])
        assert f["metadata/task"][()].decode() == "hopper"
        assert int(f["metadata/seed"][()]) == 3
        assert json.loads(f["metadata/info"][()]) == {"a": 1}


# ---------------------------------------------------------------------------------------------------
# Minari


def _hopper_episodes(max_episode_steps=30, n_episodes=4, seed=0):
    """Random-action Hopper-v5 episodes as Minari EpisodeBuffers (+ one cut by the data's end)."""
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    env = gym.make("Hopper-v5", max_episode_steps=max_episode_steps)
    env.action_space.seed(seed)
    buffers = []
    for ep in range(n_episodes + 1):
        obs, _ = env.reset(seed=seed + ep)
        o, a, r, te, tr = [obs], [], [], [], []
        while True:
            action = env.action_space.sample()
            obs, rew, term, trunc, _ = env.step(action)
            o.append(obs), a.append(action), r.append(rew), te.append(term), tr.append(trunc)
            if term or trunc or (ep == n_episodes and len(a) == 5):
                break
        buffers.append(EpisodeBuffer(id=ep, observations=o, actions=a, rewards=r, terminations=te,
                                     truncations=tr, infos={}))
    return env, buffers


def _create_minari_with_buffers(dataset_id, monkeypatch=None):
    import minari

    env, buffers = _hopper_episodes()
    return minari.create_dataset_from_buffers(
        dataset_id, buffers, env=env, algorithm_name="random", author="tests",
        author_email="tests@example.com", code_permalink="https://example.com/tests",
        description="tiny random hopper", eval_env=env.spec)


def test_load_minari_local_dataset(tmp_path, monkeypatch):
    """Written with Minari's own writer (create_dataset_from_buffers; its DataCollector needs jax)."""
    import minari

    dataset_id = "test/hopper/tiny-v0"
    _create_minari_with_buffers(dataset_id)
    assert dataset_id in minari.list_local_datasets()
    assert (tmp_path / "minari").is_dir()  # written under the tmp MINARI_DATASETS_PATH only

    episodes = list(minari.load_dataset(dataset_id).iterate_episodes())
    lengths = [len(ep.actions) for ep in episodes]
    assert len(episodes) >= 4

    for ds in (D.load_minari(dataset_id, download=False),
               D.load_dataset("hopper", f"minari:{dataset_id}", 0, 0, make_missing=False)):
        assert ds.source == f"minari:{dataset_id}"
        assert len(ds.observations) == sum(lengths)
        assert ds.observations.shape == (sum(lengths), OBS) and ds.observations.dtype == np.float32
        assert ds.actions.shape == (sum(lengths), ACT)
        np.testing.assert_array_equal(
            ds.observations, np.concatenate([ep.observations[:-1] for ep in episodes]).astype(np.float32))
        np.testing.assert_array_equal(ds.actions, np.concatenate([ep.actions for ep in episodes]).astype(np.float32))
        np.testing.assert_array_equal(ds.rewards, np.concatenate([ep.rewards for ep in episodes]).astype(np.float32))
        np.testing.assert_array_equal(ds.terminals, np.concatenate([ep.terminations for ep in episodes]))
        expected_timeouts = []
        for ep in episodes:
            tr = np.asarray(ep.truncations, bool).copy()
            tr[-1] |= not ep.terminations[-1]  # an episode without either flag is closed as a timeout
            expected_timeouts.append(tr)
        np.testing.assert_array_equal(ds.timeouts, np.concatenate(expected_timeouts))
        starts, ends = ds.episode_bounds()
        np.testing.assert_array_equal(ends - starts, lengths)
        np.testing.assert_array_equal(ends, np.cumsum(lengths))
        np.testing.assert_allclose(ds.episode_returns(), [np.sum(ep.rewards, dtype=np.float64) for ep in episodes],
                                   rtol=1e-5)


def test_minari_buffers_cover_terminations_truncations_and_cut_episodes():
    """The fixture data exercises all three ways an episode ends (guards the test above)."""
    _create_minari_with_buffers("test/hopper/tiny-v0")
    ds = D.load_minari("test/hopper/tiny-v0", download=False)
    import minari

    eps = list(minari.load_dataset("test/hopper/tiny-v0").iterate_episodes())
    assert any(ep.terminations[-1] for ep in eps)
    assert any(ep.truncations[-1] for ep in eps)
    cut = [ep for ep in eps if not ep.terminations[-1] and not ep.truncations[-1]]
    assert len(cut) == 1 and len(cut[0].actions) == 5
    assert ds.timeouts[-1] and not ds.terminals[-1]


def test_missing_minari_dataset_without_download_is_bench_error(tmp_path):
    with pytest.raises(BenchError, match="cannot load Minari dataset 'test/hopper/nope-v0'") as e:
        D.load_minari("test/hopper/nope-v0", download=False)
    msg = str(e.value)
    assert "is not local" in msg and f"MINARI_DATASETS_PATH ({tmp_path / 'minari'})" in msg
    assert "huggingface" not in msg and "\n" not in msg


def test_missing_minari_dataset_whose_download_fails_says_it_is_not_local(tmp_path, monkeypatch):
    """With download allowed (the default) but no way to download (here: huggingface_hub missing, as
    minari reports it), the message still says the dataset is not local and names MINARI_DATASETS_PATH."""
    import minari

    def no_hub(dataset_id, *a, **kw):
        raise ImportError('huggingface_hub is not installed. Please install it using `pip install "minari[hf]"`')

    monkeypatch.setattr(minari, "download_dataset", no_hub)
    for load in (lambda: D.load_minari("test/hopper/nope-v0"),
                 lambda: D.load_dataset("hopper", "minari:test/hopper/nope-v0", 0, 0)):
        with pytest.raises(BenchError) as e:
            load()
        msg = str(e.value)
        assert msg.startswith("cannot load Minari dataset 'test/hopper/nope-v0': it is not local")
        assert "MINARI_DATASETS_PATH" in msg and "downloading it failed (huggingface_hub" in msg


# ---------------------------------------------------------------------------------------------------
# Bad input


def test_missing_file(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        D.load_d4rl_hdf5(tmp_path / "nope.hdf5")
    with pytest.raises(BenchError, match="does not exist"):
        D.load_dataset("hopper", str(tmp_path / "nope.hdf5"), 0, 0)


def test_corrupt_hdf5(tmp_path):
    path = tmp_path / "corrupt.hdf5"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(BenchError, match="corrupt or not hdf5"):
        D.load_d4rl_hdf5(path)
    with pytest.raises(BenchError, match="corrupt or not hdf5"):
        D.load_dataset("hopper", str(path), 0, 0)


def test_truncated_hdf5(tmp_path):
    good = write_d4rl_like(tmp_path / "good.hdf5", _arrays())
    data = good.read_bytes()
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(BenchError, match="corrupt or not hdf5"):
        D.load_d4rl_hdf5(cut)


@pytest.mark.parametrize("missing", ["observations", "actions", "rewards", "terminals", "timeouts"])
def test_hdf5_missing_required_key(tmp_path, missing):
    # without timeouts a file needs next_observations to derive them from (see the next tests)
    skip = (missing, "next_observations") if missing == "timeouts" else (missing,)
    path = write_d4rl_like(tmp_path / "partial.hdf5", _arrays(), skip=skip)
    with pytest.raises(BenchError, match=f"missing {missing}") as e:
        D.load_d4rl_hdf5(path)
    assert "not a D4RL-format dataset" in str(e.value) and "\n" not in str(e.value)


def _old_d4rl_arrays():
    """The fixture's episodes as an older D4RL version stores them: no timeouts; next_observations jump
    where an episode ends (a reset), and equal the following observation everywhere else."""
    arrays = _arrays()
    nxt = np.concatenate([arrays["observations"][1:], np.zeros((1, OBS), np.float32)])
    rng = np.random.default_rng(7)
    for end in (3, 8):  # the termination and the time-limit end
        nxt[end] = rng.standard_normal(OBS).astype(np.float32)
    arrays["next_observations"] = nxt
    return arrays


def test_d4rl_file_without_timeouts_derives_them_exactly_with_a_note(tmp_path, caplog):
    arrays = _old_d4rl_arrays()
    path = write_d4rl_like(tmp_path / "old.hdf5", arrays, skip=("timeouts",))
    with caplog.at_level("WARNING", logger="envs.datasets"):
        ds = D.load_d4rl_hdf5(path)
    np.testing.assert_array_equal(ds.timeouts, TIMEOUTS | (np.arange(N) == N - 1))  # step 8; data end closes 11
    np.testing.assert_array_equal(ds.terminals, TERMINALS)  # a terminal step is not also a timeout
    starts, ends = ds.episode_bounds()
    np.testing.assert_array_equal(starts, EXPECTED_STARTS)
    np.testing.assert_array_equal(ends, EXPECTED_ENDS)
    # same episodes, same checksum as the file with timeouts
    assert ds.checksum == D.load_d4rl_hdf5(write_d4rl_like(tmp_path / "new.hdf5", arrays)).checksum
    assert any("has no timeouts" in r.message and "derived 1 time-limit" in r.message for r in caplog.records)
    logs = []  # through load_dataset the note goes to the run's log
    D.load_dataset("hopper", str(path), 0, 0, log=logs.append)
    assert len(logs) == 1 and "older D4RL version" in logs[0]


def test_d4rl_file_without_timeouts_and_mismatched_next_observations(tmp_path):
    arrays = _old_d4rl_arrays()
    arrays["next_observations"] = arrays["next_observations"][:, :5]
    path = write_d4rl_like(tmp_path / "old.hdf5", arrays, skip=("timeouts",))
    with pytest.raises(BenchError, match="episode ends cannot be derived"):
        D.load_d4rl_hdf5(path)


def test_string_observations_are_one_line_errors(tmp_path):
    arrays = _arrays()
    arrays["observations"] = np.array([[b"x"] * OBS] * N)
    path = write_d4rl_like(tmp_path / "text.hdf5", arrays)
    for load in (lambda: D.load_d4rl_hdf5(path), lambda: D.load_dataset("hopper", str(path), 0, 0)):
        with pytest.raises(BenchError, match=r"observations holds \|S1 values \(text") as e:
            load()
        assert "\n" not in str(e.value)
    with pytest.raises(BenchError, match="not numbers"):  # in memory too
        D.TransitionDataset(np.array([["a"]] * 3), np.zeros((3, 1)), np.zeros(3), np.zeros(3, bool),
                            np.zeros(3, bool), source="mem")


def test_directory_as_source_is_named_a_directory(tmp_path):
    for d in (tmp_path / "data.hdf5", tmp_path / "somedir"):
        d.mkdir()
        with pytest.raises(BenchError, match="is a directory") as e:
            D.load_dataset("hopper", str(d), 0, 0)
        assert "does not exist" not in str(e.value)
    with pytest.raises(BenchError, match="is a directory, not an hdf5 file"):
        D.load_d4rl_hdf5(tmp_path / "data.hdf5")
    assert "MINARI_DATASETS_PATH" in str(pytest.raises(BenchError, D.load_dataset, "hopper",
                                                       str(tmp_path / "somedir"), 0, 0).value)


def test_dims_not_matching_task(tmp_path):
    path = write_d4rl_like(tmp_path / "small_obs.hdf5", _arrays(obs_dim=5))
    D.load_d4rl_hdf5(path)  # a valid file on its own
    with pytest.raises(BenchError, match=r"dims 5/3, task 'hopper' needs 11/3"):
        D.load_dataset("hopper", str(path), 0, 0)
    path = write_d4rl_like(tmp_path / "wrong_act.hdf5", _arrays(act_dim=6))
    with pytest.raises(BenchError, match=r"dims 11/6, task 'hopper' needs 11/3"):
        D.load_dataset("hopper", str(path), 0, 0)


@pytest.mark.parametrize("key", ["observations", "actions", "rewards"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values(tmp_path, key, bad):
    arrays = _arrays()
    arrays[key][2] = bad
    path = write_d4rl_like(tmp_path / "nan.hdf5", arrays)
    with pytest.raises(BenchError, match=f"non-finite values in {key}"):
        D.load_d4rl_hdf5(path)


def test_arrays_of_different_lengths(tmp_path):
    arrays = _arrays()
    arrays["timeouts"] = arrays["timeouts"][:-1]
    with pytest.raises(BenchError, match="different lengths"):
        D.load_d4rl_hdf5(write_d4rl_like(tmp_path / "len.hdf5", arrays))


@pytest.mark.parametrize("source", ["foo", "", "data.npz", "minari"])
def test_unknown_source(source):
    with pytest.raises(BenchError, match=r"bad data\.source .*valid: 'builtin', a D4RL \.hdf5 path, 'minari:<id>'"):
        D.load_dataset("hopper", source, 100, 0)


def test_unknown_task():
    with pytest.raises(BenchError, match="unknown task 'nope'; valid tasks: .*hopper"):
        D.load_dataset("nope", "foo", 100, 0)


def _write_builtin(checksum=None, n=N, seed=0):
    arrays = _arrays()
    ds = D.TransitionDataset(arrays["observations"], arrays["actions"], arrays["rewards"],
                             arrays["terminals"], arrays["timeouts"])
    path = D.builtin_dataset_path("hopper", n, seed)
    meta = {"task": "hopper", "checksum": checksum or ds.checksum, "n_transitions": n}
    D.write_d4rl_hdf5(path, ds, arrays["next_observations"], {"task": "hopper"}, sidecar=meta)
    return path, ds


def test_builtin_path_is_under_cache_root(tmp_path):
    path = D.builtin_dataset_path("hopper", 3000, 1)
    assert D.cache_root() == tmp_path / "cache"
    import hashlib

    from envs.behavior import POLICY_DIR

    tag = hashlib.sha256((POLICY_DIR / "hopper.pt").read_bytes()).hexdigest()[:8]
    assert path == tmp_path / "cache" / "data" / "hopper" / f"medium-3000-seed1-{tag}.hdf5"


def test_builtin_dataset_with_matching_checksum_loads(tmp_path):
    path, ds = _write_builtin()
    got = D.load_dataset("hopper", "builtin", N, 0, make_missing=False)
    assert got.checksum == ds.checksum
    assert got.source == str(path)


def test_builtin_dataset_checksum_mismatch(tmp_path):
    path, _ = _write_builtin(checksum="0" * 64)
    with pytest.raises(BenchError, match=r"corrupt \(checksum mismatch\).*bench data make hopper --force"):
        D.load_dataset("hopper", "builtin", N, 0, make_missing=False)


def test_builtin_dataset_missing_without_make(tmp_path):
    with pytest.raises(BenchError, match="is missing; make it with `bench data make hopper`"):
        D.load_dataset("hopper", "builtin", 777, 0, make_missing=False)
    assert not D.builtin_dataset_path("hopper", 777, 0).exists()


# ---------------------------------------------------------------------------------------------------
# Malformed array shapes and layouts


def test_one_dimensional_observations_are_bench_error(tmp_path):
    arrays = _arrays()
    arrays["observations"] = arrays["observations"][:, 0].copy()  # (N,) instead of (N, 11)
    path = write_d4rl_like(tmp_path / "flat.hdf5", arrays)
    with pytest.raises(BenchError):
        D.load_dataset("hopper", str(path), 0, 0)


def test_required_key_that_is_a_group_is_bench_error(tmp_path):
    path = write_d4rl_like(tmp_path / "group.hdf5", _arrays(), skip=("observations",))
    with h5py.File(path, "a") as f:
        f.create_dataset("observations/state", data=np.zeros((N, OBS), np.float32))
    with pytest.raises(BenchError):
        D.load_d4rl_hdf5(path)


def test_no_writes_outside_tmp(tmp_path):
    """Loading a builtin dataset that exists only reads; the cache root is the tmp one."""
    _write_builtin()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    D.load_dataset("hopper", "builtin", N, 0, make_missing=False)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert os.environ["DPPO_BENCH_CACHE"].startswith(str(tmp_path))


# ---------------------------------------------------------------------------------------------------
# The dataset + sidecar pair (envs.transitions): a kill between them never leaves an unverified dataset


def test_sidecar_is_committed_before_the_dataset(tmp_path, monkeypatch):
    """Simulate a kill right after the sidecar is written: the data file is not there yet, so the pair is
    a missing dataset (made again), never a dataset without a sidecar."""
    import envs.datasets as mod

    real = mod.atomic_write_json

    def write_then_die(path, obj):
        real(path, obj)
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(mod, "atomic_write_json", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        _write_builtin()
    path = D.builtin_dataset_path("hopper", N, 0)
    assert path.with_suffix(".json").is_file() and not path.exists()
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]
    with pytest.raises(BenchError, match="is missing; make it with `bench data make hopper`"):
        D.load_dataset("hopper", "builtin", N, 0, make_missing=False)


@pytest.mark.parametrize("sidecar", ["deleted", "empty", "not json", "no checksum"])
def test_dataset_without_a_valid_sidecar_is_incomplete_not_used(tmp_path, sidecar):
    """The kill-between case of the old write order (dataset first): the dataset is never used unverified."""
    path, _ = _write_builtin()
    meta = path.with_suffix(".json")
    if sidecar == "deleted":
        meta.unlink()
    else:
        meta.write_text({"empty": "", "not json": "{oops", "no checksum": '{"task": "hopper"}'}[sidecar])
    with pytest.raises(BenchError, match=r"is incomplete: its checksum sidecar .*\.json is missing or unreadable"
                                         r".*bench data make hopper --force") as e:
        D.load_dataset("hopper", "builtin", N, 0, make_missing=False)
    assert "\n" not in str(e.value)
    with pytest.raises(BenchError, match="is incomplete"):
        D.load_checked_d4rl_hdf5(path, "hopper")


def test_incomplete_dataset_is_made_again_where_making_is_allowed(tmp_path, monkeypatch):
    path, ds = _write_builtin()
    path.with_suffix(".json").unlink()
    made = []

    def fake_make(task_name, n, seed, log=print, **kw):
        assert D.builtin_state(path) == "incomplete"
        made.append(task_name)
        _write_builtin()  # a complete pair again
        return path

    monkeypatch.setattr(D, "make_builtin_dataset", fake_make)
    got = D.load_dataset("hopper", "builtin", N, 0, make_missing=True, log=lambda m: None)
    assert made == ["hopper"] and got.checksum == ds.checksum


def test_make_builtin_dataset_remakes_an_incomplete_one(tmp_path):
    """The real maker (a tiny rollout): a complete pair is reused; without its sidecar it is made again."""
    logs = []
    path = D.make_builtin_dataset("hopper", 40, seed=0, n_envs=2, log=logs.append)
    assert D.builtin_state(path) == "complete"
    first = D.load_dataset("hopper", "builtin", 40, 0, make_missing=False)
    stamp = path.stat().st_mtime_ns
    assert D.make_builtin_dataset("hopper", 40, seed=0, n_envs=2, log=logs.append) == path
    assert path.stat().st_mtime_ns == stamp  # reused
    path.with_suffix(".json").unlink()
    D.make_builtin_dataset("hopper", 40, seed=0, n_envs=2, log=logs.append)
    assert any("is incomplete" in m and "making it again" in m for m in logs)
    assert D.load_dataset("hopper", "builtin", 40, 0, make_missing=False).checksum == first.checksum


def test_corrupt_cached_dataset_says_how_to_remake_it(tmp_path):
    path, _ = _write_builtin()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BenchError, match=r"corrupt or not hdf5.*remake it with `bench data make hopper --force`"):
        D.load_dataset("hopper", "builtin", N, 0, make_missing=False)


def test_stale_temp_files_in_the_dataset_cache_are_removed_on_next_use(tmp_path):
    path, _ = _write_builtin()
    stale = path.parent / f".{path.name}.k1ll3d_x.tmp"
    fresh = path.parent / f".{path.name}.wr1t1ng_.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(stale, (1, 1))
    D.load_dataset("hopper", "builtin", N, 0, make_missing=False)
    assert not stale.exists() and fresh.exists()  # a young one may belong to a live writer
