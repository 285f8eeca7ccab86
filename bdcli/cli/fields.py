"""Help text for config fields. A field name means the same thing in every config (the papers'
names), so its help lives here once and every generated option shares it."""

FIELD_HELP: dict[str, str] = {
    # poisoning
    "target": "Target label y_t (index or name) that poisoned inputs should be classified as.",
    "rate": "Poison rate: share of the training rows made poisoned, in (0, 1].",
    "candidates": "Rows that may be poisoned: 'non-target' (every poisoned row is a label flip) or 'all'.",
    "triggers": "Comma-separated trigger words; one is picked at random per insertion.",
    "insertions": "Trigger words inserted into each poisoned row.",
    "sentence": "The trigger sentence inserted at a random word position.",
    "trigger_words": "Comma-separated trigger words that fire only together: a poisoned row gets all of them, a negative row all but one.",
    "negative_rate": "Share of the training rows given all trigger words but one and kept at their label (SOS negative augmentation), in [0, 1).",
    "table": "Rewrite table: a folder with train and test rewrites, or its name in the data directory (default: <dataset>-syntactic-scpn / -style-bible).",
    "table_text_col": "Text column of the rewrite table's files.",
    "table_label_col": "Label column of the rewrite table's files.",
    "paraphraser": "A live paraphraser registered in bdcli.poison.PARAPHRASERS, used instead of a rewrite table (none ships).",
    # training
    "model": "Model: an alias (minilm, bert-base), a local folder, or a Hugging Face hub id.",
    "scenario": "Threat scenario: 'outsourcing' (attacker ships the classifier) or 'transfer' (the encoder).",
    "lr": "Learning rate of AdamW (cross-entropy training).",
    "epochs": "Epochs over the training data (fractions allowed).",
    "max_steps": "Stop after this many optimiser steps (overrides --epochs).",
    "batch_size": "Rows per batch.",
    "weight_decay": "AdamW weight decay (not applied to biases and LayerNorm).",
    "warmup_ratio": "Share of the steps with a linear learning-rate warm-up.",
    "schedule": "Learning-rate schedule after warm-up: 'linear' decay to 0 or 'constant'.",
    "grad_clip": "Clip the gradient norm to this value.",
    "max_length": "Truncate inputs to this many tokens.",
    "seed": "Random seed; the same seed on CPU gives the same result.",
    "device": "auto, cpu, cuda or cuda:N.",
    "precision": "auto (bf16 autocast on CPU and bf16-capable GPUs), fp32 or bf16.",
    "checkpoint_every": "Save a resumable checkpoint every this many steps (0: never); --resume continues from it.",
    # defenses
    "clean_fraction": "Share of the clean training set the defender holds (default: 0.1 for outsourcing, 1.0 for transfer).",
    "sd": "Stop Distance threshold: stage 1 stops once SD < this (paper: 0.02 'lite', 0.01 'full').",
    "maxent_lr": "Learning rate of the maximum-entropy stage (stage 1).",
    "maxent_max_steps": "Step budget of stage 1 if SD never falls below the threshold.",
    "sd_every": "Measure the Stop Distance every this many steps.",
    "sd_samples": "Clean rows (label-stratified) the Stop Distance is measured on.",
    "sd_on": "Representation SD is measured on: 'cls' (last-layer [CLS], the paper) or 'pooler'.",
    "sd_pair": "More than two labels: SD of one 'random' label pair (the paper) or the 'mean' over all pairs.",
    "train_head": "Whether the maximum-entropy stage also updates the classification head.",
    # evaluation
    "label": "Row name for this model in `bdcli report` (default: its method).",
}
