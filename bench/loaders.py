"""RecBole pre-split loading time: `load_recbole` on NAME.{train,valid,test}.inter of the Amazon Scientific shape.

The input is built, not downloaded: 4385 items, 8442 users and 59427 interactions by default (the shared
Scientific set), written as UniSRec writes it (integer ids mapped by NAME.item2index / NAME.user2index,
histories capped at 50 items, one row per prefix, a NAME.text catalog). Sequence lengths are skewed so that
some users exceed the cap and their early items must be recovered from the training rows. Items follow a
Zipf-like popularity. Building the files is not timed; the figure is the wall time of one `load_recbole` call.

    python bench/loaders.py                      # the Scientific shape
    python bench/loaders.py --rows 2000          # smoke run
    python bench/loaders.py --out bench/results/loaders.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import say, write_results  # noqa: E402  (bench/ is on sys.path when run as a script)

from towerrec.data.formats.recbole import load_recbole

NAME = "Bench"
SCIENTIFIC = {"items": 4385, "users": 8442, "rows": 59427}


def sequence_lengths(rows: int, rng: np.random.Generator) -> np.ndarray:
    """Per-user sequence lengths summing to `rows`: at least 3 (5 where rows allow), a long tail past the cap."""
    users = max(1, round(rows * SCIENTIFIC["users"] / SCIENTIFIC["rows"]))
    floor = min(5, rows // users)
    if floor < 3:
        raise SystemExit(f"--rows {rows} is too small: every user needs at least 3 interactions")
    weights = rng.lognormal(0.0, 1.2, users)
    return floor + rng.multinomial(rows - floor * users, weights / weights.sum())


def write_tsv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        f.writelines("\t".join(map(str, row)) + "\n" for row in rows)


def write_presplit(directory: Path, rows: int, cap: int, seed: int) -> dict[str, int]:
    """The pre-split files in `directory`; returns their item, user and interaction counts."""
    rng = np.random.default_rng(seed)
    lengths = sequence_lengths(rows, rng)
    num_items = SCIENTIFIC["items"]
    popularity = 1.0 / np.arange(1, num_items + 1) ** 0.8
    popularity /= popularity.sum()
    item_index = rng.permutation(num_items) + 1  # item k's index token; 0 is RecBole's padding id
    stages: dict[str, list[tuple]] = {"train": [], "valid": [], "test": []}
    for user, n in enumerate(lengths, start=1):
        seq = item_index[rng.choice(num_items, size=n, p=popularity)]
        for p in range(1, n):
            stage = "test" if p == n - 1 else "valid" if p == n - 2 else "train"
            stages[stage].append((user, " ".join(map(str, seq[max(0, p - cap):p])), seq[p]))
    header = ["user_id:token", "item_id_list:token_seq", "item_id:token"]
    for stage, stage_rows in stages.items():
        write_tsv(directory / f"{NAME}.{stage}.inter", header, stage_rows)
    (directory / f"{NAME}.item2index").write_text("".join(f"B{k:09d}\t{i}\n" for k, i in enumerate(item_index)))
    (directory / f"{NAME}.user2index").write_text("".join(f"A{u:012d}\t{u}\n" for u in range(1, len(lengths) + 1)))
    write_tsv(directory / f"{NAME}.text", ["item_id:token", "text:token_seq"],
              ((f"B{k:09d}", f"Product {k}. Lab > Supplies {k % 40}. Brand{k % 300}. ") for k in range(num_items)))
    return {"items": num_items, "users": len(lengths), "rows": int(lengths.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=SCIENTIFIC["rows"], help="interactions (default: Scientific's)")
    parser.add_argument("--cap", type=int, default=50, help="history cap of the pre-split rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        shape = write_presplit(directory, args.rows, args.cap, args.seed)
        say(f"wrote {shape['items']} items, {shape['users']} users, {shape['rows']} interactions (cap {args.cap})")
        start = time.perf_counter()
        dataset = load_recbole(directory, NAME, user_id_secret="bench")
        seconds = time.perf_counter() - start
    assert len(dataset.interactions) == shape["rows"], "the rebuilt sequences lost interactions"
    print(f"load_recbole pre-split: {seconds:.2f} s for {shape['rows']} interactions "
          f"({shape['rows'] / seconds:,.0f} interactions/s)")
    write_results(args.out, {"bench": "loaders", **shape, "cap": args.cap, "seconds": seconds})


if __name__ == "__main__":
    main()
