"""The unterminated-quote catalog: 30 products and 100 events as CSV, one quote at line 7 that never closes.

Before the fix it swallowed 25 of the 30 products into one field and, in skip mode, dropped 84 of the 100
events as unknown items without a word. Shared by the loader tests and the command-line tests.
"""

from __future__ import annotations

from pathlib import Path

QUOTED_PRODUCT = 'P05,"Gadget 5,Brand1,Home > Things,A thing.,5.5'  # for line 7; the quote never closes


def quote_files(tmp: Path, lines: dict[int, str] | None = None, newline: str = "\n") -> tuple[Path, Path]:
    """items.csv: 30 products P00..P29 on lines 2-31, `lines` replacing some (line number -> text); events.csv:
    10 users x 10 events on lines 2-101, 3 of them of P05 (lines 7, 14 and 100)."""
    rows = ["item_id,title,brand,category,description,price"]
    rows += [f"P{i:02d},Gadget {i},Brand{i % 4},Home > Things,A thing.,{i}.5" for i in range(30)]
    for line, text in (lines or {}).items():
        rows[line - 1] = text
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "items.csv").write_bytes((newline.join(rows) + newline).encode())
    events = ["user_id,item_id,timestamp"]
    events += [f"user{u},P{(3 * u + t) % 30:02d},{1000 * u + t}" for u in range(10) for t in range(10)]
    (tmp / "events.csv").write_text("\n".join(events) + "\n")
    return tmp / "items.csv", tmp / "events.csv"
