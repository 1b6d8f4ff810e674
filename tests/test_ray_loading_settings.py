"""`--ray-loading`: checked with the other run settings, before anything starts."""

from __future__ import annotations

import pytest

from pipeline.errors import BadArguments
from pipeline.runner.settings import RunSettings


def settings(**values) -> RunSettings:
    return RunSettings(inputs=("in",), out_dir="out", model_dir="model", **values)


def test_node_loading_needs_a_ray_cluster() -> None:
    with pytest.raises(BadArguments, match="--ray-loading nodes .* add --ray"):
        settings(ray_loading="nodes")
    assert settings(ray="auto", ray_loading="nodes").ray_loading == "nodes"


def test_unknown_ray_loading_is_refused_and_head_is_the_default() -> None:
    with pytest.raises(BadArguments, match="--ray-loading anywhere: use head or nodes"):
        settings(ray="auto", ray_loading="anywhere")
    assert settings().ray_loading == "head"
    stored = settings(ray="auto", ray_loading="nodes").to_stored()
    assert RunSettings.from_stored(stored).ray_loading == "nodes"  # resume keeps it
    del stored["ray_loading"]  # a store written before the option existed
    assert RunSettings.from_stored(stored).ray_loading == "head"
