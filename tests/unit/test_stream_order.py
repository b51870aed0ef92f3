from __future__ import annotations

import pytest

from crm_export.stream_order import DependencyCycle, dependency_order


def test_parents_run_first_and_independent_streams_keep_the_config_order() -> None:
    names = ["contacts", "leads", "opportunities", "accounts", "tasks"]
    needs = {"contacts": ["accounts"], "opportunities": ["accounts"], "tasks": ["contacts"]}
    assert dependency_order(names, needs) == [
        "leads",
        "accounts",
        "contacts",
        "opportunities",
        "tasks",
    ]


def test_no_dependencies_is_the_config_order() -> None:
    assert dependency_order(["b", "a", "c"], {}) == ["b", "a", "c"]


def test_a_cycle_is_named_stream_by_stream() -> None:
    with pytest.raises(DependencyCycle) as info:
        dependency_order(["a", "b", "c", "d"], {"a": ["b"], "b": ["c"], "c": ["a"], "d": []})
    assert info.value.cycle == ["a", "b", "c", "a"]
    assert str(info.value) == "a -> b -> c -> a"


def test_a_stream_that_depends_on_itself_is_a_cycle() -> None:
    with pytest.raises(DependencyCycle) as info:
        dependency_order(["a"], {"a": ["a"]})
    assert info.value.cycle == ["a", "a"]
