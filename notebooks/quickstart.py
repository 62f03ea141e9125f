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
# # Quickstart: a trained LFADS-JSLDS run
#
# `make demo` trains LFADS-JSLDS on a synthetic session, prints its run folder and links it
# as `runs/demo-latest`, the default here (set `LFADS_JSLDS_RUN` for another run). This
# notebook loads the inferred rates, compares one trial's spikes with its rates, and reads
# the metrics.

# %%
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from lfads_jslds.pipeline.run import RunFolder

RUN = RunFolder.open(Path(os.environ.get("LFADS_JSLDS_RUN", "../runs/demo-latest")))
inf, attrs = RUN.inference()
data, source = RUN.data, RUN.source
dt = attrs["bin_ms"] / 1000.0  # seconds per bin; rates in inference.h5 are spikes per bin
print({k: v.shape for k, v in inf.items() if hasattr(v, "shape")})

# %% [markdown]
# `rates` is `[trial, time, neuron]` over the aligned window, neurons in NWB unit-id
# order (`inf["heldout"]` marks the held-out ones). Below: one trial's held-in spikes
# next to the inferred rates (Hz) for the neurons that fire most.

# %%
trial = 0
heldin = ~inf["heldout"].astype(bool)
spikes = data.train_input[trial][:, np.argsort(data.tensors["heldin_unit_ids"])]
rates_hz = inf["rates"][trial][:, heldin] / dt
top = np.argsort(spikes.sum(0))[::-1][:4]
t = attrs["window_ms"][0] / 1000.0 + dt * (np.arange(spikes.shape[0]) + 0.5)
fig, axes = plt.subplots(len(top), 1, figsize=(7, 1.6 * len(top)), sharex=True)
for ax, n in zip(axes, top, strict=True):
    ax.bar(t, spikes[:, n] / dt, width=dt, color="0.8", label="spikes (Hz)")
    ax.plot(t, rates_hz[:, n], "r-", label="inferred rate (Hz)")
    ax.set_ylabel(f"neuron {n}")
axes[0].legend(fontsize=7)
axes[-1].set_xlabel("time from movement onset (s)")
plt.show()

# %% [markdown]
# `metrics.json`: NLB's metrics on the val trials, with the smoothing baseline (and, for
# synthetic data, the true rates as the ceiling).

# %%
metrics = json.loads((RUN / "metrics.json").read_text())
for key in ("co-bps", "fp-bps", "vel R2", "psth R2", "rates_r2_vs_truth"):
    if key in metrics:
        base = metrics["smoothing_baseline"].get(key)
        base = "-" if base is None else f"{base:.4f}"
        print(f"{key:>18}: model {metrics[key]:.4f}   smoothing {base}")
assert np.isfinite(inf["rates"]).all() and (inf["rates"] >= 0).all()
