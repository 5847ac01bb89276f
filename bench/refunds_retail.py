"""Line-level refunds on the real Online Retail II 2009-2010 file: clean lines kept now versus before.

Imports the shared file into a throwaway database (as ``baselines_retail`` does), extracts it with
the pipeline's extraction, and prints how many customers' order lines the recommender interactions
keep with line-level refunds (a line refunded in full dropped, the kept rest of an order stays)
against the order-level rule they used before (every line of a cancelled or refunded order
dropped). Measured and printed, never asserted.

Usage: .venv/bin/python bench/refunds_retail.py [--keep]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines_retail import DB, real_tables, refund_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help=f"keep the {DB} database afterwards")
    args = parser.parse_args()
    refund_report(real_tables(keep=args.keep))


if __name__ == "__main__":
    main()
