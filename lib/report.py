"""How an executed notebook shows things to a reviewer: a summary in words, tables without empty
frames, dtype lines or all-NaN columns, formatted numbers, and charts only where a chart says more.

Every helper returns an object with both an HTML/Markdown and a plain-text form, so the notebook
reads the same in Jupyter, on GitHub and in the audit pages."""
from __future__ import annotations

import html
import math
from typing import Iterable, Mapping, Sequence

import pandas as pd

# Column names whose numbers are share counts (integers) or money (thousands separators, cents).
QUANTITY = {"quantity", "held", "target", "delta", "pending_manual", "pending_own", "remaining", "totalQuantity",
            "filled", "from", "to", "previous", "quantity_now", "aggregated"}
MONEY = {"price", "net_liquidation", "available_funds", "notional", "equity", "peak", "pnl", "capital",
         "avg_cost", "market_price", "market_value", "lmtPrice", "avgFillPrice", "reference_price", "total_notional",
         "commission"}
PERCENT = {"drawdown", "weight", "weight_now", "weight_previous"}


class Text:
    """One line (or a few) of Markdown, e.g. 'No strategy skipped.'"""

    def __init__(self, markdown: str):
        self.markdown = markdown

    def _repr_markdown_(self) -> str:
        return self.markdown

    def __repr__(self) -> str:
        return self.markdown.replace("**", "").replace("`", "")


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def fmt(column: str, value) -> str:
    if _blank(value):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if column in QUANTITY:
            return f"{value:,.0f}"
        if column in PERCENT:
            return f"{value:.2%}"
        if column in MONEY:
            return f"{value:,.2f}"
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


class Table:
    """A formatted table: no index, no all-empty column, numbers formatted by column name."""

    def __init__(self, frame: pd.DataFrame, numeric: set[str]):
        self.frame, self.numeric = frame, numeric

    def _repr_html_(self) -> str:
        head = "".join(f'<th align="{"right" if c in self.numeric else "left"}">{html.escape(str(c))}</th>'
                       for c in self.frame.columns)
        body = "".join("<tr>" + "".join(
            f'<td align="{"right" if c in self.numeric else "left"}">{html.escape(v)}</td>'
            for c, v in zip(self.frame.columns, row)) + "</tr>" for row in self.frame.itertuples(index=False))
        return f'<table class="report"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'

    def __repr__(self) -> str:
        return self.frame.to_string(index=False)

    def __len__(self) -> int:
        return len(self.frame)


def table(rows: Iterable[Mapping] | pd.DataFrame, columns: Sequence[str] | None = None, *, empty: str,
          title: str | None = None) -> Table | Text:
    """`rows` as a Table, or the sentence `empty` when there are none. Columns that are empty in
    every row are left out (their absence is the information)."""
    frame = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if frame.empty:
        return Text(empty)
    if columns:
        frame = frame[[c for c in columns if c in frame.columns]]
    keep = [c for c in frame.columns if not all(_blank(v) or v == "" or v == [] for v in frame[c])]
    frame = frame[keep]
    numeric = {c for c in frame.columns
               if all(isinstance(v, (int, float)) and not isinstance(v, bool) or _blank(v) for v in frame[c])}
    shown = pd.DataFrame({c: [fmt(c, v) for v in frame[c]] for c in frame.columns})
    return Table(shown, numeric)


