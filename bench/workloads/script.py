"""A Python workload for bench/run: what a data-munging script does — parse and build JSON,
dicts of objects, string formatting, regular expressions, sorting.  Deterministic (fixed
seed); under a second with CPython 3.11 on a 2-core VM.  Argument: rounds (default 2).

SPDX-License-Identifier: MIT OR Apache-2.0
"""
import collections
import json
import random
import re
import sys


class Record:
    __slots__ = ("ident", "name", "tags", "score")

    def __init__(self, ident, name, tags, score):
        self.ident = ident
        self.name = name
        self.tags = tags
        self.score = score

    def as_dict(self):
        return {"id": self.ident, "name": self.name, "tags": list(self.tags), "score": self.score}


WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo"]


def make_records(rng, n):
    out = []
    for i in range(n):
        name = "-".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))
        tags = {rng.choice(WORDS)[: rng.randint(2, 6)] for _ in range(rng.randint(1, 6))}
        out.append(Record(i, name, tags, rng.random() * 100))
    return out


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    rng = random.Random(1234)
    pattern = re.compile(r"(\w+)-(\w+)(?:-(\w+))?")
    total = 0
    for _ in range(rounds):
        records = make_records(rng, 15000)
        text = json.dumps([r.as_dict() for r in records])
        loaded = json.loads(text)
        by_tag = collections.defaultdict(list)
        for item in loaded:
            for tag in item["tags"]:
                by_tag[tag].append(item["id"])
        counts = collections.Counter()
        for item in loaded:
            m = pattern.match(item["name"])
            if m:
                counts[m.group(1)] += 1
        lines = ["%6d %-40s %8.3f" % (r.ident, r.name, r.score) for r in records]
        lines.sort(key=lambda s: s.split()[1])
        total += len(text) + sum(len(v) for v in by_tag.values()) + len(counts) + len(lines)
    print("script: checksum", total)


if __name__ == "__main__":
    main()
