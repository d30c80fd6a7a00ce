"""Regenerate man/pgcopy.1 from pgcopy.cli.build_parser() with argparse-manpage.

python man/build.py          # rewrite man/pgcopy.1
python man/build.py --check  # exit 1 when the committed page is stale
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "man" / "pgcopy.1"


def render() -> str:
    os.environ["COLUMNS"] = "80"  # argparse wraps help text to the terminal width
    sys.path.insert(0, str(ROOT))
    from argparse_manpage.manpage import Manpage

    from pgcopy import __version__
    from pgcopy.cli import build_parser

    data = {
        "project_name": "pgcopy",
        "version": __version__,
        "manual_title": "pgcopy manual",
        "date": "2026-11-23",
        "url": "https://pypi.org/project/pgcopy-cli/",
        "description": "copy all the data of one PostgreSQL database into another",
        "include": str(ROOT / "man" / "sections.txt"),
    }
    parser = build_parser()
    # exit codes have their own section here; --help keeps them in its epilog
    parser.epilog = None
    return str(Manpage(parser, _data=data))


def main() -> int:
    page = render()
    if "--check" in sys.argv:
        if not PAGE.exists() or PAGE.read_text() != page:
            print("man/pgcopy.1 is stale: run python man/build.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
