"""Shared test settings: float64 available, the shared reference folder located."""

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)

#: Where the steering repo's ``shared/`` folder is (reference weights, real data).
#: CI and developer sessions have it beside the checkout; a user's clone does not.
SHARED = Path(os.environ.get("LFADS_JSLDS_SHARED", Path(__file__).parents[1] / ".." / "shared"))


def shared_file(rel: str) -> Path:
    """Path to a file under ``shared/``, or skip saying where it comes from."""
    path = (SHARED / rel).resolve()
    if not path.exists():
        pytest.skip(
            f"{rel} not found under {SHARED} (set LFADS_JSLDS_SHARED to the folder holding "
            "the JSLDS paper's reference weights, reference/*.npz from "
            "github.com/jimmysmith1919/JSLDS_public, JSLDS_code/)"
        )
    return path
