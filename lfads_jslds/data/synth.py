"""Synthetic sessions in the MC_Maze NWB layout, generated from a planted latent dynamical system.

Why: a model that claims to recover dynamics needs data whose dynamics are known. These files
look like the NLB MC_Maze files (same NWB paths, columns, units, 1 ms spike times, 1 kHz
behaviour), so every stage of the pipeline runs on them unchanged, and the ground truth
(rates, latents, the planted rotation) is stored in the same file.

Generative model (all times on a 1 ms clock; latents ``x`` in ``latent_dim`` dimensions):
- Trials run back to back: start, target on (+100..300 ms), go cue (+250..900 ms delay),
  movement onset (+ reaction time ~ N(320, 40) ms, clipped to 220..450: the jitter of onset
  relative to the go cue), stop (+700..900 ms), then a 100..400 ms inter-trial gap.
- Conditions are the pairs (trial_type, trial_version): ``n_trial_types`` reach directions
  times ``n_versions`` variants (speed, rotation phase); each has its own preparatory state,
  and all share an offset in the rotation plane (``PREP_COMMON``), the condition-invariant
  part of the response.
- From target onset the state relaxes to the trial's preparatory state (the condition's, plus
  trial-to-trial noise) with time constant ``PREP_TAU_S``. At release, ``lag_ms`` before
  movement onset, it flows freely under ``dx/dt = A x``: a dominant rotation (``f0_hz``,
  decay ``tau0_s``), a two-stage cascade that makes the single-lobed hand velocity, and (for
  ``latent_dim = 8``) a weaker, fast-decaying second rotation. The state at the next target
  onset is where the flow has got to: no resets.
- Rates (Hz) ``= clip(exp(b + C x), *RATE_RANGE_HZ)`` on a 5 ms grid anchored at each trial's
  movement onset, constant within a bin. Matched to the real MC_Maze sessions: over the NLB
  window each neuron's mean rate is drawn from their distribution (``MEAN_RATE_QUANTILES_HZ``)
  and its log-rate s.d. (its tuning) from ``LOG_RATE_SD``; the clip rarely acts (the fraction
  clipped is stored). Spikes are an inhomogeneous Poisson process with that intensity,
  recorded at 1 ms resolution (a spike at ``k`` ms is stored as ``k / 1000`` s).
- Hand velocity (mm/s) ``= D x(t - lag_ms)``: linear in the latents, starting at movement
  onset. Between trials the hand returns to the centre on a minimum-jerk path (not encoded
  in the latents; it lies outside every NLB window). Hand position is its running integral,
  the cursor follows the hand, and the eyes fixate the centre and then the target.

Test split, as in NLB (whose test files hold only held-in units and no behaviour): the whole
session is one file and test trials are marked ``split = "test"``, but the held-out units'
spikes inside test trials (``[start_time, stop_time)``) are removed, the held-out units'
``obs_intervals`` leave those spans out, and the behaviour there is NaN. The ground truth
still covers every trial.

Ground truth: the processing module ``ground_truth`` (see ``write_nwb``), read back by
``read_ground_truth``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg

from lfads_jslds.data.nwb import DataError, open_hdf5
from lfads_jslds.io.atomic import atomic_write

#: Rate-grid bin (ms): rates are constant within these bins, anchored at movement onset.
GRID_MS = 5
#: Ground-truth window around movement onset (ms): the NLB window plus the forward window.
TRUTH_WINDOW_MS = (-250, 650)
#: Time constant of the approach to the preparatory state after target onset (s).
PREP_TAU_S = 0.06
#: Rates are kept within this range (Hz).
RATE_RANGE_HZ = (0.01, 200.0)
#: The NLB window around movement onset (ms) over which the readout is calibrated.
NLB_WINDOW_MS = (-250, 450)
#: Neurons' mean rates (Hz) over the NLB window are drawn from this quantile function (log-
#: linear between the points): probabilities, and the quantiles measured on the real
#: MC_Maze_Small and MC_Maze_Medium test sessions (221 units, 20 ms bins, -250..+450 ms
#: around movement onset; mean 4.2 Hz, median 3.0 Hz).
MEAN_RATE_QUANTILES_HZ = (
    (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0),
    (0.06, 0.23, 0.43, 1.39, 3.03, 5.8, 9.84, 11.74, 17.73),
)
#: Range of each neuron's log-rate s.d. over the NLB window (all conditions' noise-free
#: paths), drawn uniformly: how strongly neurons are tuned.
LOG_RATE_SD = (0.3, 0.9)
#: Common offset of the preparatory states in the rotation plane (in units of the
#: conditions' radius there): a condition-invariant component, as in real motor cortex.
PREP_COMMON = 0.6
#: Hand displacement (mm) of a reach with unit preparatory drive.
REACH_MM = 100.0
#: Trial-to-trial noise of the preparatory state (s.d., as a fraction of each dimension's
#: largest preparatory value).
PREP_NOISE = 0.2
GT_MODULE = "ground_truth"


@dataclass(frozen=True)
class SynthConfig:
    """Sizes and planted dynamics of a synthetic session (presets: ``PRESETS``)."""

    name: str
    n_heldin: int
    n_heldout: int
    n_train: int
    n_val: int
    n_test: int
    n_trial_types: int = 9
    n_versions: int = 3
    latent_dim: int = 8
    f0_hz: float = 2.0
    tau0_s: float = 0.4
    lag_ms: int = 100

    def __post_init__(self) -> None:
        if self.latent_dim not in (6, 8):
            raise ValueError(f"latent_dim must be 6 or 8, got {self.latent_dim}")
        if not 1.0 <= self.f0_hz <= 4.0:
            raise ValueError(f"f0_hz must be within 1..4 Hz, got {self.f0_hz}")
        if not (1 <= self.n_versions <= 3 and self.n_trial_types >= 1):
            raise ValueError("need n_trial_types >= 1 and 1..3 versions (as MC_Maze's 0, 1, 2)")
        if min(self.n_heldin, self.n_heldout, self.n_train, self.n_val) < 1 or self.n_test < 0:
            raise ValueError("need at least one held-in and held-out unit, train and val trial")
        if self.tau0_s <= 0.15:
            raise ValueError(
                f"tau0_s must exceed 0.15 s (the other modes' time constants) for the "
                f"rotation to dominate, got {self.tau0_s}"
            )
        if not 0 <= self.lag_ms <= 200:
            raise ValueError(f"lag_ms must be within 0..200 ms, got {self.lag_ms}")

    @property
    def n_units(self) -> int:
        return self.n_heldin + self.n_heldout

    @property
    def n_trials(self) -> int:
        return self.n_train + self.n_val + self.n_test


PRESETS = {
    # MC_Maze_Small (DANDI 000140): 142 neurons (107 + 35), 75 train, 25 val, 100 test; lag 120.
    "small": SynthConfig("small", 107, 35, 75, 25, 100, latent_dim=6, lag_ms=120),
    # MC_Maze (DANDI 000128): 182 neurons (137 + 45), 1721 train, 574 val, 574 test; lag 100.
    "mc_maze": SynthConfig("mc_maze", 137, 45, 1721, 574, 574, latent_dim=8, lag_ms=100),
}


@dataclass(frozen=True)
class GroundTruth:
    """What generated a synthetic session. Latent coordinates are those of ``latents``.

    Per trial (all trials, in trials-table order) on the 5 ms grid of ``TRUTH_WINDOW_MS``
    around movement onset: ``latents`` [trial, time, latent] at bin centres and ``rates_hz``
    [trial, time, neuron] (Hz, all units in units-table order; spikes per bin = Hz * 0.005).
    ``dynamics`` is the continuous-time matrix of the free flow (1/s); ``dynamics_1ms`` its
    1 ms propagator ``expm(A * 0.001)``. Modes are the planted rotations, dominant first.
    """

    trial_ids: np.ndarray  # [trial]
    condition: np.ndarray  # [trial] index into conditions
    release_time_s: np.ndarray  # [trial] s, movement onset - lag
    initial_state: np.ndarray  # [trial, latent] state at release
    latents: np.ndarray  # [trial, time, latent]
    rates_hz: np.ndarray  # [trial, time, neuron] Hz
    window_ms: tuple[int, int]  # relative to move_onset_time
    bin_ms: int
    dynamics: np.ndarray  # [latent, latent] 1/s
    dynamics_1ms: np.ndarray  # [latent, latent]
    readout_weights: np.ndarray  # [neuron, latent]: rates = clip(exp(b + C x))
    readout_bias: np.ndarray  # [neuron]
    velocity_readout: np.ndarray  # [2, latent] mm/s per latent unit
    velocity_lag_ms: int
    prep_states: np.ndarray  # [condition, latent]
    conditions: np.ndarray  # [condition, 2] (trial_type, trial_version)
    mode_frequency_hz: np.ndarray  # [mode]
    mode_decay_tau_s: np.ndarray  # [mode]
    mode_plane: np.ndarray  # [mode, latent, 2] orthonormal basis of each rotation plane
    clipped_fraction: float  # share of rates_hz values the RATE_RANGE_HZ clip changed


@dataclass(frozen=True)
class SyntheticSession:
    """A synthetic session in memory: what ``write_nwb`` stores, in the NWB units and layout."""

    config: SynthConfig
    seed: int
    spike_times: np.ndarray  # [spike] s, unit-major, sorted within each unit
    spike_offsets: np.ndarray  # [unit + 1]: unit u owns spike_times[off[u]:off[u + 1]]
    heldout: np.ndarray  # [unit] bool
    obs_intervals: np.ndarray  # [interval, 2] s, unit-major
    obs_offsets: np.ndarray  # [unit + 1]
    trials: dict[str, Any]  # column -> [trial] array; "target_pos" is a list of [n, 2] arrays
    behavior: dict[str, np.ndarray]  # name -> [sample, 2] float32 at 1 kHz from t = 0
    session_end_s: float
    truth: GroundTruth


# ----------------------------------------------------------------------------- dynamics


@dataclass(frozen=True)
class _Modal:
    """The planted flow in its modal coordinates: [z(2) rotation, q(2), w(2) cascade, r(2)]."""

    A: np.ndarray  # [K, K] 1/s
    lam: np.ndarray  # [K] eigenvalues (complex)
    V: np.ndarray  # [K, K] eigenvectors
    Vinv: np.ndarray
    tau_w: np.ndarray  # [2] s, velocity-stage time constants (x, y)
    rotations: tuple[tuple[float, float, int], ...]  # (f Hz, tau s, first modal index)


def _rotation_block(f_hz: float, tau_s: float) -> np.ndarray:
    w = 2 * np.pi * f_hz
    return np.array([[-1 / tau_s, -w], [w, -1 / tau_s]])


def modal_dynamics(cfg: SynthConfig) -> _Modal:
    """``dx/dt = A x`` with eigenvalues ``-1/tau0 ± i 2π f0`` (dominant) and faster decays.

    q -> w is a two-stage cascade per axis (q decays, feeding w), so ``w(t)`` and the hand
    velocity read from it are single-lobed; x and y get slightly different time constants
    so every eigenvalue is distinct (the flow is then diagonalisable).
    """
    K = cfg.latent_dim
    tau_q, tau_w = np.array([0.08, 0.09]), np.array([0.12, 0.13])
    A = np.zeros((K, K))
    A[0:2, 0:2] = _rotation_block(cfg.f0_hz, cfg.tau0_s)
    rotations = [(cfg.f0_hz, cfg.tau0_s, 0)]
    for a in range(2):
        A[2 + a, 2 + a] = -1 / tau_q[a]
        A[4 + a, 4 + a] = -1 / tau_w[a]
        A[4 + a, 2 + a] = 1 / tau_q[a]
    if K == 8:
        A[6:8, 6:8] = _rotation_block(3.5, 0.08)
        rotations.append((3.5, 0.08, 6))
    lam, V = np.linalg.eig(A)
    return _Modal(A, lam, V, np.linalg.inv(V), tau_w, tuple(rotations))


def free_flow(
    y0: np.ndarray, tau_s: np.ndarray, m: _Modal, readout: np.ndarray | None = None
) -> np.ndarray:
    """``R expm(A τ) y0`` for each row: y0 [n, K], tau_s [n] (s) -> [n, r] (R = I: [n, K]).

    Only the eigenmodes that reach the readout are evaluated (in real arithmetic when they
    are all real): the 1 ms hand velocity needs 4 of the 8 modes.
    """
    W = m.V if readout is None else readout @ m.V  # [r, K]
    keep = np.abs(W).max(0) > 0
    lam, W = m.lam[keep], W[:, keep]
    coef = np.einsum("nk,jk->nj", y0, m.Vinv[keep])  # eigen-coordinates of y0
    if not np.any(lam.imag):
        lam, W, coef = lam.real, W.real, coef.real
    return np.real(np.einsum("nj,rj->nr", np.exp(tau_s[:, None] * lam[None, :]) * coef, W))


def approach(y_on: np.ndarray, target: np.ndarray, tau_s: np.ndarray) -> np.ndarray:
    """Exponential relaxation from ``y_on`` to ``target`` (rows), ``tau_s`` after onset."""
    return target + (y_on - target) * np.exp(-tau_s / PREP_TAU_S)[:, None]


# ----------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class _Conditions:
    types: np.ndarray  # [cond] trial_type
    versions: np.ndarray  # [cond] trial_version
    prep: np.ndarray  # [cond, K] modal preparatory states (w dims zero)
    targets: np.ndarray  # [cond, n_targets_max, 2] mm; row 0 is the reached target
    n_targets: np.ndarray  # [cond]


def make_conditions(cfg: SynthConfig, m: _Modal, rng: np.random.Generator) -> _Conditions:
    """Direction from trial_type, speed and rotation phase from trial_version.

    The reach direction sets the cascade's drive ``q`` (hence where the hand goes) and the
    phase of the rotation's initial state ``z``; ``r`` is a random condition signature.
    Version 0 has 1 target, 1 has 1 target (barriers), 2 has 3 targets, as in MC_Maze.
    """
    types = np.repeat(np.arange(1, cfg.n_trial_types + 1), cfg.n_versions)
    versions = np.tile(np.arange(cfg.n_versions), cfg.n_trial_types)
    theta = (
        2 * np.pi * types / cfg.n_trial_types + rng.uniform(-0.2, 0.2, cfg.n_trial_types)[types - 1]
    )
    speed = 1.0 - 0.15 * versions
    phase = theta + 0.6 * versions
    prep = np.zeros((types.size, cfg.latent_dim))
    prep[:, 0:2] = (1.0 + 0.1 * versions)[:, None] * np.stack([np.cos(phase), np.sin(phase)], 1)
    prep[:, 0] += PREP_COMMON
    prep[:, 2:4] = speed[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1)
    if cfg.latent_dim == 8:
        prep[:, 6:8] = rng.normal(0.0, 0.7, (types.size, 2))
    gain = REACH_MM / m.tau_w.mean()
    reached = gain * m.tau_w[None, :] * prep[:, 2:4]  # the cascade integrates to tau_w * q0
    n_targets = np.where(versions == 2, 3, 1)
    targets = np.zeros((types.size, 3, 2))
    targets[:, 0] = reached
    for k in (1, 2):  # distractors of the 3-target version, at other angles
        ang = theta + 2 * np.pi * k / 3
        targets[:, k] = REACH_MM * np.stack([np.cos(ang), np.sin(ang)], 1)
    return _Conditions(types, versions, prep, targets, n_targets)


# ----------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class _Schedule:
    """Trial event times (integer ms on the session clock) and labels."""

    start: np.ndarray
    target_on: np.ndarray
    go_cue: np.ndarray
    move_onset: np.ndarray
    stop: np.ndarray
    release: np.ndarray  # move_onset - lag: the free flow starts here
    cond: np.ndarray
    split: np.ndarray  # str
    end_ms: int


def make_schedule(cfg: SynthConfig, n_cond: int, rng: np.random.Generator) -> _Schedule:
    """Back-to-back trials with random delays, reaction times and gaps (all integer ms)."""
    n = cfg.n_trials
    pre = rng.integers(100, 301, n)
    delay = rng.integers(250, 901, n)
    rt = np.clip(np.round(rng.normal(320.0, 40.0, n)), 220, 450).astype(np.int64)
    post = rng.integers(700, 901, n)
    gap = rng.integers(100, 401, n)
    length = pre + delay + rt + post
    start = 500 + np.concatenate([[0], np.cumsum(length + gap)[:-1]])
    target_on = start + pre
    go_cue = target_on + delay
    move = go_cue + rt
    stop = move + post
    split = np.array(["train"] * cfg.n_train + ["val"] * cfg.n_val + ["test"] * cfg.n_test)
    return _Schedule(
        start=start,
        target_on=target_on,
        go_cue=go_cue,
        move_onset=move,
        stop=stop,
        release=move - cfg.lag_ms,
        cond=rng.integers(0, n_cond, n),
        split=split[rng.permutation(n)],
        end_ms=int(stop[-1] + 1000),
    )


@dataclass(frozen=True)
class _Trajectory:
    """The session's latent path (modal coordinates): at target onset the state relaxes
    toward the trial's preparatory state; from release it flows freely until the next
    target onset. ``y_on`` / ``y_rel`` [trial, K] are the states at those two events."""

    s: _Schedule
    prep: np.ndarray  # [trial, K] preparatory states (condition + noise)
    y_on: np.ndarray
    y_rel: np.ndarray
    m: _Modal

    def at(self, t_ms: np.ndarray, readout: np.ndarray | None = None) -> np.ndarray:
        """State [n, K] at times ``t_ms`` (ms; 0 before the first trial), or ``readout``
        R [r, K] of it ([n, r])."""
        s, m = self.s, self.m
        R = np.eye(self.prep.shape[1]) if readout is None else readout
        seg = np.searchsorted(s.target_on, t_ms, side="right") - 1
        out = np.zeros((t_ms.size, R.shape[0]))
        valid = seg >= 0
        free = valid & (t_ms >= s.release[np.maximum(seg, 0)])
        prep = valid & ~free
        i = seg[prep]
        since_on = (t_ms[prep] - s.target_on[i]) / 1000.0
        out[prep] = approach(self.y_on[i], self.prep[i], since_on) @ R.T
        i = seg[free]
        out[free] = free_flow(self.y_rel[i], (t_ms[free] - s.release[i]) / 1000.0, m, readout)
        return out


def trajectory(s: _Schedule, prep: np.ndarray, m: _Modal) -> _Trajectory:
    """Follow the state through the session's events (sequential by nature: each trial
    starts where the last one's flow got to; each step is a few small products)."""
    n, K = prep.shape
    y_on, y_rel = np.zeros((n, K)), np.zeros((n, K))
    state, since = np.zeros(K), None  # state at the last release, and when it was
    for i in range(n):
        if since is not None:
            dt = np.array([(s.target_on[i] - since) / 1000.0])
            state = free_flow(state[None], dt, m)[0]
        y_on[i] = state
        dt = np.array([(s.release[i] - s.target_on[i]) / 1000.0])
        state = approach(state[None], prep[i][None], dt)[0]
        y_rel[i], since = state, s.release[i]
    return _Trajectory(s, prep, y_on, y_rel, m)


