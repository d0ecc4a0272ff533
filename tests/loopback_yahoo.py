"""A Yahoo Finance on loopback, for the real yfinance 1.7 to talk to over HTTP.

Nothing of yfinance is patched but where its requests go: its session factory
(`yfinance.multi.new_session`, used by every `yf.download`) returns a
`requests.Session` whose adapter sends each request, whatever its host
(query1/query2.finance.yahoo.com, fc.yahoo.com, guce.yahoo.com), to this
server, the host kept in the Host header. So yfinance's cookie and crumb
dance, its chart request and its JSON parsing, its own retry of a refused
request with the other cookie strategy, its threads in `yf.download` and its
typed `YFRateLimitError` all run as they do against Yahoo. Its on-disk
timezone and cookie caches are switched off (every ticker's first request is
then the timezone lookup, `range=1d`), so tests share nothing on disk.

The server answers `/v8/finance/chart/SYMBOL` with the chart JSON Yahoo
sends for a daily, unadjusted request (timestamps at the 09:30 New York open,
`indicators.quote` and `indicators.adjclose`, `meta` with the exchange's
time zone), built from a `tests.fakes.yahoo_frame`-shaped frame; an unknown
symbol gets Yahoo's 404 chart error. `refuse_after(n, times)` makes it answer
HTTP 429 to chart requests after the next n, `times` of them (None: until told
otherwise), as Yahoo does in a rate-limit storm.
"""

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest
import requests
import yfinance
import yfinance.cache
import yfinance.data
import yfinance.multi
from requests.adapters import HTTPAdapter

OPEN = pd.Timedelta(hours=9, minutes=30)  # Yahoo stamps a daily bar with the session's open


def chart_json(symbol: str, frame: pd.DataFrame, period1: int | None, period2: int | None) -> bytes:
    """Yahoo's chart answer for `frame`'s rows stamped in [period1, period2)."""
    stamps = (frame.index + OPEN).as_unit("s").asi8.tolist()  # seconds since the epoch
    keep = [
        i
        for i, t in enumerate(stamps)
        if (period1 is None or t >= period1) and (period2 is None or t < period2)
    ]
    if period1 is None and keep:  # range=1d, the timezone lookup: the last bar
        keep = keep[-1:]
    rows = frame.iloc[keep]
    meta = {
        "currency": "USD",
        "symbol": symbol,
        "instrumentType": "EQUITY",
        "exchangeName": "NMS",
        "exchangeTimezoneName": "America/New_York",
        "timezone": "EDT",
        "gmtoffset": -14400,
        "dataGranularity": "1d",
        "validRanges": ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"],
    }
    result = {
        "meta": meta,
        "timestamp": [stamps[i] for i in keep],
        "indicators": {
            "quote": [
                {
                    "open": rows["Open"].tolist(),
                    "high": rows["High"].tolist(),
                    "low": rows["Low"].tolist(),
                    "close": rows["Close"].tolist(),
                    "volume": [int(v) for v in rows["Volume"]],
                }
            ],
            "adjclose": [{"adjclose": rows["Adj Close"].tolist()}],
        },
    }
    return json.dumps({"chart": {"result": [result], "error": None}}).encode()


_NOT_FOUND = json.dumps(
    {"chart": {"result": None, "error": {"code": "Not Found", "description": "No data found"}}}
).encode()


