"""benchmarks/strong_har.py: the strong HAR baseline and the risk scores (pure helpers)."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from strong_har import (
    ROLLING,
    implied_variance,
    pinball,
    qlike,
    risk_scores,
    strong_har_sigma,
    variance_proxy,
)


def _prices(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    vol = np.exp(np.cumsum(rng.normal(0, 0.05, n))) * 0.01
    close = 100 * np.exp(np.cumsum(vol * rng.standard_normal(n)))
    opened = close * np.exp(vol * rng.normal(0, 0.3, n))
    high = np.maximum(close, opened) * np.exp(np.abs(vol * rng.standard_normal(n)))
    low = np.minimum(close, opened) * np.exp(-np.abs(vol * rng.standard_normal(n)))
    index = pd.bdate_range("2010-01-04", periods=n)
    return pd.DataFrame({"close": close, "open": opened, "high": high, "low": low}, index=index)


def test_strong_har_fits_nothing_on_or_after_the_origin() -> None:
    frame = _prices(1400)
    origin = frame.index[1200].to_datetime64()
    sigma = strong_har_sigma(frame, origin)
    later = frame.copy()
    later.iloc[1200:] = _prices(200, seed=9).to_numpy() * 3  # another series from the origin on
    again = strong_har_sigma(later, origin)
    # the fit sees targets before the origin only: the same σ̂ up to the origin's eve
    np.testing.assert_allclose(again.iloc[:1200], sigma.iloc[:1200], rtol=1e-12)
    assert not np.allclose(again.iloc[1222:], sigma.iloc[1222:])
    assert sigma.iloc[:21].isna().all() and sigma.iloc[21:].notna().all()
    assert (sigma.iloc[21:] > 0).all()


def test_strong_har_uses_only_the_last_thousand_rows() -> None:
    frame = _prices(1500)
    origin = frame.index[-1].to_datetime64()
    short = frame.iloc[-(ROLLING + 1 + 21) - 5 :]  # the rolling window and a little more
    np.testing.assert_allclose(
        strong_har_sigma(frame, origin).iloc[-100:],
        strong_har_sigma(short, origin).iloc[-100:],
        rtol=1e-10,
    )


def test_strong_har_sigma_is_on_the_return_scale() -> None:
    frame = _prices(1300, seed=3)
    sigma = strong_har_sigma(frame, (frame.index[-1] + pd.Timedelta(days=1)).to_datetime64())
    r = np.diff(np.log(frame["close"].to_numpy()))
    ratio = np.sqrt(np.mean(r[-ROLLING:] ** 2)) / np.sqrt(
        np.mean(sigma.iloc[-ROLLING - 1 : -1] ** 2)
    )
    assert ratio == pytest.approx(1.0, abs=1e-9)


def test_variance_proxy_is_garman_klass_of_the_next_day() -> None:
    frame = pd.DataFrame(
        {"open": [10.0, 10.5], "high": [11.0, 11.0], "low": [9.0, 10.0], "close": [10.0, 10.8]}
    )
    gk, with_gap = variance_proxy(frame)
    expected = 0.5 * np.log(1.1) ** 2 - (2 * np.log(2) - 1) * np.log(10.8 / 10.5) ** 2
    assert gk[0] == pytest.approx(expected) and np.isnan(gk[1])
    assert with_gap[0] == pytest.approx(expected + np.log(1.05) ** 2)


def test_pinball_qlike_and_implied_variance() -> None:
    y = np.array([-0.02, 0.01])
    assert pinball(np.array([-0.01, -0.01]), y, 0.1).tolist() == pytest.approx([0.009, 0.002])
    assert qlike(np.array([4e-4, 0.0]), np.array([4e-4, 1.0])) == pytest.approx(0.0)
    assert implied_variance(np.array([-1.959963984540054]), np.array([1.959963984540054]))[
        0
    ] == pytest.approx(1.0)


def test_risk_scores_count_ticker_periods() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(0, 0.01, 200)
    part = {
        "y": y,
        "tickers": np.array(["A", "B"] * 100, dtype=object),
        "dates": np.arange(200),
        "proxy_gk": np.full(200, 1e-4),
        "proxy_gk_overnight": np.full(200, 1e-4),
        "lower_80": np.full(200, -0.0128),
        "upper_80": np.full(200, 0.0128),
        "lower_95": np.full(200, -0.0196),
        "upper_95": np.full(200, 0.0196),
    }
    out = risk_scores([part, part])
    assert out["ticker_periods"] == 4
    assert out["qlike_gk"] == pytest.approx(0.0, abs=1e-6)
    assert 0 <= out["kupiec_pass_95"] <= 1 and 0 <= out["christoffersen_pass_80"] <= 1
