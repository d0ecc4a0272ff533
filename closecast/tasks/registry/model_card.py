"""The model card: the description a reviewer reads on a registry version, and the gate's.

A version's description starts with one plain sentence (the decision and
why: list views show only the first line, and render no markdown there),
then the challenger and the champion side by side on the same test windows,
the units, the data it learned from, and links to the run, the Prefect flow
run and the plots. The registered model's description says how the gate
works. Pure text: `closecast.tasks.registry.register` gathers what goes in.
"""

from dataclasses import dataclass, field

from closecast.core.formatting import distinct, finite, head_comparison, significant
from closecast.core.formatting import percent as as_percent
from closecast.tasks.modeling.windows import Dataset, WindowSet
from closecast.tasks.registry.gate import Decision, difference_text

MAX_DESCRIPTION = 5000  # model_versions.description is VARCHAR(5000) in MLflow's SQL stores
MAX_PLOTS = 12
# MLflow's UI trims a cell's whitespace (Unicode spaces too) and draws it without padding;
# an entity survives the trim and renders as an em space.
CELL_PAD = "&emsp;"

GATE_DESCRIPTION = (
    "Next-day closes from an LSTM, trained nightly by closecast. "
    "How a version becomes `champion` (the alias that predicts): each nightly run registers "
    "its model as a new version and points `challenger` at it. The gate re-scores the current "
    "champion on the challenger's test windows and promotes the challenger only if its "
    "interval score (the mean of the 80% and 95% interval scores, relative to the last close: "
    "a proper score of the centre and the width; lower is better) is lower on the windows "
    "whose dates come after the champion's own selection (its test_end): the champion won "
    "its place on the others, so there it has the luck of a winner. The difference is paired "
    "by session, with a 95% interval and a one-sided Diebold–Mariano p-value (Newey–West); "
    "with `promotion_alpha` set the p-value must be below it. A tie is rejected, and so is "
    "a challenger with no fresh window. A champion without intervals (from before they existed) is compared "
    "on test_rmse instead. The first version becomes champion; with promotion `manual` the "
    "gate moves nothing and the card says what it recommends. Each version's description "
    "starts with its decision and shows both "
    "models side by side. A person can point `champion` at any version with "
    "`closecast promote VERSION` (promoting the previous one is the rollback); "
    "`closecast models --history` lists every alias move."
)

CANDIDATES_DESCRIPTION = (
    "Candidates for closecast-lstm, registered nightly by closecast for review. Each nightly "
    "run registers its model here and points `challenger` at it; the gate re-scores "
    "closecast-lstm's `champion` on the challenger's test windows and records what it "
    "recommends (tags `promotion` and `promotion_reason`, and the first line of the "
    "version's description). The nightly cannot move the champion: only reviewers, who alone "
    'may edit closecast-lstm, promote a version, with this page\'s "Promote model" button '
    "(copy it into closecast-lstm, then set alias `champion` on the copy) or with "
    "`closecast promote VERSION`, which does both and records it."
)

UNITS = (
    "Units: test_rmse, naive_rmse and the interval scores are in basis points of the last "
    "close (1 bp = 0.01%, as in the Prefect summary; the run's metrics keep the raw fractions: "
    "0.0100 = 100 bp), lower is better; the gate's difference is in % of the champion's "
    "interval score; coverage is the % of test windows whose next close fell inside the "
    "interval (aim: 80 and 95); skill = 1 − test_rmse / naive_rmse, higher is better."
)

# (label, metric, unit: bp of the last close, % of windows, or a plain number)
ROWS = (
    ("interval score 80%", "interval_score_80", "bp"),
    ("interval score 95%", "interval_score_95", "bp"),
    ("interval score, mean", "test_interval_score", "bp"),
    ("test_rmse", "test_rmse", "bp"),
    ("naive_rmse", "naive_rmse", "bp"),
    ("coverage 80%", "coverage_80", "%"),
    ("coverage 95%", "coverage_95", "%"),
    ("skill", "skill", ""),
)
LABELS = {"test_interval_score": "interval score", "test_rmse": "test_rmse"}


@dataclass(frozen=True)
class CardLinks:
    """Where a reviewer goes next: the MLflow run, the Prefect flow run, the plots."""

    run: str  # the run's page in the MLflow UI
    run_id: str
    flow_run: str | None = None  # the flow run's page in the Prefect UI, when one exists
    plots: dict[str, str] = field(default_factory=dict)  # artifact path -> its page
    fan_rule: str = ""  # which tickers got a fan chart, in words (the run's `fan_charts` tag)


