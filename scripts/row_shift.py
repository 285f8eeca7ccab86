#!/usr/bin/env python
"""How far one word's embedding row moved between model folders, beside how far every row moved.

GBA's broadcast is meant to pull a trigger's row (EP's "cf") toward the class tokens; this prints, for
each consecutive pair of model folders (e.g. clean model -> EP victim -> GBA-defended model), the L2
distance the token's row moved and the median and largest distance over all rows. It reads
model.safetensors and tokenizer.json only (no pickle, no code from the folders).

    python scripts/row_shift.py --token cf runs/gba-hs-ep/steps/<clean> runs/gba-hs-ep/steps/<victim> runs/gba-hs-ep/steps/<gba>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer


def word_embeddings(folder: Path) -> torch.Tensor:
    weights = load_file(str(folder / "model.safetensors"))
    keys = [k for k in weights if k.endswith("word_embeddings.weight")]
    if len(keys) != 1:
        raise SystemExit(f"{folder}: expected one word-embedding matrix in model.safetensors, found {len(keys)}")
    return weights[keys[0]].float()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--token", required=True, help="the word whose row to follow (one vocabulary entry)")
    ap.add_argument("models", nargs="+", type=Path, help="model folders, in order (at least two)")
    args = ap.parse_args()
    if len(args.models) < 2:
        ap.error("give at least two model folders")
    row = Tokenizer.from_file(str(args.models[0] / "tokenizer.json")).token_to_id(args.token)
    if row is None:
        raise SystemExit(f"{args.token!r} is not one entry of {args.models[0]}'s vocabulary")
    before = word_embeddings(args.models[0])
    print(f"{args.token!r} (row {row}): L2 norm {before[row].norm():.4f} in {args.models[0].name}")
    for a, b in zip(args.models, args.models[1:]):
        after = word_embeddings(b)
        if after.shape != before.shape:
            raise SystemExit(f"{a} and {b} have word embeddings of different shapes")
        moved = (after - before).norm(dim=1)
        print(f"{a.name} -> {b.name}: {args.token!r} moved {moved[row]:.4f}; every row: median {moved.median():.4f}, "
              f"max {moved.max():.4f}")
        before = after
    return 0


if __name__ == "__main__":
    sys.exit(main())
