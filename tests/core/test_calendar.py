from datetime import UTC, date, datetime

import pytest

from closecast.core.calendar import NEW_YORK, session_closed_by


@pytest.mark.parametrize(
    ("moment", "session"),
    [
        (datetime(2021, 3, 10, 18, 30, tzinfo=NEW_YORK), date(2021, 3, 10)),  # a weekday slot
        (datetime(2021, 3, 10, 23, 30, tzinfo=UTC), date(2021, 3, 10)),  # the same slot in UTC
        (datetime(2021, 3, 10, 16, 0, tzinfo=NEW_YORK), date(2021, 3, 10)),  # at the close
        (datetime(2021, 3, 10, 15, 59, tzinfo=NEW_YORK), date(2021, 3, 9)),  # before it
        (datetime(2021, 2, 15, 18, 30, tzinfo=NEW_YORK), date(2021, 2, 12)),  # Presidents' Day
        (datetime(2021, 3, 13, 18, 30, tzinfo=NEW_YORK), date(2021, 3, 12)),  # a Saturday
        (datetime(2021, 11, 26, 18, 30, tzinfo=NEW_YORK), date(2021, 11, 26)),  # closes 13:00
        (datetime(2021, 3, 10, 23, 30), date(2021, 3, 10)),  # naive is UTC
    ],
)
def test_a_moment_belongs_to_the_last_session_closed_by_then(
    moment: datetime, session: date
) -> None:
    """A slot covers the last XNYS session that had closed: its own day after the close, the
    session before on a holiday, a weekend or before the close."""
    assert session_closed_by(moment) == session
