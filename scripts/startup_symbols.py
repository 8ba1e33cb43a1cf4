#!/usr/bin/env python3
"""Names the functions of the tandem binary that a run executed.

Usage: startup_symbols.py LINK_MAP TRACE... > sidecar/link/startup-symbols.txt

Each TRACE is the log of `valgrind --tool=lackey --trace-superblocks=yes`: the address of every
block of code run, in order. The release binary is stripped, so the link map written by the same
build (LLD's -Map) says which input section, and so which function, holds each address. The
output lists one symbol per line in the order the code first ran, the first trace's first.
"""
import bisect
import re
import sys

SECTION = re.compile(r"^\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+\s+\S.*:\(\.text\.?[^)]*\)$")
SYMBOL = re.compile(r"^\s*([0-9a-f]+)\s+[0-9a-f]+\s+[0-9a-f]+\s+\d+\s+(\S+)$")


def text_sections(map_path):
    """(start, end, symbol) for every input .text section that defines a symbol."""
    sections = []
    current = None
    with open(map_path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            line = line.rstrip("\n")
            section = SECTION.match(line)
            if section:
                start, size = int(section.group(1), 16), int(section.group(2), 16)
                current = [start, start + size, None] if size else None
                if current:
                    sections.append(current)
                continue
            symbol = SYMBOL.match(line)
            if symbol and current is not None and current[2] is None:
                current[2] = symbol.group(2)
            elif not symbol:
                current = None
    return sorted((s for s in sections if s[2]), key=lambda s: s[0])


def traced_addresses(trace_path):
    with open(trace_path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if line.startswith("SB "):
                yield int(line[3:], 16)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sections = text_sections(sys.argv[1])
    starts = [s[0] for s in sections]
    seen = set()
    for trace in sys.argv[2:]:
        for address in traced_addresses(trace):
            i = bisect.bisect_right(starts, address) - 1
            if i < 0 or address >= sections[i][1]:
                continue
            symbol = sections[i][2]
            if symbol not in seen:
                seen.add(symbol)
                print(symbol)
    if not seen:
        sys.exit("no traced address falls inside the map's .text sections")


if __name__ == "__main__":
    main()
