# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Single-trial fixed points and rotations
#
# A JSLDS generator names, at every bin of every trial, the point `e*` it linearises
# around, so each trial's local dynamics can be read without a fixed-point search.
# `lfads-jslds analyze RUN` (part of `make demo`) writes `RUN/analysis/`; this notebook
# reads it. Conventions: Δt in seconds, frequencies in Hz, eigenvalues sorted by |λ|
# descending; the dominant rotational mode of a bin is the complex pair carrying the
# most of the state's modal motion, from the deviation `a_{t−1} − e*_t` that J_h acts on
# (`analysis.modes`). jPCA runs on condition-averaged factors from 50 ms before to 150 ms
# after movement onset unless `analyze --jpca-window` said otherwise (`summary["jpca"]`).

# %%
import json
import os
from pathlib import Path

import h5py
import matplotlib.pyplot as plt
import numpy as np

from lfads_jslds.pipeline.run import RunFolder

RUN = RunFolder.open(Path(os.environ.get("LFADS_JSLDS_RUN", "../runs/demo-latest")))
summary = json.loads((RUN / "analysis" / "summary.json").read_text())
print({k: summary[k] for k in ("rotation_hz_median", "rotation_hz_iqr", "tau_s_median", "dt_s")})
print("expansion points from:", summary["expansion_points_source"])
print("median ‖F(e*) − e*‖:", summary["fixed_point_residual_median"])
print("jPCA:", summary["jpca"])

# %% [markdown]
# Per trial and bin: the dominant pair's frequency and share of the modal motion (the
# rule is in `summary["dominant_rule"]`, see `lfads_jslds.analysis.modes`), and the
# residual ‖F(e*, 0) − e*‖ (how close each expansion point is to a true fixed point).

# %%
with h5py.File(RUN / "analysis" / "modes.h5") as f:
    freq, share, residual = f["freq_hz"][()], f["share"][()], f["fixed_point_residual"][()]
    eigenvalues = f["eigenvalues"][()]
dt = summary["dt_s"]
t = dt * np.arange(freq.shape[1])
fig, (a, b, c) = plt.subplots(1, 3, figsize=(12, 3))
for trial in range(min(5, freq.shape[0])):
    a.plot(t, freq[trial], label=f"trial {trial}")
    b.plot(t, share[trial])
    c.semilogy(t, residual[trial])
a.set_ylabel("dominant rotation (Hz)")
b.set_ylabel("its share of the motion")
c.set_ylabel("‖F(e*) − e*‖")
for ax in (a, b, c):
    ax.set_xlabel("time in window (s)")
a.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# The spectrum of J_h at one trial's expansion point, mid-window, with each mode's
# frequency and time constant.

# %%
lam = eigenvalues[0, eigenvalues.shape[1] // 2]
freq_all = np.abs(np.angle(lam)) / (2 * np.pi * dt)
with np.errstate(divide="ignore"):
    tau = np.where(np.abs(lam) < 1, -dt / np.log(np.abs(lam)), np.inf)
for k in range(min(8, lam.size)):
    print(f"|λ| {abs(lam[k]):.3f}   {freq_all[k]:6.2f} Hz   τ {tau[k]:.3f} s")
inf, _ = RUN.inference()
assert inf["expansion_points"].shape[:2] == freq.shape if "expansion_points" in inf else True
