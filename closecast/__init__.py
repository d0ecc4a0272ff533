"""closecast: a nightly Prefect pipeline that forecasts tomorrow's closes."""

__version__ = "0.1.0"
