"""python -m specviz.observe FILE... [--json] [--html report.html] [--watch URL]

A table per source (engine, scope, k, steps, drafted, accepted, acceptance rate, mean acceptance length,
per-position rates, which values were derived), or with --json a JSON list of records (the contract: engine,
drafted, accepted, steps, mean_acceptance_length and per_position on every record, null where the record neither
gives nor implies them). Files stream, so a server log of millions of lines reads in constant memory; the table
shows the first --rows records of each source. --watch polls a Prometheus endpoint and prints a record per
interval from vLLM's counter deltas. Exit code: 0 when a record was read, 1 when none, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from specviz.engine.acceptance import BadRecord
from specviz.observe import prometheus
from specviz.observe.reader import ReadStats, iter_path
from specviz.observe.report import html_report, text_table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m specviz.observe", description=__doc__.split("\n\n")[1])
    p.add_argument("files", nargs="*", help="logs, JSON / JSON Lines responses, Prometheus text, bench CSVs, traces")
    p.add_argument("--json", action="store_true", help="print a JSON list of records instead of tables")
    p.add_argument("--html", default=None, help="also write a self-contained HTML report to this file")
    p.add_argument("--rows", type=int, default=20, help="records shown per source in the table (default 20)")
    p.add_argument("--max-bytes", type=int, default=None, help="refuse files larger than this (default by kind)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--watch", default=None, metavar="URL", help="poll this /metrics URL (vLLM counters)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between polls with --watch")
    p.add_argument("--polls", type=int, default=0, help="stop after this many polls (0: until interrupted)")
    return p


def summary_line(stats: ReadStats) -> str:
    if stats.error:
        return stats.error
    line = f"{stats.records} records from {stats.lines} lines ({stats.kind}); {stats.skipped} lines were not records"
    if stats.rejected:
        line += f"; {stats.rejected} records refused"
    return line


def read_files(args: argparse.Namespace, out: TextIO) -> int:
    sections = []
    total = 0
    if args.json:
        out.write("[")
    for name in args.files:
        stats = ReadStats(name=name)
        shown = []
        for record in iter_path(name, stats, progress=not args.quiet and sys.stderr.isatty(), max_bytes=args.max_bytes):
            if args.json:
                out.write(("," if total else "") + "\n" + json.dumps(record.to_dict()))
            if len(shown) < args.rows:
                shown.append(record)
            total += 1
        notes = [summary_line(stats)] + stats.messages
        if stats.rejected > len(stats.messages):
            notes.append(f"... and {stats.rejected - len(stats.messages)} more refused")
        sections.append((name, shown, notes))
        if not args.json:
            out.write(f"\n== {name}\n")
            if shown:
                out.write(text_table(shown) + "\n")
                if stats.records > len(shown):
                    out.write(f"(first {len(shown)} of {stats.records} records; --json gives all)\n")
            for note in notes:
                out.write(note + "\n")
        else:
            for note in notes:
                print(f"{name}: {note}", file=sys.stderr)
    if args.json:
        out.write("\n]\n")
    elif total:
        out.write("\n* derived from the record's other values (docs/observe.md)\n")
    if args.html:
        Path(args.html).write_text(html_report(sections))
    return 0 if total else 1


def watch(args: argparse.Namespace, out: TextIO) -> int:
    watcher = prometheus.Watcher()
    polls = 0
    while True:
        polls += 1
        try:
            text = prometheus.fetch(args.watch)
            records = watcher.update(text, time=time.strftime("%Y-%m-%d %H:%M:%S"))
        except (OSError, ValueError, BadRecord) as exc:
            print(f"poll {polls}: {exc}", file=sys.stderr)
            records = []
        for record in records:
            if args.json:
                out.write(json.dumps(record.to_dict()) + "\n")
            else:
                out.write(text_table([record]).splitlines()[-1] + "\n")
        out.flush()
        if args.polls and polls >= args.polls:
            return 0
        time.sleep(args.interval)


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    if not args.files and not args.watch:
        print("give files to read, or --watch URL", file=sys.stderr)
        return 2
    if args.watch:
        try:
            return watch(args, out)
        except KeyboardInterrupt:
            return 0
    return read_files(args, out)


if __name__ == "__main__":
    sys.exit(main())
