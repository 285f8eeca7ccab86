"""Tokenise once, then batch rows of similar length and pad each batch to its longest row.

SST-2's sentences are short and uneven; padding to a fixed length would spend most compute on pads.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..data.dataset import TextDataset


@dataclass
class Encoded:
    input_ids: list[list[int]]
    labels: list[int]
    pad_id: int
    # Only for sentence pairs; single sentences use BERT's default of all zeros.
    token_type_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(tokenizer, data: TextDataset, max_length: int) -> Encoded:
    if data.text_b is not None:
        enc = tokenizer(data.texts, data.text_b, truncation=True, max_length=max_length)
        types = list(enc["token_type_ids"]) if "token_type_ids" in enc else None
    else:
        enc = tokenizer(data.texts, truncation=True, max_length=max_length)
        types = None
    return Encoded(list(enc["input_ids"]), list(data.labels), tokenizer.pad_token_id or 0, types)


def collate(enc: Encoded, rows: list[int], device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(enc.input_ids[i]) for i in rows)
    ids = torch.full((len(rows), width), enc.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, i in enumerate(rows):
        seq = enc.input_ids[i]
        ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = 1
    labels = torch.tensor([enc.labels[i] for i in rows], dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if enc.token_type_ids is not None:
        types = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            types[r, : len(enc.token_type_ids[i])] = torch.tensor(enc.token_type_ids[i])
        batch["token_type_ids"] = types
    return to_device(batch, device)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """On a GPU, copy from pinned memory without blocking, so the host builds the next batch while the
    GPU still works on this one (the copy is ordered on the stream before any kernel that reads it)."""
    if device.type != "cuda":
        return batch
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def eval_batches(enc: Encoded, batch_size: int) -> list[list[int]]:
    """Length-sorted batches for inference; callers scatter results back by row index."""
    order = sorted(range(len(enc)), key=lambda i: len(enc.input_ids[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def train_batches(enc: Encoded, batch_size: int, rng: random.Random, pool: int = 50) -> list[list[int]]:
    """One epoch of shuffled batches, each drawn from rows of similar length.

    Rows are shuffled, cut into pools of ``pool`` batches, sorted by length inside each pool, then the
    batches are shuffled: batch contents stay random across epochs while padding stays small.
    """
    order = list(range(len(enc)))
    rng.shuffle(order)
    span = batch_size * pool
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: len(enc.input_ids[i]))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches
