"""Fail when a built page loads a script, stylesheet or font from the web (the site must work
offline). Usage: python docs/check_offline.py docs/_build/html"""

import pathlib
import re
import sys

REMOTE = re.compile(r'<(?:script|link)\b[^>]*\b(?:src|href)="(?:https?:)?//[^"]*"')


def main(folder):
    bad = [
        (str(page), tag)
        for page in sorted(pathlib.Path(folder).rglob("*.html"))
        for tag in REMOTE.findall(page.read_text(encoding="utf-8"))
    ]
    if bad:
        sys.exit(
            f"{len(bad)} tag(s) load files from the web, e.g. {bad[0]}; the site must work offline"
        )
    print(f"offline check: no page of {folder} loads anything from the web")


if __name__ == "__main__":
    main(sys.argv[1])
