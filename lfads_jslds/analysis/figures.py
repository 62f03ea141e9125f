"""Figures of a run's dynamics, written as PNG (matplotlib's Agg backend; no display needed).

Each function takes arrays, draws one figure whose title says what it shows, writes it
atomically and returns the path. Time is in seconds from the alignment event, rates in Hz.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lfads_jslds.io.atomic import atomic_write  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def eigenvalue_spectra(
    eigvals: np.ndarray,
    condition: np.ndarray,
    times_s: np.ndarray,
    path: Path,
    max_panels: int = 9,
    max_points: int = 200_000,
) -> Path:
    """J_h eigenvalues at the expansion points on the complex plane with the unit circle.

    ``eigvals: [trial, time, n]``; one panel per condition (first ``max_panels``), all of
    its trials' eigenvalues coloured by time, or a random ``max_points`` of them (fixed
    seed; the title says so) where there are more: at MC_Maze size a panel holds ~3
    million, which take minutes to draw and look the same thinned.
    """
    all_conds = np.unique(condition)
    conds = all_conds[:max_panels]
    cols = int(np.ceil(np.sqrt(len(conds))))
    rows = int(np.ceil(len(conds) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    circle = np.exp(1j * np.linspace(0, 2 * np.pi, 200))
    t = np.broadcast_to(times_s[None, :, None], eigvals.shape)
    rng = np.random.default_rng(0)
    thinned = False
    for ax, c in zip(axes.flat, conds, strict=False):
        sel = condition == c
        lam, tc = eigvals[sel].ravel(), t[sel].ravel()
        if lam.size > max_points:
            keep = rng.choice(lam.size, max_points, replace=False)
            lam, tc, thinned = lam[keep], tc[keep], True
        sc = ax.scatter(lam.real, lam.imag, c=tc, s=3, cmap="viridis", alpha=0.6)
        ax.plot(circle.real, circle.imag, "k-", lw=0.6)
        pad = 0.05 + 0.1 * max(np.ptp(lam.real), np.ptp(lam.imag))
        ax.set_xlim(lam.real.min() - pad, lam.real.max() + pad)  # zoomed: spectra near 1
        ax.set_ylim(lam.imag.min() - pad, lam.imag.max() + pad)
        ax.set_aspect("equal")
        ax.set_title(f"condition {c}", fontsize=9)
    for ax in list(axes.flat)[len(conds) :]:
        ax.axis("off")
    shown = (
        f"; first {len(conds)} of {len(all_conds)} conditions"
        if len(conds) < len(all_conds)
        else ""
    )
    shown += f"; at most {max_points:,} random points per panel" if thinned else ""
    fig.suptitle(f"Eigenvalues of J_h at the expansion points (arc: unit circle |λ| = 1{shown})")
    fig.tight_layout()
    fig.colorbar(sc, ax=axes, label="time (s)", shrink=0.8)
    return _save(fig, path)


def mode_histograms(freq_hz: np.ndarray, tau_s: np.ndarray, path: Path) -> Path:
    """Histograms of the dominant rotational mode's frequency and decay time constant."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    f = freq_hz[np.isfinite(freq_hz)]
    a.hist(f, bins=40, color="tab:blue")
    a.axvline(np.median(f), color="k", ls="--", label=f"median {np.median(f):.2f} Hz")
    a.set_xlabel("rotation frequency (Hz)")
    a.set_ylabel("trial × bin count")
    a.legend()
    tau = tau_s[np.isfinite(tau_s)]
    b.hist(tau, bins=40, color="tab:orange")
    if tau.size:
        b.axvline(np.median(tau), color="k", ls="--", label=f"median {np.median(tau):.2f} s")
        b.legend()
    b.set_xlabel("decay time constant τ (s; unstable modes left out)")
    fig.suptitle("Dominant rotational mode of every trial and bin")
    fig.tight_layout()
    return _save(fig, path)


def rosette(projection: np.ndarray, condition: np.ndarray, path: Path, title: str) -> Path:
    """Trajectories ``[trial or condition, time, 2]`` in a rotational plane, start marked."""
    fig, ax = plt.subplots(figsize=(5, 5))
    cmap = plt.get_cmap("hsv")
    n_c = max(int(np.max(condition)) + 1, 1)
    for traj, c in zip(projection, condition, strict=True):
        color = cmap(c / n_c)
        ax.plot(traj[:, 0], traj[:, 1], "-", color=color, lw=0.8, alpha=0.7)
        ax.plot(traj[0, 0], traj[0, 1], "o", color=color, ms=3)
    ax.set_aspect("equal")
    ax.set_xlabel("plane axis 1")
    ax.set_ylabel("plane axis 2")
    ax.set_title(title)
    return _save(fig, path)


def expansion_points_pca(
    states: np.ndarray, points: np.ndarray, condition: np.ndarray, path: Path, max_trials: int = 60
) -> Path:
    """JSLDS states and their expansion points in the top-2 PCs of the states."""
    flat = states.reshape(-1, states.shape[-1])
    mean = flat.mean(0)
    _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
    pcs = vt[:2].T
    fig, ax = plt.subplots(figsize=(6, 5))
    cmap = plt.get_cmap("hsv")
    n_c = max(int(np.max(condition)) + 1, 1)
    for i in range(min(len(states), max_trials)):
        s, e = (states[i] - mean) @ pcs, (points[i] - mean) @ pcs
        color = cmap(condition[i] / n_c)
        ax.plot(s[:, 0], s[:, 1], "-", color=color, lw=0.6, alpha=0.6)
        ax.scatter(e[:, 0], e[:, 1], color=color, marker="x", s=8)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("JSLDS states (lines) and expansion points e* (crosses), top 2 PCs")
    return _save(fig, path)


def raster_vs_rates(
    spikes: np.ndarray, rates_hz: np.ndarray, times_s: np.ndarray, path: Path, trial: int
) -> Path:
    """One trial: spike raster (counts per bin) beside the inferred rates (Hz)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    extent = (times_s[0], times_s[-1], spikes.shape[1] - 0.5, -0.5)
    a.imshow(spikes.T, aspect="auto", cmap="Greys", extent=extent, interpolation="nearest")
    a.set_xlabel("time (s)")
    a.set_ylabel("neuron")
    a.set_title(f"trial {trial}: spike counts")
    im = b.imshow(rates_hz.T, aspect="auto", cmap="magma", extent=extent, interpolation="nearest")
    b.set_xlabel("time (s)")
    b.set_title("inferred rates (Hz)")
    fig.colorbar(im, ax=b)
    fig.tight_layout()
    return _save(fig, path)
