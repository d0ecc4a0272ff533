"""Issue 20's strong HAR baseline and its risk scores: pure functions on arrays and frames.

- `strong_har_sigma`: Corsi's 1/5/22-day HAR on the log high-low range in
  Clements & Preve's log form, per ticker: OLS with intercept of
  log RR(t+1) on log of the mean RR over the last 1, 5 and 22 days
  (RR = log(high / low), floored at 1 bp), fitted on the last 1,000 rows
  whose next day comes before the test span (`origin`), from the ticker's
  whole visible history up to the period's as_of; its forecast exp(x·β) is
  mapped to a return scale σ̂ = c · RR̂ with c² = mean(r²) / mean(RR̂²) on
  the same rows. Nothing on or after `origin` is fitted.
- `variance_proxy`: the target day's Garman-Klass variance, alone and with
  the squared overnight gap log(open / previous close) added.
- `risk_scores`: QLIKE of the variance a 95% interval implies against both
  proxies, pinball loss of the 95% and 80% lower bounds at 2.5% and 10%,
  and the share of ticker-periods whose Kupiec / Christoffersen p-values are
  at least 5%.
"""

import math

import numpy as np
import pandas as pd

from closecast.models.interval_scores import christoffersen_pvalue, kupiec_pvalue
from closecast.models.scale import SIGMA_FLOOR

SPANS = (1, 5, 22)
ROLLING = 1000  # training rows per ticker, the last before the forecast origin
RANGE_FLOOR = 1e-4  # 1 bp: a flat day's log range before the logarithm
Z_95 = 1.959963984540054  # the normal's 97.5% quantile: σ implied by a 95% interval
GK = 2.0 * math.log(2.0) - 1.0


def strong_har_sigma(frame: pd.DataFrame, origin: np.datetime64) -> pd.Series:
    """σ̂ of the next log return at each row of one ticker's adjusted prices (date index).

    Args:
        frame: close, high, low (adjusted), every visible row up to the as_of.
        origin: the first test target date; rows whose next close is on or
            after it are never fitted.

    Returns:
        σ̂ per row, same index; NaN where the 22-day mean is not yet full.
    """
    rr = np.log(frame["high"].to_numpy() / frame["low"].to_numpy())
    rr = pd.Series(np.maximum(rr, RANGE_FLOOR))
    x = np.column_stack(
        [np.ones(len(rr))] + [np.log(rr.rolling(s).mean().to_numpy()) for s in SPANS]
    )  # (n, 4)
    y = np.append(np.log(rr.to_numpy())[1:], np.nan)  # (n,): log RR of the next day
    close = frame["close"].to_numpy()
    returns = np.append(np.diff(np.log(close)), np.nan)  # (n,): the next log return
    target = np.append(frame.index[1:].to_numpy(), np.datetime64("NaT"))
    usable = np.isfinite(x).all(axis=1) & np.isfinite(y) & (target < origin)
    fit = np.flatnonzero(usable)[-ROLLING:]
    beta, *_ = np.linalg.lstsq(x[fit], y[fit], rcond=None)
    predicted = np.exp(x @ beta)  # (n,) the next day's range
    c = math.sqrt(np.mean(returns[fit] ** 2) / np.mean(predicted[fit] ** 2))
    return pd.Series(np.maximum(c * predicted, SIGMA_FLOOR), index=frame.index)


def variance_proxy(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each row's next-day Garman-Klass variance, and the same plus the overnight gap²: (n,) each.

    GK = ½·log(H/L)² − (2 log 2 − 1)·log(C/O)² of the next session; the
    overnight term log(O_next / C)² makes it a proxy of the close-to-close
    variance the intervals forecast. NaN on the last row.
    """
    o, h, lo, c = (frame[k].to_numpy() for k in ("open", "high", "low", "close"))
    gk = 0.5 * np.log(h / lo) ** 2 - GK * np.log(c / o) ** 2  # (n,) of the day itself
    gk = np.append(gk[1:], np.nan)
    overnight = np.append(np.log(o[1:] / c[:-1]) ** 2, np.nan)
    return gk, gk + overnight


def pinball(quantile: np.ndarray, y: np.ndarray, tau: float) -> np.ndarray:
    """Pinball (quantile) loss of forecasts `quantile` at level tau: (N,)."""
    d = y - quantile
    return np.maximum(tau * d, (tau - 1.0) * d)


def qlike(proxy: np.ndarray, variance: np.ndarray) -> float:
    """Mean QLIKE, proxy/h − log(proxy/h) − 1 (0 when h = proxy), over rows with proxy > 0."""
    ok = proxy > 0
    ratio = proxy[ok] / variance[ok]
    return float(np.mean(ratio - np.log(ratio) - 1.0))


def implied_variance(lower_95: np.ndarray, upper_95: np.ndarray) -> np.ndarray:
    """((upper − lower) / (2 · 1.96))²: the variance of a normal with the same 95% width."""
    return ((upper_95 - lower_95) / (2.0 * Z_95)) ** 2


def risk_scores(parts: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """QLIKE (two proxies), pinball at 2.5% / 10%, and ticker-period pass shares at 5%."""
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "tickers"}
    h = implied_variance(cat["lower_95"], cat["upper_95"])
    out = {
        "qlike_gk": qlike(cat["proxy_gk"], h),
        "qlike_gk_overnight": qlike(cat["proxy_gk_overnight"], h),
        "pinball_2.5": float(pinball(cat["lower_95"], cat["y"], 0.025).mean()),
        "pinball_10": float(pinball(cat["lower_80"], cat["y"], 0.10).mean()),
    }
    for pct, level in ((80, 0.8), (95, 0.95)):
        kupiec, christoffersen = [], []
        for p in parts:
            hits = (p[f"lower_{pct}"] <= p["y"]) & (p["y"] <= p[f"upper_{pct}"])
            for t in dict.fromkeys(p["tickers"].tolist()):
                sequence = hits[p["tickers"] == t]
                kupiec.append(kupiec_pvalue(sequence, level) >= 0.05)
                christoffersen.append(christoffersen_pvalue(sequence, level) >= 0.05)
        out[f"kupiec_pass_{pct}"] = float(np.mean(kupiec))
        out[f"christoffersen_pass_{pct}"] = float(np.mean(christoffersen))
        out["ticker_periods"] = float(len(kupiec))
    return out
