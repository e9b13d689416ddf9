"""Regenerate README's benchmark tables from ``benchmarks/results/*.md``.

Each table in README sits between two markers; NAME is the stem of a results file::

    <!-- results:NAME -->                      every table of results/NAME.md
    <!-- results:NAME table=2 -->              only its second table
    <!-- results:NAME columns=M;DQN fit s -->  only these columns (headers as in the file)
    ...generated...
    <!-- /results:NAME -->

Usage::

    python benchmarks/make_readme_tables.py           # rewrite README.md in place
    python benchmarks/make_readme_tables.py --check   # exit 1 if README is out of date

Only the text between the markers changes; the prose around the tables is written by hand.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"

MARKER = re.compile(
    r"(?P<open><!-- results:(?P<name>[\w.-]+)(?P<opts>[^>]*?)\s*-->)\n"
    r"(?P<body>.*?)"
    r"(?P<close><!-- /results:(?P=name) -->)",
    re.DOTALL,
)
OPTION = re.compile(r"(\w+)=((?:(?!\s\w+=).)+)")


def markdown_tables(text):
    """The markdown tables of ``text``: lists of consecutive lines that start with ``|``."""
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line.rstrip())
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def select_columns(table, columns):
    """Keep the columns whose header is in ``columns`` (in that order)."""
    header = _cells(table[0])
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"columns {missing} are not in the table header {header}")
    idx = [header.index(c) for c in columns]
    out = []
    for i, line in enumerate(table):
        cells = _cells(line)
        if i == 1:  # the |---| separator
            out.append("|" + "---|" * len(idx))
        else:
            out.append("| " + " | ".join(cells[j] for j in idx) + " |")
    return out


def parse_options(opts):
    options = dict(OPTION.findall(opts.strip()))
    unknown = set(options) - {"table", "columns"}
    if unknown:
        raise ValueError(f"unknown marker options {sorted(unknown)} (use table= and columns=)")
    return options


def render(name, opts, results_dir=RESULTS):
    """The generated text for one marker (tables separated by blank lines)."""
    path = Path(results_dir) / f"{name}.md"
    if not path.is_file():
        raise ValueError(f"README marker results:{name} has no file {path}")
    tables = markdown_tables(path.read_text(encoding="utf-8"))
    options = parse_options(opts)
    if "table" in options:
        k = int(options["table"])
        if not 1 <= k <= len(tables):
            raise ValueError(f"{path.name} has {len(tables)} tables; table={k} does not exist")
        tables = [tables[k - 1]]
    if "columns" in options:
        columns = [c.strip() for c in options["columns"].split(";")]
        tables = [select_columns(t, columns) for t in tables]
    return "\n\n".join("\n".join(t) for t in tables)


def regenerate(text, results_dir=RESULTS):
    """``text`` with every marked block regenerated."""

    def replace(m):
        body = render(m.group("name"), m.group("opts"), results_dir)
        return f"{m.group('open')}\n\n{body}\n\n{m.group('close')}"

    return MARKER.sub(replace, text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that README is in sync")
    ap.add_argument("--readme", default=str(README))
    args = ap.parse_args(argv)
    path = Path(args.readme)
    text = path.read_text(encoding="utf-8")
    new = regenerate(text)
    n = len(MARKER.findall(text))
    if args.check:
        if new != text:
            print(f"{path} is out of date: run python benchmarks/make_readme_tables.py")
            return 1
        print(f"{path}: {n} tables in sync")
        return 0
    if new != text:
        path.write_text(new, encoding="utf-8")
    print(f"{path}: {n} tables regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
