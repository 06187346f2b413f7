"""New-history embedding cost: the sequence user tower's eval path (the last layer for the newest slot only,
`SequenceUserTower.newest`) against the full forward over every slot, interleaved in one process.

The tower is built with the given shape and random weights (the cost does not depend on the weights); the
default shape is `experiment=scientific`'s (dim 384, 1 layer, 2 heads, window 20). Each timed call embeds a
batch of right-aligned windows holding `--items` real items (padding already trimmed, as serving does).

    python bench/user_tower.py                          # Scientific shape, batches of 16 five-item histories
    python bench/user_tower.py --layers 2 --dim 128 --batch 32 --items 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from towerrec.model.sequence import SequenceUserTower


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--items", type=int, default=5, help="real items per history window")
    parser.add_argument("--batch", type=int, default=16, help="histories per call")
    parser.add_argument("--catalog", type=int, default=4385)
    parser.add_argument("--repeats", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tower = SequenceUserTower(args.dim, args.max_len, layers=args.layers, heads=args.heads).eval()
    table = torch.nn.functional.normalize(torch.randn(args.catalog, args.dim), dim=-1)  # (N, D)
    windows = torch.randint(0, args.catalog, (args.batch, args.items))  # (B, items), no padding
    real = windows >= 0
    paths = {"full": lambda: tower(table[windows], real)[:, -1], "newest": lambda: tower.newest(table[windows], real)}
    times = {name: [] for name in paths}
    with torch.inference_mode():
        torch.testing.assert_close(paths["newest"](), paths["full"](), atol=1e-5, rtol=1e-4)
        for _ in range(20):  # warm-up
            for run in paths.values():
                run()
        for _ in range(args.repeats):
            for name, run in paths.items():
                start = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - start) * 1e3)
    result = {"shape": vars(args)}
    for name, values in times.items():
        result[name] = {"p50_ms": round(statistics.median(values), 3),
                        "p90_ms": round(statistics.quantiles(values, n=10)[-1], 3)}
    result["speedup_p50"] = round(result["full"]["p50_ms"] / result["newest"]["p50_ms"], 2)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
