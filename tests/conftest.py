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


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """JAX's persistent compilation cache, one for the session (modules share tiny configs).

    ``train`` and ``evaluate`` build fresh jitted closures on each call, so a resumed
    run would recompile the same train step (most of a tiny run's time). With the cache
    the second compile is a disk read. Without jax's ``reset_cache`` (private) the
    cache stays off: slower, same results.
    """
    try:
        from jax._src.compilation_cache import reset_cache
    except ImportError:
        yield
        return
    settings = {
        "jax_compilation_cache_dir": str(tmp_path_factory.mktemp("jax_cache")),
        "jax_persistent_cache_min_compile_time_secs": 0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    saved = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    reset_cache()
    try:
        yield
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
        reset_cache()
