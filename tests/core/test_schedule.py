from datetime import time, timedelta

import pytest

from closecast.core.schedule import NIGHTLY_SLOT, Slot


def test_the_nightly_slot_is_weeknights_at_18_30_new_york() -> None:
    """The slot's time and place come from its cron and time zone."""
    assert NIGHTLY_SLOT.time == time(18, 30)
    assert NIGHTLY_SLOT.zone.key == "America/New_York"
    assert NIGHTLY_SLOT.at() == "18:30 New York"


@pytest.mark.parametrize(
    ("after", "text"),
    [
        (timedelta(hours=3, minutes=30), "22:00 New York"),
        (timedelta(seconds=10), "18:30:10 New York"),  # a test's short window
    ],
)
def test_at_names_the_time_past_the_slot(after: timedelta, text: str) -> None:
    """`at(after)` is the wall-clock time `after` past the slot, seconds only when set."""
    assert NIGHTLY_SLOT.at(after=after) == text


def test_a_cron_without_one_fixed_time_has_no_slot_time() -> None:
    """A cron that fires at several times of day is refused, naming it."""
    with pytest.raises(ValueError, match=r"\*/15"):
        _ = Slot(cron="*/15 18 * * 1-5", timezone="America/New_York").time