def headline(
    decision: Decision,
    metrics: dict[str, float],
    champion: dict[str, float],
    windows: int,
    *,
    version: str | None = None,
) -> str:
    """The first line: the decision and why, in a plain sentence (no markdown).

    Args:
        version: this version's number, which a manual card's command names.
    """
    if decision.tag == "manual":
        return _manual_line(decision, metrics, champion, windows, version)
    if decision.champion is None:
        return "First version: champion."
    v = decision.champion
    if not decision.compared:
        return f"Champion: replaces v{v}, which cannot score these {windows} test windows."
    verdict = _verdict(decision, metrics, champion, windows)
    return f"Champion: {verdict}." if decision.promote else f"Rejected: {verdict}."


def _gate_text(decision: Decision) -> str:
    return difference_text(
        decision.difference, decision.difference_low, decision.difference_high, decision.pvalue
    )


def _fresh(decision: Decision) -> str:
    n = decision.sessions
    sessions = "1 session" if n == 1 else f"{n} sessions"
    return f"the {sessions} after its selection" if decision.since else f"all {sessions}"


def _verdict(
    decision: Decision, metrics: dict[str, float], champion: dict[str, float], windows: int
) -> str:
    """`beats v1 on …` / `does not beat champion v1 on …`: what the gate found, and on what."""
    v, won = decision.champion, decision.promote or decision.recommended
    if decision.sessions:  # the paired comparison on the fresh windows
        on, gate = _fresh(decision), _gate_text(decision)
        if won:
            return f"beats v{v} on {on}: {gate}"
        if decision.difference < 0:
            return f"scores better than champion v{v} on {on}, but not beyond chance: {gate}"
        if decision.difference == 0:
            return f"ties champion v{v} on {on}: {gate}"
        return f"does not beat champion v{v} on {on}: {gate}"
    if decision.since:
        return f"no test window comes after champion v{v}'s selection on {decision.since}"
    same = f"on the same {windows} test windows"
    mine, theirs = metrics[decision.compared], champion[decision.compared]
    label = LABELS.get(decision.compared, decision.compared)
    if decision.compared == "test_rmse":
        label = f"test_rmse, as v{v} has no intervals:"
    a, b = distinct(mine * 1e4, theirs * 1e4)
    if won:
        return f"beats v{v} {same} ({label} {a} vs {b} bp)"
    if mine == theirs:
        return f"ties champion v{v} {same} ({label} {mine * 1e4:.6g} bp each)"
    return f"does not beat champion v{v} {same} ({label} {a} vs {b} bp)"


def _manual_line(
    decision: Decision,
    metrics: dict[str, float],
    champion: dict[str, float],
    windows: int,
    version: str | None,
) -> str:
    """`Manual review: the gate recommends promoting (…); run closecast promote 6.` (no
    backticks: list views show the first line as plain text)."""
    command = f"closecast promote {version}" if version else "closecast promote VERSION"
    if decision.champion is None:
        return f"Manual review: the first version, which the gate would promote; run {command}."
    if not decision.compared:
        v = decision.champion
        return (
            f"Manual review: the gate recommends promoting, as v{v} cannot score these "
            f"{windows} test windows; run {command}."
        )
    verdict = _verdict(decision, metrics, champion, windows)
    if decision.recommended:
        return f"Manual review: the gate recommends promoting (it {verdict}); run {command}."
    return (
        f"Manual review: the gate would keep champion v{decision.champion} (this version "
        f"{verdict}); {command} promotes it anyway."
    )


def head_line(head: str | None, metrics: dict[str, float]) -> str:
    """The line after the headline: which head the version uses, and by how much it won
    on validation."""
    comparison = head_comparison(metrics)
    if head is None or comparison is None:
        return "**Head:** point: one output trained by MSE, HAR-scale intervals around it."
    if head == "lstm":
        return f"**Head:** lstm: the network's own scale, which won on {comparison}."
    return f"**Head:** har: the HAR scale, as the network's did not beat it on {comparison}."


def _cell(value: float | None, unit: str) -> str:
    shown = finite(value)
    if shown is None:
        return "—"
    if unit == "bp":
        return f"{shown * 1e4:.1f} bp"
    return as_percent(shown) if unit == "%" else significant(shown)


def _difference(mine: float | None, theirs: float | None, unit: str) -> str:
    mine, theirs = finite(mine), finite(theirs)
    if mine is None or theirs is None:
        return "—"
    if mine == theirs:
        return "0 (tie)"
    if unit == "%":
        return f"{100 * (mine - theirs):+.1f} pp"
    if unit == "bp":
        diff = (mine - theirs) * 1e4
        return f"{diff:+.1f} bp" if abs(diff) >= 0.05 else f"{diff:+.2g} bp"
    return f"{mine - theirs:+.3g}"