@dataclass
class LoopbackYahoo:
    """What the server holds and what it was asked."""

    history: dict[str, pd.DataFrame] = field(default_factory=dict)
    # chart requests, in order: (symbol, "tz" for the range=1d lookup or "history", status)
    charts: list[tuple[str, str, int]] = field(default_factory=list)
    url: str = ""
    _served_before_refusing: int | None = None
    _refusals_left: int | None = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    hold: dict[str, threading.Event] = field(default_factory=dict)  # symbol -> wait for it
    arrived: list[str] = field(default_factory=list)  # held symbols whose request came

    def refuse_after(self, served: int, times: int | None = None) -> None:
        """Serve the next `served` chart requests, then answer 429 to `times` of them (None:
        every one until `recover`)."""
        with self._lock:
            self._served_before_refusing, self._refusals_left = served, times

    def recover(self) -> None:
        """Serve every chart request from now on."""
        self.refuse_after(0, 0)

    @property
    def refused(self) -> int:
        return sum(1 for *_, status in self.charts if status == 429)

    def asked(self, kind: str = "history") -> list[str]:
        """Symbols whose chart was served (status 200) for `kind`, in order."""
        return [s for s, k, status in self.charts if k == kind and status == 200]

    def answer(self, symbol: str, query: dict[str, str]) -> tuple[int, bytes]:
        if symbol in self.hold:
            self.arrived.append(symbol)
            self.hold[symbol].wait(timeout=600)
        kind = "tz" if "range" in query else "history"
        with self._lock:
            status = 200
            if self._served_before_refusing is not None:
                if self._served_before_refusing > 0:
                    self._served_before_refusing -= 1
                elif self._refusals_left is None or self._refusals_left > 0:
                    status = 429
                    if self._refusals_left is not None:
                        self._refusals_left -= 1
            self.charts.append((symbol, kind, status))
        if status == 429:
            return 429, b"Too Many Requests"
        if symbol not in self.history:
            return 404, _NOT_FOUND
        period = [int(query[k]) if k in query else None for k in ("period1", "period2")]
        return 200, chart_json(symbol, self.history[symbol], *period)


def _handler(yahoo: LoopbackYahoo) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            kind = "text/html"
            if url.path.startswith("/v8/finance/chart/"):
                status, body = yahoo.answer(url.path.rsplit("/", 1)[1], query)
                kind = "application/json" if status != 429 else "text/plain"
            elif url.path == "/v1/test/getcrumb":
                status, body = 200, b"loopback-crumb"
            else:  # fc.yahoo.com's cookie page, guce.yahoo.com's consent page
                status, body = 200, b"<html><body>loopback</body></html>"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def serve(yahoo: LoopbackYahoo) -> Iterator[LoopbackYahoo]:
    """Run the server on 127.0.0.1 (a free port) inside the block; `yahoo.url` names it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(yahoo))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="loopback-yahoo", daemon=True)
    thread.start()
    yahoo.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield yahoo
    finally:
        for event in yahoo.hold.values():
            event.set()
        server.shutdown()
        server.server_close()


class _ToLoopback(HTTPAdapter):
    """Sends every request to `url`, keeping its path and query, its host in Host."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        parts = urlsplit(request.url or "")
        request.headers["Host"] = parts.netloc
        request.url = f"{self.url}{parts.path}" + (f"?{parts.query}" if parts.query else "")
        return super().send(request, **kwargs)


def loopback_session(url: str) -> requests.Session:
    """A session yfinance accepts (a requests one) whose every request goes to `url`."""
    session = requests.Session()
    for scheme in ("http://", "https://"):
        session.mount(scheme, _ToLoopback(url))
    return session


def route_yfinance_to(url: str, patch: pytest.MonkeyPatch | None = None) -> None:
    """Point yfinance's requests at `url`, with its disk caches off: through `patch` (undone
    after the test), or for the rest of the process (a subprocess's)."""
    setattr_ = patch.setattr if patch is not None else setattr
    factory = lambda: loopback_session(url)  # noqa: E731
    setattr_(yfinance.multi, "new_session", factory)
    setattr_(yfinance.data, "new_session", factory)
    setattr_(yfinance.cache._TzCacheManager, "_tz_cache", yfinance.cache._TzCacheDummy())
    setattr_(
        yfinance.cache._CookieCacheManager, "_Cookie_cache", yfinance.cache._CookieCacheDummy()
    )
    # yfinance keeps chart answers for past dates in an in-process LRU cache, keyed by URL:
    # an answer of an earlier test (or server) must not stand in for this one's.
    yfinance.data.YfData.cache_get.cache_clear()


@pytest.fixture
def loopback_yahoo(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackYahoo]:
    """A LoopbackYahoo served on 127.0.0.1, with yfinance routed to it for the test."""
    monkeypatch.setitem(yfinance.config.debug.data, "hide_exceptions", True)
    with serve(LoopbackYahoo()) as yahoo:
        route_yfinance_to(yahoo.url, monkeypatch)
        yield yahoo
        yfinance.data.YfData.cache_get.cache_clear()
