"""Trading-session arithmetic on the XNYS calendar."""

from datetime import UTC, date, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import pandas as pd

from closecast.core.errors import InputError

_FIRST_SESSION = "1990-01-01"
NEW_YORK = ZoneInfo("America/New_York")


@cache
def _xnys() -> xcals.ExchangeCalendar:
    return xcals.get_calendar("XNYS", start=_FIRST_SESSION)


def session_on_or_before(day: date) -> date:
    """The XNYS session on `day`, or the last one before it (weekend, holiday)."""
    calendar = _xnys()
    stamp = pd.Timestamp(day)
    if not calendar.first_session <= stamp <= calendar.last_session:
        raise InputError(
            f"date {day.isoformat()} is outside the XNYS calendar "
            f"({calendar.first_session.date()} .. {calendar.last_session.date()})"
        )
    return calendar.date_to_session(stamp, direction="previous").date()


def next_session(day: date) -> date:
    """The first XNYS session strictly after `day`."""
    calendar = _xnys()
    return calendar.next_session(pd.Timestamp(session_on_or_before(day))).date()


def sessions_between(start: date, end: date) -> list[date]:
    """Every XNYS session in [start, end]."""
    return [s.date() for s in _xnys().sessions_in_range(pd.Timestamp(start), pd.Timestamp(end))]


def session_closed_by(moment: datetime) -> date:
    """The last XNYS session whose close is at or before `moment` (naive = UTC).

    The session a schedule slot belongs to: 18:30 New York on a session day
    gives that day (early closes included); a weekend or holiday slot, or one
    before the close, gives the session before, as an as_of that is not a
    session does.
    """
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    session = session_on_or_before(aware.astimezone(NEW_YORK).date())
    if pd.Timestamp(aware) < _xnys().session_close(pd.Timestamp(session)):
        session = session_on_or_before(session - timedelta(days=1))
    return session
