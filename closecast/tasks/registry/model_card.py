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
from closecast.tasks.registry.gate import Decision

MAX_DESCRIPTION = 5000  # model_versions.description is VARCHAR(5000) in MLflow's SQL stores
MAX_PLOTS = 12

GATE_DESCRIPTION = (
    "Next-day closes from an LSTM, trained nightly by closecast. "
    "How a version becomes `champion` (the alias that predicts): each nightly run registers "
    "its model as a new version and points `challenger` at it. The gate re-scores the current "
    "champion on the challenger's test windows and promotes the challenger only if its "
    "interval score (the mean of the 80% and 95% interval scores, relative to the last close: "
    "a proper score of the centre and the width; lower is better) is strictly lower. "
    "A tie is rejected. A champion without intervals (from before they existed) is compared "
    "on test_rmse instead. The first version becomes champion; with promotion `manual` the "
    "gate moves nothing. Each version's description starts with its decision and shows both "
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
    "Units: test_rmse, naive_rmse and the interval scores are relative to the last close "
    "(fractions of price: 0.01 = 1%), lower is better; coverage is the % of test windows whose "
    "next close fell inside the interval (aim: 80 and 95); skill = 1 − test_rmse / naive_rmse, "
    "higher is better."
)

# (label, metric, is a share shown in %)
ROWS = (
    ("interval score 80%", "interval_score_80", False),
    ("interval score 95%", "interval_score_95", False),
    ("interval score, mean", "test_interval_score", False),
    ("test_rmse", "test_rmse", False),
    ("naive_rmse", "naive_rmse", False),
    ("coverage 80%", "coverage_80", True),
    ("coverage 95%", "coverage_95", True),
    ("skill", "skill", False),
)
LABELS = {"test_interval_score": "interval score", "test_rmse": "test_rmse"}


@dataclass(frozen=True)
class CardLinks:
    """Where a reviewer goes next: the MLflow run, the Prefect flow run, the plots."""

    run: str  # the run's page in the MLflow UI
    run_id: str
    flow_run: str | None = None  # the flow run's page in the Prefect UI, when one exists
    plots: dict[str, str] = field(default_factory=dict)  # artifact path -> its page


def headline(
    decision: Decision, metrics: dict[str, float], champion: dict[str, float], windows: int
) -> str:
    """The first line: the decision and why, in a plain sentence (no markdown)."""
    same = f"on the same {windows} test windows"
    if decision.tag == "manual":
        return "Manual review: not promoted automatically."
    if decision.champion is None:
        return "First version: champion."
    v = decision.champion
    if not decision.compared:
        return f"Champion: replaces v{v}, which cannot score these {windows} test windows."
    mine, theirs = metrics[decision.compared], champion[decision.compared]
    label = LABELS.get(decision.compared, decision.compared)
    if decision.compared == "test_rmse":
        label = f"test_rmse, as v{v} has no intervals:"
    a, b = distinct(mine, theirs)
    if decision.promote:
        return f"Champion: beats v{v} {same} ({label} {a} vs {b})."
    if mine == theirs:
        return f"Rejected: ties champion v{v} {same} ({label} {mine:.6g} each)."
    return f"Rejected: does not beat champion v{v} {same} ({label} {a} vs {b})."


def head_line(head: str | None, metrics: dict[str, float]) -> str:
    """The line after the headline: which head the version uses, and by how much it won
    on validation."""
    comparison = head_comparison(metrics)
    if head is None or comparison is None:
        return "**Head:** point: one output trained by MSE, HAR-scale intervals around it."
    if head == "lstm":
        return f"**Head:** lstm: the network's own scale, which won on {comparison}."
    return f"**Head:** har: the HAR scale, as the network's did not beat it on {comparison}."


def _cell(value: float | None, percent: bool) -> str:
    return as_percent(value, missing="—") if percent else significant(value, missing="—")


def _difference(mine: float | None, theirs: float | None, percent: bool) -> str:
    mine, theirs = finite(mine), finite(theirs)
    if mine is None or theirs is None:
        return "—"
    if mine == theirs:
        return "0 (tie)"
    return f"{100 * (mine - theirs):+.1f} pp" if percent else f"{mine - theirs:+.3g}"


def comparison_table(
    version: str, metrics: dict[str, float], decision: Decision, champion: dict[str, float]
) -> list[str]:
    """This version and the champion re-scored on the same windows, side by side.

    No champion column for a version that had none to face; a champion
    without intervals (or that could not be scored) shows "—".
    """
    against = decision.champion
    header = f"| metric | v{version} (this version) |"
    rule = "|---|--:|"
    if against is not None:
        header += f" champion v{against} | v{version} − v{against} |"
        rule += "--:|--:|"
    lines = [header, rule]
    for label, name, percent in ROWS:
        gate = " (decides)" if name == (decision.compared or "test_interval_score") else ""
        row = f"| {label}{gate} | {_cell(metrics.get(name), percent)} |"
        if against is not None:
            theirs = champion.get(name)
            row += (
                f" {_cell(theirs, percent)} | {_difference(metrics.get(name), theirs, percent)} |"
            )
        lines.append(row)
    return lines


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
        headline(decision, metrics, champion, windows),
        "",
        head_line(head, metrics),
        "",
        f"**Decision:** {decision.tag} — {decision.reason}",
        "",
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
