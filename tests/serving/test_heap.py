"""FrozenSurvivors: what survives a full collection is skipped by the next, and a rescan reclaims frozen cycles."""

from __future__ import annotations

import gc
import weakref

import pytest

from agegender.serving.heap import FrozenSurvivors


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector reclaims it


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def examined(obj: object) -> bool:
    """Whether ``obj`` is in a generation that collections examine (gc.get_objects leaves the frozen out)."""
    return any(o is obj for o in gc.get_objects())


@pytest.fixture
def clean_gc():
    """Only the test's own gc.collect() calls collect (an automatic one would make the counts wander)."""
    gc.collect()
    assert gc.get_freeze_count() == 0, "another test left objects frozen"
    enabled = gc.isenabled()
    gc.disable()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()


def test_survivors_of_a_full_collection_are_frozen_and_unfrozen_on_exit(clean_gc) -> None:
    before = [Node()]
    with FrozenSurvivors(clock=Clock()) as heap:
        assert not examined(before)  # start-up's objects: frozen at entry
        made = [Node()]
        assert examined(made)
        young = gc.get_freeze_count()
        gc.collect(1)  # not a full collection: nothing more is frozen
        assert examined(made) and gc.get_freeze_count() == young
        gc.collect()
        assert not examined(made) and gc.get_freeze_count() > young
        assert (heap.full, heap.complete) == (1, 0)
    assert gc.get_freeze_count() == 0 and examined(made) and examined(before)
    assert gc.callbacks.count(heap._on_collection) == 0


def test_a_frozen_cycle_waits_for_the_rescan(clean_gc) -> None:
    clock = Clock()
    with FrozenSurvivors(rescan_s=600, clock=clock) as heap:
        node = Node()
        ref = weakref.ref(node)
        gc.collect()  # node survives (it is referenced): frozen
        del node
        gc.collect()
        assert ref() is not None  # garbage now, but frozen: not examined
        clock.now = 599.0
        gc.collect()
        assert ref() is not None and heap.complete == 0
        clock.now = 600.0
        gc.collect()  # the rescan: everything examined, the cycle reclaimed
        assert ref() is None and heap.complete == 1
        assert gc.get_freeze_count() > 0  # and the survivors frozen again
        clock.now = 1199.0
        gc.collect()
        assert heap.complete == 1  # the next rescan is due 600 s after this one


def test_a_cycle_made_and_dropped_between_collections_is_reclaimed_at_once(clean_gc) -> None:
    with FrozenSurvivors(clock=Clock()):
        node = Node()
        ref = weakref.ref(node)
        del node
        gc.collect()
        assert ref() is None  # never survived a full collection, so never frozen


@pytest.mark.parametrize("rescan_s", [0, -1.0, float("inf"), float("nan")])
def test_rescan_must_be_a_positive_finite_number(rescan_s: float) -> None:
    with pytest.raises(ValueError, match="rescan_s must be a positive number of seconds"):
        FrozenSurvivors(rescan_s=rescan_s)