def comparison_table(
    version: str, metrics: dict[str, float], decision: Decision, champion: dict[str, float]
) -> list[str]:
    """This version and the champion re-scored on the same windows, side by side.

    No champion column for a version that had none to face; a champion
    without intervals (or that could not be scored) shows "—". Cells carry
    their units and are centred, so neighbouring numbers never run together.
    """
    against = decision.champion
    header = f"| metric | v{version} (this version) |"
    rule = "|:---|:---:|"  # three dashes a cell: MLflow's markdown renderer needs them
    if against is not None:
        header += f" champion v{against} | v{version} − v{against} |"
        rule += ":---:|:---:|"
    lines = [_padded(header), rule]
    for label, name, unit in ROWS:
        gate = " (decides)" if name == (decision.compared or "test_interval_score") else ""
        row = f"| {label}{gate} | {_cell(metrics.get(name), unit)} |"
        if against is not None:
            theirs = champion.get(name)
            row += f" {_cell(theirs, unit)} | {_difference(metrics.get(name), theirs, unit)} |"
        lines.append(_padded(row))
    return lines


def _padded(row: str) -> str:
    """`row` with an em space either side of each cell: MLflow's UI draws tables without
    padding (and ignores the alignment row), so neighbouring cells would run together."""
    cells = row.strip().strip("|").split("|")
    return "|" + "|".join(f" {CELL_PAD}{c.strip()}{CELL_PAD} " for c in cells) + "|"


def gate_lines(decision: Decision, windows: int) -> list[str]:
    """What the gate compared, when it paired the two on fresh windows, and what the table
    below covers."""
    if not decision.sessions:
        return []
    since = f" after v{decision.champion}'s selection on {decision.since}" if decision.since else ""
    return [
        f"**Gate:** {_gate_text(decision)}, challenger − champion relative to the champion's "
        f"score, on {decision.windows} test windows ({decision.sessions} sessions){since}; "
        f"the table covers all {windows} test windows.",
        "",
    ]


def _span(windows: WindowSet) -> str:
    if not len(windows):
        return "none"
    dates = windows.target_dates
    return f"{str(dates.min())[:10]} – {str(dates.max())[:10]}"


def data_lines(dataset: Dataset, source: str, tickers: str) -> list[str]:
    """What the model learned from: the source and its hash, tickers, windows, dates."""
    return [
        f"- Source: `{source}` · data_sha256 `{dataset.data_sha256}`",
        f"- Tickers ({len(dataset.tickers)}): {tickers}",
        f"- Windows of {dataset.window} sessions: train {len(dataset.train)} · "
        f"validation {len(dataset.validation)} · test {len(dataset.test)}",
        f"- Dates predicted: train {_span(dataset.train)} · validation "
        f"{_span(dataset.validation)} · test {_span(dataset.test)}",
    ]


def link_lines(links: CardLinks) -> list[str]:
    lines = [f"- MLflow run: [{links.run_id}]({links.run})"]
    if links.flow_run:
        lines.append(f"- Prefect flow run: [{links.flow_run.rsplit('/', 1)[-1]}]({links.flow_run})")
    shown = list(links.plots.items())[:MAX_PLOTS]
    if shown:
        more = f" and {len(links.plots) - MAX_PLOTS} more" if len(links.plots) > MAX_PLOTS else ""
        lines.append("- Plots: " + ", ".join(f"[{p}]({url})" for p, url in shown) + more)
    if links.fan_rule:
        lines.append(f"- Fan charts (`plots/predicted_vs_actual_<ticker>.png`): {links.fan_rule}.")
    return lines


def fit_description(text: str, limit: int = MAX_DESCRIPTION) -> str:
    """`text`, cut at a line end to fit MLflow's description column, saying it was cut."""
    if len(text) <= limit:
        return text
    note = "\n\n… (cut to MLflow's description limit)"
    return text[: text.rfind("\n", 0, limit - len(note))] + note


def describe_version(
    version: str,
    metrics: dict[str, float],
    decision: Decision,
    champion: dict[str, float],
    windows: int,
    data: list[str],
    links: CardLinks,
    head: str | None = None,
) -> str:
    """The model card of registry version `version`: plain first line, then markdown.

    Args:
        champion: the champion's metrics re-scored on this version's test windows
            (empty when there is none, or it could not be scored).
        windows: how many test windows both were scored on.
        data: `data_lines` of the dataset it trained on.
        head: the interval head a distributional network uses (None: a point network).
    """
    lines = [
        headline(decision, metrics, champion, windows, version=version),
        "",
        head_line(head, metrics),
        "",
        f"**Decision:** {decision.tag} — {decision.reason}",
        "",
        *gate_lines(decision, windows),
        *comparison_table(version, metrics, decision, champion),
        "",
        UNITS,
        "",
        "**Data**",
        "",
        *data,
        "",
        "**Links**",
        "",
        *link_lines(links),
    ]
    return fit_description("\n".join(lines))