def rate_grid(s: _Schedule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """5 ms bins tiling [0, end): (lo_ms, hi_ms, truth_index).

    Segments run from one target onset to the next (the first from 0); each is tiled by bins
    anchored at its trial's movement onset and clipped at the segment's ends, so the NLB
    window of every trial is made of whole bins. ``truth_index`` [trial, time] gives the bins
    of ``TRUTH_WINDOW_MS``.
    """
    bounds = np.concatenate([[0], s.target_on, [s.end_ms]])
    anchor = np.concatenate([[s.move_onset[0]], s.move_onset])
    j0 = np.floor_divide(bounds[:-1] - anchor, GRID_MS)
    j1 = -np.floor_divide(anchor - bounds[1:], GRID_MS)  # ceil
    count = j1 - j0
    first = np.concatenate([[0], np.cumsum(count)[:-1]])
    seg = np.repeat(np.arange(count.size), count)
    j = np.arange(count.sum()) - first[seg] + j0[seg]
    lo = np.maximum(anchor[seg] + GRID_MS * j, bounds[:-1][seg])
    hi = np.minimum(anchor[seg] + GRID_MS * (j + 1), bounds[1:][seg])
    t0, t1 = TRUTH_WINDOW_MS
    start = first[1:] + (t0 // GRID_MS - j0[1:])  # trial i lives in segment i + 1
    truth_index = start[:, None] + np.arange((t1 - t0) // GRID_MS)[None, :]
    return lo, hi, truth_index


# ----------------------------------------------------------------------------- readout


def _calibration_states(cfg: SynthConfig, cond: _Conditions, m: _Modal) -> np.ndarray:
    """Noise-free states [condition * time, K] of every condition over ``NLB_WINDOW_MS`` on the
    5 ms grid: the settled preparatory state until release (``lag_ms`` before movement onset,
    at least 350 ms = 5.8 ``PREP_TAU_S`` after target onset), then the free flow."""
    t0, t1 = NLB_WINDOW_MS
    t = np.arange(t0, t1, GRID_MS) + GRID_MS / 2 + cfg.lag_ms  # ms after release
    rows = []
    for p in cond.prep:
        flow = free_flow(np.tile(p, (t.size, 1)), np.maximum(t, 0.0) / 1000.0, m)
        rows.append(np.where((t < 0)[:, None], p[None, :], flow))
    return np.concatenate(rows)


def _draw_mean_rates(n: int, rng: np.random.Generator) -> np.ndarray:
    """[n] mean rates (Hz) from the real sessions' quantile function (log-linear between)."""
    prob, hz = MEAN_RATE_QUANTILES_HZ
    return np.exp(np.interp(rng.random(n), prob, np.log(hz)))


def make_readout(
    cfg: SynthConfig, cond: _Conditions, m: _Modal, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, C, b): latent coordinates ``x = T y`` and log-rate readout ``b + C x``.

    ``T`` scales each modal dimension to unit range over the noise-free condition trajectories
    of the NLB window and mixes them with a random rotation, so no axis is special. ``C``
    weights the dominant rotation most. Over those trajectories, each neuron's log-rate has
    the s.d. it draws from ``LOG_RATE_SD`` (its tuning) and its rate the mean it draws from
    ``MEAN_RATE_QUANTILES_HZ`` (``b`` is set for that).
    """
    y = _calibration_states(cfg, cond, m)
    scale = 1.0 / np.maximum(np.abs(y).max(0), 1e-12)
    Q, _ = np.linalg.qr(rng.normal(size=(cfg.latent_dim, cfg.latent_dim)))
    T = Q @ np.diag(scale)
    weights = np.ones(cfg.latent_dim)
    weights[2:6] = 0.6
    weights[6:] = 0.5
    C_hat = rng.normal(size=(cfg.n_units, cfg.latent_dim)) * weights  # on T y's unrotated axes
    C = C_hat @ Q.T
    u = (y @ T.T) @ C.T  # [time, neuron]
    gain = rng.uniform(*LOG_RATE_SD, cfg.n_units) / np.maximum(u.std(0), 1e-12)
    mean_hz = _draw_mean_rates(cfg.n_units, rng)
    b = np.log(mean_hz) - np.log(np.exp(u * gain).mean(0))
    return T, C * gain[:, None], b


# ----------------------------------------------------------------------------- spikes


def sample_spikes(
    rate: np.ndarray, lo_ms: np.ndarray, hi_ms: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson spikes for piecewise-constant rates: (unit [spike] int16, time_ms [spike] int32).

    ``rate`` [unit, bin] (Hz) holds on [lo_ms, hi_ms). Per unit, the count is Poisson with the
    integrated rate and each spike lands where a uniform draw falls in the unit's cumulative
    intensity (inverse-CDF sampling): work scales with spikes and bins, not 1 ms samples.
    Output is sorted by unit, then time.
    """
    n_unit, n_bin = rate.shape
    mass = (rate * ((hi_ms - lo_ms) / 1000.0)[None, :]).ravel()  # unit-major expected counts
    cum = np.cumsum(mass)
    ends = cum[n_bin - 1 :: n_bin]
    starts = np.concatenate([[0.0], ends[:-1]])
    counts = rng.poisson(ends - starts)
    unit = np.repeat(np.arange(n_unit), counts)
    pos = np.sort(starts[unit] + rng.random(unit.size) * (ends - starts)[unit])
    flat = np.minimum(np.searchsorted(cum, pos, side="right"), cum.size - 1)
    before = np.where(flat > 0, cum[flat - 1], 0.0)
    frac = np.clip((pos - before) / mass[flat], 0.0, np.nextafter(1.0, 0.0))
    b = flat % n_bin
    t_ms = lo_ms[b] + np.floor(frac * (hi_ms[b] - lo_ms[b])).astype(np.int32)
    return (flat // n_bin).astype(np.int16), t_ms.astype(np.int32)


def _inside(t_ms: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """True where ``t_ms`` lies in one of the sorted, disjoint ``[start, stop)`` ``spans``."""
    return np.searchsorted(spans.ravel(), t_ms, side="right") % 2 == 1


# ----------------------------------------------------------------------------- behaviour


def _min_jerk_profile(n: int) -> np.ndarray:
    """Minimum-jerk speed profile over ``n`` 1 ms samples, summing to 1 (unit displacement)."""
    s = (np.arange(n) + 0.5) / n
    p = s**2 * (1 - s) ** 2
    return p / p.sum()


def make_behavior(
    s: _Schedule, v_latent: np.ndarray, targets: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """hand_vel (mm/s), hand_pos, cursor_pos, eye_pos (mm) at 1 kHz, [sample, 2] float32.

    ``v_latent`` is the latents' velocity readout already shifted by the lag. After each stop
    the hand returns to the centre (minimum jerk, ending 20 ms before the next target onset).
    """
    vel = v_latent.copy()
    pos = np.cumsum(v_latent, axis=0) / 1000.0
    offset = np.zeros(2)  # displacement added by the returns so far
    ends = np.concatenate([s.target_on[1:], [s.end_ms]]) - 20
    for i in range(s.start.size):
        a, e = s.stop[i], ends[i]
        shift = -(pos[a - 1] + offset)
        vel[a:e] += 1000.0 * shift[None, :] * _min_jerk_profile(e - a)[:, None]
        offset += shift
    hand = np.cumsum(vel, axis=0) / 1000.0
    eye = np.zeros_like(hand)
    for i in range(s.start.size):
        eye[s.move_onset[i] - 100 : s.stop[i]] = targets[i]
    eye += rng.normal(0.0, 1.0, eye.shape)
    return {
        "hand_vel": vel.astype(np.float32),
        "hand_pos": hand.astype(np.float32),
        "cursor_pos": hand.astype(np.float32),
        "eye_pos": eye.astype(np.float32),
    }


# ----------------------------------------------------------------------------- assembly


def _spikes_and_truth(
    traj: _Trajectory, T: np.ndarray, C: np.ndarray, b: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Rates on the 5 ms grid, and spikes drawn from them, in chunks of bins.

    Returns (unit [spike], time_ms [spike]) sorted by unit then time, the truth-window
    latents [trial, time, K] and rates [trial, time, unit] (Hz), and the fraction of truth
    rates the clip changed. Rates are float32: the grid holds ~2e8 of them for mc_maze.
    """
    lo, hi, truth_index = rate_grid(traj.s)
    truth_of_bin = np.full(lo.size, -1)
    truth_of_bin[truth_index.ravel()] = np.arange(truth_index.size)
    truth_rates = np.empty((truth_index.size, C.shape[0]), np.float32)
    truth_latents = np.empty((truth_index.size, C.shape[1]), np.float32)
    C32, b32 = C.astype(np.float32), b.astype(np.float32)[:, None]
    units, times = [], []
    n_clipped = 0
    log_lo, log_hi = np.log(RATE_RANGE_HZ)
    for c0 in range(0, lo.size, 40_000):
        sl = slice(c0, c0 + 40_000)
        x = traj.at((lo[sl] + hi[sl]) / 2.0) @ T.T
        rate = C32 @ x.T.astype(np.float32)  # [unit, bin] log-rates
        rate += b32
        keep = truth_of_bin[sl] >= 0
        inside = rate[:, keep]
        n_clipped += int(np.count_nonzero((inside < log_lo) | (inside > log_hi)))
        np.exp(rate, out=rate)
        np.clip(rate, *RATE_RANGE_HZ, out=rate)
        truth_rates[truth_of_bin[sl][keep]] = rate[:, keep].T
        truth_latents[truth_of_bin[sl][keep]] = x[keep]
        unit, t_ms = sample_spikes(rate, lo[sl], hi[sl], rng)
        units.append(unit)
        times.append(t_ms)
    unit, t_ms = np.concatenate(units), np.concatenate(times)
    order = np.argsort(unit, kind="stable")  # chunks are in time order: stable keeps it
    shape = (*truth_index.shape, -1)
    return (
        unit[order],
        t_ms[order],
        truth_latents.reshape(shape),
        truth_rates.reshape(shape),
        n_clipped / truth_rates.size,
    )


def _trials_table(s: _Schedule, cond: _Conditions) -> dict[str, Any]:
    c = s.cond
    return {
        "start_time": s.start / 1000.0,
        "stop_time": s.stop / 1000.0,
        "target_on_time": s.target_on / 1000.0,
        "go_cue_time": s.go_cue / 1000.0,
        "move_onset_time": s.move_onset / 1000.0,
        "delay": s.go_cue - s.target_on,
        "rt": s.move_onset - s.go_cue,
        "trial_type": cond.types[c],
        "trial_version": cond.versions[c],
        "maze_id": 1000 + cond.types[c],
        "num_targets": cond.n_targets[c],
        "active_target": np.zeros(c.size, np.int64),
        "success": np.ones(c.size, bool),
        "split": s.split,
        "target_pos": [np.round(cond.targets[k, : cond.n_targets[k]]).astype(np.int16) for k in c],
    }


def make_synthetic(preset: str | SynthConfig = "small", seed: int = 0) -> SyntheticSession:
    """Generate a session (deterministic for ``preset`` and ``seed``). See the module doc."""
    cfg = _config(preset)
    rng = np.random.default_rng(seed)
    m = modal_dynamics(cfg)
    cond = make_conditions(cfg, m, rng)
    s = make_schedule(cfg, cond.types.size, rng)
    T, C, b = make_readout(cfg, cond, m, rng)
    Tinv = np.linalg.inv(T)
    noise = rng.normal(size=(cfg.n_trials, cfg.latent_dim)) * PREP_NOISE * np.abs(cond.prep).max(0)
    noise[:, 4:6] = 0.0  # the velocity stage rests at zero: no movement before release
    traj = trajectory(s, cond.prep[s.cond] + noise, m)
    # Drawn before the spikes, so which units are held out does not hang on the spike counts.
    heldout = np.zeros(cfg.n_units, bool)
    heldout[rng.choice(cfg.n_units, cfg.n_heldout, replace=False)] = True
    unit, t_ms, latents, rates, clipped = _spikes_and_truth(traj, T, C, b, rng)

    # Test trials: held-out units and behaviour are not observed (as in NLB's test files).
    test = s.split == "test"
    test_spans = np.stack([s.start[test], s.stop[test]], 1)
    drop = heldout[unit] & _inside(t_ms, test_spans)
    unit, t_ms = unit[~drop], t_ms[~drop]
    end_s = s.end_ms / 1000.0
    observed = np.concatenate([[0], test_spans.ravel(), [s.end_ms]]).reshape(-1, 2) / 1000.0
    obs = [observed if h else np.array([[0.0, end_s]]) for h in heldout]

    # Behaviour: the velocity readout of the latents at 1 ms, lagged.
    D_modal = np.zeros((2, cfg.latent_dim))
    D_modal[0, 4] = D_modal[1, 5] = REACH_MM / m.tau_w.mean()
    v = np.zeros((s.end_ms, 2))  # hand_vel(t) = D x(t - lag); zero in the first lag ms
    for c0 in range(0, s.end_ms - cfg.lag_ms, 500_000):
        t = np.arange(c0, min(c0 + 500_000, s.end_ms - cfg.lag_ms))
        v[t + cfg.lag_ms] = traj.at(t.astype(float), D_modal)
    behavior = make_behavior(s, v, cond.targets[s.cond, 0], rng)
    for i in np.flatnonzero(test):
        for series in behavior.values():
            series[s.start[i] : s.stop[i]] = np.nan

    A = T @ m.A @ Tinv
    truth = GroundTruth(
        trial_ids=np.arange(cfg.n_trials),
        condition=s.cond,
        release_time_s=s.release / 1000.0,
        initial_state=traj.y_rel @ T.T,
        latents=latents,
        rates_hz=rates,
        window_ms=TRUTH_WINDOW_MS,
        bin_ms=GRID_MS,
        dynamics=A,
        dynamics_1ms=scipy.linalg.expm(A * 1e-3),
        readout_weights=C,
        readout_bias=b,
        velocity_readout=D_modal @ Tinv,
        velocity_lag_ms=cfg.lag_ms,
        prep_states=cond.prep @ T.T,
        conditions=np.stack([cond.types, cond.versions], 1),
        mode_frequency_hz=np.array([f for f, _, _ in m.rotations]),
        mode_decay_tau_s=np.array([tau for _, tau, _ in m.rotations]),
        mode_plane=np.stack([np.linalg.qr(T[:, k : k + 2])[0] for _, _, k in m.rotations]),
        clipped_fraction=clipped,
    )
    return SyntheticSession(
        config=cfg,
        seed=seed,
        spike_times=t_ms / 1000.0,
        spike_offsets=np.concatenate([[0], np.cumsum(np.bincount(unit, minlength=cfg.n_units))]),
        heldout=heldout,
        obs_intervals=np.concatenate(obs),
        obs_offsets=np.concatenate([[0], np.cumsum([len(o) for o in obs])]),
        trials=_trials_table(s, cond),
        behavior=behavior,
        session_end_s=end_s,
        truth=truth,
    )


def _config(preset: str | SynthConfig) -> SynthConfig:
    if isinstance(preset, SynthConfig):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]


# ----------------------------------------------------------------------------- NWB I/O

_TRIAL_DOCS = {
    "target_on_time": "Time of target presentation (s)",
    "go_cue_time": "Time of go cue delivery (s)",
    "move_onset_time": "Time of movement onset (s)",
    "delay": "Delay between target presentation and go cue, in ms",
    "rt": "Delay between go cue and movement onset, in ms",
    "trial_type": "A number representing the maze (reach direction) used for the trial",
    "trial_version": "A number 0-2 indicating which variant of the maze is presented",
    "maze_id": "A unique identifier for each maze, lumping all trial_versions",
    "num_targets": "The number of targets for the trial",
    "active_target": "Index in target_pos of the target that was reached",
    "success": "If the trial was successful (all are)",
    "split": 'Trial split for the Neural Latents Benchmark: "train", "val" or "test"; '
    "held-out units and behaviour are not observed during test trials",
    "target_pos": "Rows of x, y target positions (mm); the first is the reached one",
}
_BEHAVIOR_DOCS = {
    "hand_vel": "Hand velocity in mm/s (a linear readout of the latents, lagged). "
    "First column x, second column y",
    "hand_pos": "Hand position in mm. First column x, second column y",
    "cursor_pos": "Cursor position in mm. First column x, second column y",
    "eye_pos": "Eye position in mm. First column x, second column y",
}


def write_nwb(path: Path, session: SyntheticSession) -> None:
    """Write ``session`` as an NWB file in the MC_Maze layout (atomically).

    Ground truth: processing module ``ground_truth`` with three DynamicTables:
    ``trial_truth`` (one row per trial: trial_id, condition, release_time, initial_state
    [latent], latents [time, latent], rates [time, neuron] Hz), ``modes`` (one row per planted
    rotation, dominant first: frequency_hz, decay_tau_s, plane [latent, 2]) and
    ``parameters`` (one row; each column one array: dynamics, dynamics_1ms, readout_weights,
    readout_bias, velocity_readout, velocity_lag_ms, prep_states, conditions, window_ms,
    bin_ms, clipped_fraction).
    """
    from hdmf.common import DynamicTable, VectorData, VectorIndex
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.behavior import SpatialSeries
    from pynwb.epoch import TimeIntervals
    from pynwb.file import Subject
    from pynwb.misc import Units

    cfg, gt = session.config, session.truth

    def col(name: str, data: Any, doc: str) -> VectorData:
        return VectorData(name=name, description=doc, data=data)

    def ragged(name: str, flat: np.ndarray, offsets: np.ndarray, doc: str) -> list[Any]:
        data = col(name, flat, doc)
        return [data, VectorIndex(name=f"{name}_index", data=offsets[1:], target=data)]

    trials = session.trials
    trial_cols = [
        col("start_time", trials["start_time"], "Start time of epoch, in seconds"),
        col("stop_time", trials["stop_time"], "Stop time of epoch, in seconds"),
    ]
    for name, doc in _TRIAL_DOCS.items():
        if name == "target_pos":
            offsets = np.concatenate([[0], np.cumsum([len(p) for p in trials[name]])])
            trial_cols += ragged(name, np.concatenate(trials[name]), offsets, doc)
        elif name == "split":
            trial_cols.append(col(name, trials[name].astype(object), doc))
        else:
            trial_cols.append(col(name, trials[name], doc))

    units = Units(
        name="units",
        description="synthetic units: Poisson spikes from the planted latent rates",
        resolution=0.001,
        columns=[
            *ragged("spike_times", session.spike_times, session.spike_offsets, "spike times (s)"),
            *ragged(
                "obs_intervals",
                session.obs_intervals,
                session.obs_offsets,
                "the observation intervals for each unit",
            ),
            col(
                "heldout",
                session.heldout,
                "Whether the unit is held out in the test data (True) or not (False)",
            ),
        ],
    )
    nwb = NWBFile(
        session_description=(
            f"Synthetic MC_Maze-like session (preset {cfg.name!r}, seed {session.seed}) "
            "generated by lfads_jslds.data.synth from a planted latent dynamical system; "
            "ground truth in processing/ground_truth"
        ),
        identifier=f"lfads-jslds-synthetic-{cfg.name}-seed{session.seed}",
        session_start_time=datetime(2000, 1, 1, tzinfo=UTC),
        experiment_description="Synthetic center-out delayed reaching (MC_Maze layout)",
        keywords=["synthetic", "Neural Latents Benchmark", "MC_Maze"],
        subject=Subject(
            subject_id="synthetic",
            species="Macaca mulatta",
            sex="U",
            age="P8Y",
            description="simulated subject; no animal was recorded",
        ),
        trials=TimeIntervals(name="trials", description="experimental trials", columns=trial_cols),
        units=units,
    )
    behavior = nwb.create_processing_module("behavior", "Processed behavioral data")
    for name, data in session.behavior.items():
        kwargs = dict(name=name, data=data, rate=1000.0, starting_time=0.0)
        if name == "hand_vel":
            behavior.add(TimeSeries(unit="mm/s", description=_BEHAVIOR_DOCS[name], **kwargs))
        else:
            behavior.add(
                SpatialSeries(
                    unit="mm",
                    reference_frame="origin at the centre target",
                    description=_BEHAVIOR_DOCS[name],
                    **kwargs,
                )
            )

    truth = nwb.create_processing_module(
        GT_MODULE, "Ground truth of the synthetic session (lfads_jslds.data.synth.GroundTruth)"
    )
    t0, t1 = gt.window_ms
    truth.add(
        DynamicTable(
            name="trial_truth",
            description=(
                f"Per trial, on a {gt.bin_ms} ms grid from {t0} to {t1} ms around "
                "move_onset_time (bin centres): latents, and rates in Hz of all units in "
                "units-table order"
            ),
            columns=[
                col("trial_id", gt.trial_ids, "id in /intervals/trials"),
                col("condition", gt.condition, "row of parameters/conditions"),
                col("release_time", gt.release_time_s, "start of the free flow (s)"),
                col("initial_state", gt.initial_state, "latent state at release"),
                col("latents", gt.latents, "[time, latent] latent state"),
                col("rates", gt.rates_hz, "[time, neuron] firing rate (Hz)"),
            ],
        )
    )
    truth.add(
        DynamicTable(
            name="modes",
            description="Planted rotational modes, dominant first",
            columns=[
                col("frequency_hz", gt.mode_frequency_hz, "rotation frequency (Hz)"),
                col("decay_tau_s", gt.mode_decay_tau_s, "decay time constant (s)"),
                col("plane", gt.mode_plane, "[latent, 2] orthonormal basis of the plane"),
            ],
        )
    )
    lo, hi = RATE_RANGE_HZ
    params = {
        "dynamics": (gt.dynamics, "A (1/s): dx/dt = A x after release"),
        "dynamics_1ms": (gt.dynamics_1ms, "expm(A * 1 ms)"),
        "readout_weights": (
            gt.readout_weights,
            f"C: rates = clip(exp(b + C x), {lo:g}, {hi:g}) Hz",
        ),
        "readout_bias": (gt.readout_bias, "b"),
        "velocity_readout": (gt.velocity_readout, "D: hand_vel(t) = D x(t - lag) (mm/s)"),
        "velocity_lag_ms": (np.array(gt.velocity_lag_ms), "lag of hand_vel behind latents"),
        "prep_states": (gt.prep_states, "[condition, latent] preparatory states"),
        "conditions": (gt.conditions, "[condition, 2] (trial_type, trial_version)"),
        "window_ms": (np.array(gt.window_ms), "trial_truth window around move onset (ms)"),
        "bin_ms": (np.array(gt.bin_ms), "trial_truth grid bin (ms)"),
        "clipped_fraction": (np.array(gt.clipped_fraction), "share of clipped truth rates"),
    }
    truth.add(
        DynamicTable(
            name="parameters",
            description="Model parameters: one row, each column one array",
            columns=[col(k, np.asarray(v)[None], doc) for k, (v, doc) in params.items()],
        )
    )

    def write(tmp: str) -> None:
        with warnings.catch_warnings():  # the temporary name does not end in .nwb; the file does
            warnings.filterwarnings("ignore", message=".*does not end in '.nwb'")
            with NWBHDF5IO(tmp, "w") as io:
                io.write(nwb)

    atomic_write(Path(path), write)


def write_synthetic_nwb(path: Path, preset: str | SynthConfig = "small", seed: int = 0) -> None:
    """``make_synthetic(preset, seed)`` written to ``path`` as NWB (see ``write_nwb``)."""
    write_nwb(Path(path), make_synthetic(preset, seed))


def read_ground_truth(path: Path) -> GroundTruth:
    """The ground truth stored by ``write_nwb`` (read with h5py)."""
    path = Path(path)
    with open_hdf5(path, "an NWB file") as f:
        if f"processing/{GT_MODULE}" not in f:
            raise DataError(
                f"{path}: no ground truth (processing/{GT_MODULE}); only synthetic files "
                "written by lfads_jslds.data.synth carry one"
            )
        g = f[f"processing/{GT_MODULE}"]
        tt, modes = g["trial_truth"], g["modes"]
        p = {k: v[0] for k, v in g["parameters"].items() if k != "id"}
        window = p["window_ms"]
        return GroundTruth(
            trial_ids=tt["trial_id"][()],
            condition=tt["condition"][()],
            release_time_s=tt["release_time"][()],
            initial_state=tt["initial_state"][()],
            latents=tt["latents"][()],
            rates_hz=tt["rates"][()],
            window_ms=(int(window[0]), int(window[1])),
            bin_ms=int(p["bin_ms"]),
            dynamics=p["dynamics"],
            dynamics_1ms=p["dynamics_1ms"],
            readout_weights=p["readout_weights"],
            readout_bias=p["readout_bias"],
            velocity_readout=p["velocity_readout"],
            velocity_lag_ms=int(p["velocity_lag_ms"]),
            prep_states=p["prep_states"],
            conditions=p["conditions"],
            mode_frequency_hz=modes["frequency_hz"][()],
            mode_decay_tau_s=modes["decay_tau_s"][()],
            mode_plane=modes["plane"][()],
            clipped_fraction=float(p["clipped_fraction"]),
        )


def true_rates_per_bin(
    truth: GroundTruth, bin_ms: int, window_ms: tuple[int, int] = (-250, 450)
) -> np.ndarray:
    """True rates in spikes per bin [trial, bin, neuron] over ``window_ms`` at ``bin_ms``.

    Exact: the 5 ms truth grid is where the rates are constant, so a coarser bin is the sum
    of its 5 ms pieces. ``bin_ms`` and the window's edges must sit on that grid.
    """
    g0, g1 = truth.window_ms
    w0, w1 = window_ms
    if bin_ms % truth.bin_ms or (w0 - g0) % truth.bin_ms or (w1 - w0) % bin_ms:
        raise ValueError(
            f"bin {bin_ms} ms and window {window_ms} must lie on the {truth.bin_ms} ms grid"
        )
    if w0 < g0 or w1 > g1:
        raise ValueError(f"window {window_ms} is outside the stored truth window {truth.window_ms}")
    a, k = (w0 - g0) // truth.bin_ms, bin_ms // truth.bin_ms
    r = truth.rates_hz[:, a : a + (w1 - w0) // truth.bin_ms].astype(np.float64)
    r = r.reshape(r.shape[0], -1, k, r.shape[2]).sum(2)
    return r * (truth.bin_ms / 1000.0)


__all__ = [
    "PRESETS",
    "GroundTruth",
    "SynthConfig",
    "SyntheticSession",
    "make_synthetic",
    "read_ground_truth",
    "true_rates_per_bin",
    "write_nwb",
    "write_synthetic_nwb",
]
