"""Numbers as people read them: in the run summary, the model card and the run's note.

One rule for a value that is missing or not finite: it reads `n/a` (or the
table's own placeholder, `missing`), never `nan%`. Fractions are shown as
percent or basis points of the last close.
"""

import math
from collections.abc import Mapping

NA = "n/a"


def finite(value: float | None) -> float | None:
    """`value` as a float when it is a finite number, else None."""
    return float(value) if value is not None and math.isfinite(value) else None


def metric(metrics: Mapping[str, float] | None, key: str) -> float | None:
    """`metrics[key]` when it is there and finite, else None."""
    return finite((metrics or {}).get(key))


def percent(value: float | None, digits: int = 1, sign: bool = False, missing: str = NA) -> str:
    """A fraction in percent: 0.0123 -> `1.2%` (`+1.2%` with `sign`)."""
    shown = finite(value)
    return missing if shown is None else f"{shown * 100:{'+' if sign else ''}.{digits}f}%"


def basis_points(value: float | None, digits: int = 0) -> str:
    """A fraction in basis points: 0.0123 -> `123 bp`."""
    shown = finite(value)
    return NA if shown is None else f"{shown * 1e4:.{digits}f} bp"


def signed(value: float | None, digits: int = 4) -> str:
    """A number with its sign: `+0.0123`."""
    shown = finite(value)
    return NA if shown is None else f"{shown:+.{digits}f}"


def significant(value: float | None, digits: int = 6, missing: str = NA) -> str:
    """A number to `digits` significant digits: `0.0469688`."""
    shown = finite(value)
    return missing if shown is None else f"{shown:.{digits}g}"


def pvalue(value: float | None) -> str:
    """A p-value to two decimals, `< 0.01` below that."""
    shown = finite(value)
    return NA if shown is None else "< 0.01" if shown < 0.01 else f"{shown:.2f}"


def plural(n: int, noun: str) -> str:
    """`1 ticker`, `2 tickers`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def distinct(a: float, b: float, zeros: bool = False) -> tuple[str, str]:
    """`a` and `b` with the fewest significant digits (3 or more) that tell them apart;
    `zeros` keeps trailing zeros, so both show as many digits (0.0400 beside 0.0382)."""
    flag = "#" if zeros else ""
    for digits in range(3, 13):
        shown = f"{a:{flag}.{digits}g}", f"{b:{flag}.{digits}g}"
        if shown[0] != shown[1]:
            return shown
    return f"{a:{flag}.4g}", f"{b:{flag}.4g}"


def head_comparison(metrics: dict[str, float]) -> str | None:
    """The two heads' validation scores (`val_interval_score_lstm`, `_har`) in a phrase,
    e.g. "validation interval score 0.0312 (lstm) vs 0.0318 (har), lstm 1.9% lower";
    None without them (a point network)."""
    lstm, har = metrics.get("val_interval_score_lstm"), metrics.get("val_interval_score_har")
    if lstm is None or har is None:
        return None
    a, b = distinct(lstm, har, zeros=True)
    change = lstm / har - 1.0 if har > 0 else 0.0
    side = "lower" if change < 0 else "higher"
    return f"validation interval score {a} (lstm) vs {b} (har), lstm {abs(change):.1%} {side}"


def head_summary(head: str, metrics: dict[str, float]) -> str:
    """The run summary's line on the head that won, e.g. "head: lstm (validation ...)"."""
    comparison = head_comparison(metrics)
    return f"head: {head}" + (f" ({comparison})" if comparison else " (one-output network)")
