"""Print a vbatch results file as a short table: id, then the text (or the error)."""

from __future__ import annotations

import json
import sys
import textwrap


def main(path: str) -> None:
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    for rec in sorted(records, key=lambda r: str(r["id"])):
        if rec["error"]:
            body = f"ERROR {rec['error']['code']}: {rec['error']['message']}"
        else:
            text = rec["text"] if isinstance(rec["text"], str) else " | ".join(rec["text"])
            tokens = rec["usage"]["completion_tokens"]
            body = f"{' '.join(text.split())}  [{rec['finish_reason']}, {tokens} tokens]"
        print(f"{rec['id']}:")
        print(textwrap.indent(textwrap.fill(body, 96), "    "))
    ok = sum(1 for r in records if not r["error"])
    print(f"\n{ok}/{len(records)} rows succeeded ({path})")


if __name__ == "__main__":
    main(sys.argv[1])
