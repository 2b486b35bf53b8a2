"""What every table output shares: default columns, display precision, cell states and the marks
a reader sees (renderers draw the star and dagger in their own syntax)."""

DEFAULT_TASK = "behavior_specific"
DEFAULT_METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
DISPLAY_DECIMALS = 4
PERCENT_DECIMALS = 2
P_VALUE_DIGITS = 3  # significant digits of a p-value
PERCENT = 100.0

# Cell states.
VALUE, NOT_APPLICABLE, MISSING, UNKNOWN, EMPTY = "value", "na", "missing", "unknown", "empty"
# What a reader sees for a cell without a number.
NA_MARK = "N/A"
MISSING_MARK = "—"
UNKNOWN_MARK = "?"
EMPTY_MARK = "n=0"
# Group labels of the rows.
BASELINE_GROUP, PROPOSED_GROUP, IMPROVE_GROUP = "baseline", "proposed", "improve"
IMPROVE_LABEL = "Improve"
GROUP_HEADINGS = {BASELINE_GROUP: "baselines", PROPOSED_GROUP: "proposed"}
# Footnote sentences start with these marks; renderers draw them in their own syntax.
STAR_MARK, DAGGER_MARK = "*", "†"
# A cell any of whose runs stopped at the epoch cap (``training.stopped_by``), not by patience.
CAP_MARK = "‡"