def facts(pairs: Mapping[str, object]) -> Text:
    """Key facts as a Markdown list (no Series, so no dtype line)."""
    lines = [f"- **{k}**: {fmt(k, v)}" for k, v in pairs.items() if not _blank(v) and v != ""]
    return Text("\n".join(lines))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def execution_summary(record: dict) -> Text:
    """What happened in this execution, in words: status, orders, blocks, skips, approval."""
    decision = record.get("decision") or {}
    status = record.get("status", "")
    lines = [f"**{status.replace('_', ' ').capitalize()}.** {record.get('summary', '')}"]
    for b in decision.get("blocked_reasons") or []:
        lines.append(f"- Blocked by **{b.get('check')}**: {b.get('detail')}")
    skipped = decision.get("skipped") or []
    if skipped:
        lines.append(f"- {_plural(len(skipped), 'strategy')} skipped: " + "; ".join(
            f"**{s['strategy']}** ({s['reason']}{', ' + s['action'].replace('_', ' ') if s.get('action') else ''})"
            + (f": {s['detail']}" if s.get("detail") else "") for s in skipped))
    else:
        lines.append("- No strategy skipped.")
    approval = decision.get("approval") or {}
    if approval.get("required"):
        lines.append(f"- Approval required ({'; '.join(approval.get('reasons') or [])}): "
                     f"`python run_pipeline.py approve {record.get('execution_id')}`")
    if record.get("reason") and status not in ("completed", "dry_run"):
        lines.append(f"- {record['reason']}")
    return Text("\n".join(lines))


def snapshot_summary(snapshot: dict) -> Text:
    holdings = [h for h in snapshot.get("holdings") or [] if h.get("quantity")]
    orders = snapshot.get("open_orders") or []
    return Text(f"**Snapshot of account {snapshot.get('account')}**: net liquidation "
                f"{fmt('net_liquidation', snapshot.get('net_liquidation'))}, available funds "
                f"{fmt('available_funds', snapshot.get('available_funds'))}; "
                f"{_plural(len(holdings), 'position')}, {_plural(len(orders), 'open order')}.")


def ledger_view(ledgers: Mapping[str, dict]):
    """Equity and drawdown per strategy: a chart once some ledger has two points, else a table."""
    if not ledgers:
        return Text("No strategy ledger yet.")
    if max(len(l.get("history") or []) for l in ledgers.values()) < 2:
        return table([{"strategy": sid, "at": (l.get("history") or [{}])[-1].get("at", l.get("updated_at")),
                       "equity": l["equity"], "drawdown": l["drawdown"]} for sid, l in ledgers.items()],
                     empty="No strategy ledger yet.")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    fig, (eq, dd) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    for sid, led in ledgers.items():
        h = pd.DataFrame(led.get("history") or [])
        if h.empty:
            continue
        at = pd.to_datetime(h["at"], utc=True).dt.tz_convert(None)  # UTC, naive for matplotlib
        eq.plot(at, h["equity"], marker="o", label=sid)
        dd.plot(at, h["drawdown"], marker="o", label=sid)
    eq.set_title("Equity per strategy")
    eq.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    dd.set_title("Drawdown per strategy")
    dd.yaxis.set_major_formatter(PercentFormatter(1.0))
    dd.set_ylim(bottom=0)
    dd.invert_yaxis()  # deeper drawdown lower on the page
    locator = mdates.AutoDateLocator(maxticks=8)
    dd.xaxis.set_major_locator(locator)
    dd.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    eq.legend(loc="best")
    fig.tight_layout()
    return fig


def targets_vs_previous(bus, strategy_id: str, intent_doc: dict) -> Table | Text:
    """The targets just published next to the ones the Commander last accepted for this strategy
    (its ledger, `strategies/{id}/ledger/latest`): what this run changes."""
    previous = {}
    ledger = bus.get(f"strategies/{strategy_id}/ledger/latest") or {}
    for t in ledger.get("targets") or []:
        previous[t["instrument"].split(":")[1]] = t.get("quantity")
    rows = []
    seen = set()
    for t in intent_doc.get("target_positions") or []:
        sym = t.get("symbol")
        seen.add(sym)
        rows.append({"symbol": sym, "previous": previous.get(sym), "weight_now": t.get("weight"),
                     "quantity_now": t.get("quantity"), "price": t.get("price")})
    for sym, q in sorted(previous.items()):
        if sym not in seen:
            rows.append({"symbol": sym, "previous": q, "weight_now": None, "quantity_now": None, "price": None})
    return table(rows, empty="No target published and none accepted before.")
