"""The nightly slot: when the `nightly` deployment runs, typed once.

`closecast serve` schedules the cron, `closecast status` expects the session
whose slot has passed, and the `nightly late` alert counts from the slot.
prefect.yaml cannot import Python: tests/test_deployments.py checks that its
schedule is this one.
"""

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class Slot:
    """A daily slot: a cron of a fixed minute and hour, in a time zone."""

    cron: str  # minute hour day-of-month month day-of-week
    timezone: str  # an IANA name, e.g. America/New_York

    @property
    def time(self) -> time:
        """The wall-clock time of the slot, from the cron's minute and hour."""
        minute, hour = self.cron.split()[:2]
        if not (minute.isdigit() and hour.isdigit()):
            raise ValueError(f"cron {self.cron!r} is not one fixed time of day")
        return time(int(hour), int(minute))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def place(self) -> str:
        """The time zone as people say it: `America/New_York` -> `New York`."""
        return self.timezone.rsplit("/", 1)[-1].replace("_", " ")

    def at(self, after: timedelta = timedelta(0)) -> str:
        """`18:30 New York`: the slot, or `after` past it (`22:00 New York`)."""
        moment = datetime.combine(date.min, self.time) + after
        shown = "%H:%M:%S" if moment.second else "%H:%M"
        return f"{moment.strftime(shown)} {self.place}"


# Weeknights, after the 16:00 close.
NIGHTLY_SLOT = Slot(cron="30 18 * * 1-5", timezone="America/New_York")
