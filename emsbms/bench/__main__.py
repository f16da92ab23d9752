"""`python -m emsbms.bench [--json FILE]`: run the benchmark scenarios and print a table."""

from __future__ import annotations

import argparse
import json
import os
import platform

from rich.console import Console
from rich.table import Table

from emsbms.bench import decode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emsbms.bench")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    parser.add_argument("--frames", type=int, default=20_000)
    args = parser.parse_args(argv)
    console = Console()
    results = decode.run(frames=args.frames)
    table = Table(title=f"decode ({os.cpu_count()} cores, Python {platform.python_version()})")
    for col in ("profile", "compiled f/s", "adapter f/s", "decode_message f/s", "Message.decode f/s",
                "compiled ÷ decode_message", "adapter ÷ decode_message"):
        table.add_column(col, justify="right")
    for r in results:
        d = r.as_dict()
        table.add_row(r.profile, f"{r.compiled_fps:,.0f}", f"{r.adapter_fps:,.0f}",
                      f"{r.cantools_decode_message_fps:,.0f}", f"{r.cantools_message_decode_fps:,.0f}",
                      f"{d['ratio_compiled_vs_decode_message']}×", f"{d['ratio_adapter_vs_decode_message']}×")
    console.print(table)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"cores": os.cpu_count(), "decode": [r.as_dict() for r in results]}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
