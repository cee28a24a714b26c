"""``python -m cxr.data.datasets --markdown`` prints the generated tables of ``docs/datasets.md``;
``--write docs/datasets.md`` rewrites the page's generated block in place (after adding or changing a reader)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxr.data.datasets import READERS
from cxr.data.datasets.tables import generated_markdown, rewrite


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cxr.data.datasets", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the generated tables")
    group.add_argument("--write", type=Path, metavar="PAGE", help="rewrite the generated block of PAGE")
    args = parser.parse_args(argv)
    if args.markdown:
        print(generated_markdown(READERS), end="")
    else:
        args.write.write_text(rewrite(args.write.read_text(), READERS))


if __name__ == "__main__":
    main()
