"""Trigger words as the model sees them: token ids, and a warning when the tokenizer splits a word
into several pieces (embedding-level attacks then touch every piece, and rare-word triggers lose the
property of being one rare token)."""

from __future__ import annotations


def trigger_token_ids(tokenizer, words: list[str] | tuple[str, ...]) -> tuple[list[list[int]], list[str]]:
    """Token ids of each trigger word (no special tokens), and one warning per word split into pieces."""
    ids: list[list[int]] = []
    warnings: list[str] = []
    for word in words:
        pieces = tokenizer.tokenize(word)
        ids.append(tokenizer.convert_tokens_to_ids(pieces))
        if len(pieces) != 1:
            warnings.append(f"trigger {word!r} is split by the tokenizer into {len(pieces)} pieces {pieces}")
    return ids, warnings
