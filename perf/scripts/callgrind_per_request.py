#!/usr/bin/env python3
"""Self cost per function in a callgrind dump, divided by a request count.

Usage: callgrind_per_request.py CALLGRIND_OUT REQUESTS [TOP]
The dump must be written with --compress-strings=no --compress-pos=no.
"""
import collections
import sys


def self_costs(path):
    costs = collections.Counter()
    fn = None
    after_calls = False
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if line.startswith("fn="):
            fn, after_calls = line[3:], False
        elif line.startswith("calls="):
            # The next cost line is the inclusive cost of that call, not this function's own.
            after_calls = True
        elif line and (line[0].isdigit() or line[0] in "+-*"):
            if after_calls:
                after_calls = False
                continue
            parts = line.split()
            if len(parts) >= 2 and fn:
                costs[fn] += int(parts[1])
    return costs


def main():
    path, requests = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    costs = self_costs(path)
    total = sum(costs.values())
    print(f"instructions per request: {total / requests:.0f}")
    for name, c in costs.most_common(top):
        print(f"{c / requests:9.0f}  {100 * c / total:5.1f}%  {name[:140]}")


if __name__ == "__main__":
    main()
