"""One registry helper behaves the same for every kind of named thing."""

from __future__ import annotations

import pytest

from transferkit.errors import ConfigError, UnknownBackboneError
from transferkit.registry import Registry


def test_register_get_list_and_refuse_duplicates():
    things = Registry("widget", hint="(see the widget docs)")
    things.register("round", 1)

    @things.register("square")
    def square():
        return 2

    assert things.get("round") == 1 and things.get("square") is square
    assert things.names() == ["round", "square"] and things.names("sq*") == ["square"]
    assert "round" in things and "oval" not in things and len(things) == 2 and list(things) == ["round", "square"]
    with pytest.raises(ConfigError, match="widget 'round' is already registered"):
        things.register("round", 3)
    assert things.get("round") == 1  # never silently replaced


def test_unknown_names_get_close_matches_and_the_list_never_a_guess():
    things = Registry("widget", error=UnknownBackboneError, hint="(see the widget docs)",
                      normalise=lambda s: s.lower())
    things.register("square", 2)
    assert things.get("SQUARE") == 2
    with pytest.raises(UnknownBackboneError, match=r"unknown widget 'squar'\. Did you mean 'square'\? "
                                                   r"Known: square\. \(see the widget docs\)"):
        things.get("squar")
    with pytest.raises(KeyError):  # the kind's error keeps its built-in base
        things.get("circle")


def test_every_kind_of_named_thing_uses_it():
    from transferkit import heads
    from transferkit.backbones import registry as backbones
    from transferkit.trainer import report, strategies

    for registry in (heads.HEADS, strategies.STRATEGIES, report.LOGGERS, backbones._SOURCES, backbones._NAMED):
        assert isinstance(registry, Registry) and len(registry) > 0
    assert "classification" in heads.HEADS and "lp_ft" in strategies.STRATEGIES and "csv" in report.LOGGERS
    with pytest.raises(ConfigError, match="Did you mean 'classification'"):
        heads.head_from_config({"type": "clasification", "num_classes": 2})
