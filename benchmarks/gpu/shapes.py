"""Job shapes for whole-command benchmarks (issues 12, 23), the same rows for vbatch and offline.

  decode   2,000 rows, ~90-token prompts, 1,024 output tokens: the GPU's decode work
  prefix   16,000 rows, ~1k-token prompts of which ~950 tokens are one shared few-shot block,
           8 output tokens: prefill and the engine loop, with prefix caching to gain
  chat     16,000 multi-turn chats (2-4 user turns, ~250 tokens of text), 64 output tokens
  short    40,000 rows, ~50-token prompts, 16 output tokens: labelling, the engine loop
  long     1,500 rows, ~4.5k-token prompts, each its own (no shared prefix), 32 output tokens:
           prefill-bound, where replicas compete for the GPU's compute
  n4       4,000 rows, ~50-token prompts, 4 completions of 128 tokens each (``n`` = 4):
           parallel sampling, one prefill shared by four sequences

Sized so that each side of a shape runs one to three minutes on an H200 with the ~1B shape.

Word counts are chosen for the SmolLM2/Llama BPE of benchmarks/gpu's model shapes (~1.3 tokens a
word); the runs report the tokens the server counted. Deterministic (a fixed seed), so two runs
and both sides send exactly the same rows.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORDS = """the of and to in is was that for it with as on be at by this had not are but from or
have an they which one you were her all she there would their we him been has when who will more
no if out so said what up its about into than them can only other new some could time these two
may then do first any my now such like our over man me even most made after also did many before
must through back years where much your way well down should because each just those people how
too little state good very make world still own see men work long get here between both life
being under never day same another know while last might us great old year off come since against
go came right used take three states himself few house use during without again place around home
small found thought went say part once general high upon school every does got left number course
war until always away something fact though water less public put think almost hand enough far
took head yet system better set told nothing night end why called eyes find going look asked later
knew point next city business give group toward young let room side social given present several
order national possible rather second face per among form important often things looked early
white case become large big need four within felt along children saw best church ever least power
light seemed family interest want members others mind country area done turn help open certain
river garden window morning evening music paper story science history language market energy
""".split()  # noqa: SIM905 - a paragraph reads better than 250 quoted words
LABELS = ["positive", "negative", "neutral", "question", "complaint", "praise"]


@dataclass(frozen=True)
class Shape:
    rows: int
    max_tokens: int
    words: tuple[int, int]  # a row's own text, in words
    chat: bool = False
    prefix_words: int = 0  # a few-shot block shared by every row
    n: int = 1  # completions per row


SHAPES = {
    "decode": Shape(2000, 1024, (60, 90)),
    "prefix": Shape(16000, 8, (50, 80), prefix_words=780),
    "chat": Shape(16000, 64, (40, 80), chat=True),
    "short": Shape(40000, 16, (25, 50)),
    "long": Shape(1500, 32, (4300, 4700)),  # ~1.0 token a word here: past 4,096, the 8k bucket
    "n4": Shape(4000, 128, (25, 50), n=4),
}


def _text(rng: random.Random, lo: int, hi: int) -> str:
    words = rng.choices(WORDS, k=rng.randint(lo, hi))
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def _few_shot(words: int) -> str:
    rng = random.Random(7)
    parts, n = [], 0
    while n < words:
        text = _text(rng, 20, 40)
        n += len(text.split()) + 2
        parts.append(f"Text: {text}\nLabel: {rng.choice(LABELS)}")
    return "Label each text.\n\n" + "\n\n".join(parts) + "\n\n"


def rows(name: str, seed: int = 1234) -> list[dict[str, Any]]:
    """The shape's rows as vbatch input (``prompt`` or ``messages``), ids 0..n-1."""
    shape = SHAPES[name]
    rng = random.Random(seed)
    prefix = _few_shot(shape.prefix_words) if shape.prefix_words else ""
    out: list[dict[str, Any]] = []
    for i in range(shape.rows):
        if shape.chat:
            turns = rng.randint(2, 4)
            messages: list[dict[str, str]] = []
            for t in range(turns):
                messages.append({"role": "user", "content": _text(rng, *shape.words)})
                if t < turns - 1:
                    messages.append({"role": "assistant", "content": _text(rng, 15, 40)})
            out.append({"id": i, "messages": messages})
        elif prefix:
            out.append({"id": i, "prompt": f"{prefix}Text: {_text(rng, *shape.words)}\nLabel:"})
        else:
            out.append({"id": i, "prompt": f"Row {i}. {_text(rng, *shape.words)}\nAnswer:"})
    return out


def write_input(name: str, path: Path, limit: int | None = None) -> Path:
    with open(path, "w") as f:
        for row in rows(name)[:limit]:
            f.write(json.dumps(row) + "\n")
    return path


if __name__ == "__main__":
    for name, shape in SHAPES.items():
        rs = rows(name)
        words = [
            sum(len(m["content"].split()) for m in r["messages"])
            if "messages" in r
            else len(r["prompt"].split())
            for r in rs
        ]
        print(name, shape, f"mean words {sum(words) / len(words):.0f}, max {max(words)}")
