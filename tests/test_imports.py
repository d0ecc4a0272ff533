"""Heavy imports run with the garbage collector off, and what they built is frozen after."""

import gc
from collections.abc import Iterator

import pytest

from closecast.cli.imports import heavy_imports


@pytest.fixture
def collector() -> Iterator[None]:
    """The collector as the test found it: on, nothing frozen by the test left frozen."""
    was_on = gc.isenabled()
    gc.enable()
    yield
    gc.unfreeze()
    if not was_on:
        gc.disable()


@pytest.mark.usefixtures("collector")
def test_the_collector_is_off_inside_and_what_was_built_is_frozen_after() -> None:
    """Off during the block; back on after it, with the objects built so far never walked again."""
    frozen = gc.get_freeze_count()
    with heavy_imports():
        assert not gc.isenabled()
        built = [[i] for i in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen + len(built)


@pytest.mark.usefixtures("collector")
def test_nested_blocks_leave_the_collector_to_the_outermost() -> None:
    """An inner block ends with the collector still off; the outer one turns it back on."""
    with heavy_imports():
        with heavy_imports():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()


@pytest.mark.usefixtures("collector")
def test_a_collector_someone_turned_off_stays_off() -> None:
    """Off before the block, off after it, and nothing is frozen."""
    gc.disable()
    frozen = gc.get_freeze_count()
    with heavy_imports():
        pass
    assert not gc.isenabled()
    assert gc.get_freeze_count() == frozen


@pytest.mark.usefixtures("collector")
def test_the_collector_comes_back_when_an_import_fails() -> None:
    """A failing import inside the block still leaves the collector on."""
    with pytest.raises(ModuleNotFoundError), heavy_imports():
        import closecast_no_such_module  # type: ignore[import-not-found]  # noqa: F401
    assert gc.isenabled()
