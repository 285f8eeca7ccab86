"""The prompt-style classifier GBA adapts (Gradient Broadcast Adaptation, section 3.3).

The encoder reads ``x_prompt = [CLS] x [SEP] [a]^k [MASK] [a]^(w-k)`` (pairs: ``[CLS] x1 [SEP] x2 [SEP]
...``), where the ``w`` soft template tokens ``[a]`` are learnable vectors fed through
``inputs_embeds``; ``k = ceil(w/2)`` of them come before [MASK] and the rest after it (the paper brackets
[MASK] with ``[a]*`` on both sides and calls ``w`` the template's width; it does not say how a width
splits, so bdcli splits it evenly, the odd one before [MASK]). The [MASK] position's last hidden state
``h`` is scored against the WHOLE word-embedding matrix ``E`` with temperature ``T`` (eq. 1):

    p(w | x) = exp(E_w . h / T) / sum_{w' in V} exp(E_w' . h / T)

and class ``c`` is its class token (verbalizer) ``F(c)``: the model's ``logits`` are ``log p(F(c) | x)``,
log-probabilities over the whole vocabulary, so their softmax is the class tokens' probabilities
renormalised among themselves and their argmax is the paper's prediction.

By default ``h`` is scored directly against the tied input embeddings ``E``: no masked-LM transform,
no decoder bias. That is what eq. 1 writes (``w_F(y)`` is "the parameter weight for the class token y in
the word embeddings"), and the packaged MiniLM, like every classifier bdcli saves, has no masked-LM head
to use. With an ``mlm_head`` (``models/mlm_head.py``: BERT's dense + activation + LayerNorm, the decoder
tied to ``E``, a per-token bias) the scores are ``(E . t(h) + b) / T``, a masked LM's prediction at
[MASK], as in the prompt-based fine-tuning GBA builds on (Gao et al. 2021).

Saved form (``save_pretrained``): the encoder as a plain ``transformers`` folder (``config.json`` +
``model.safetensors``, loadable with ``AutoModel`` and no bdcli), whose config carries the prompt under
``bdcli_prompt`` (class tokens and their ids, width, split, temperature), and the template vectors in
``prompt_template.safetensors`` (tensor ``template``, shape ``[width, hidden]``); a model with a
masked-LM head is format 2 and holds the head's own tensors in ``prompt_mlm_head.safetensors`` (an
older bdcli refuses the format rather than score without the head). ``load_classifier``
recognises the marker and returns this wrapper; nothing is unpickled and no remote code runs.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..errors import BdcliError

PROMPT_KEY = "bdcli_prompt"
TEMPLATE_FILE = "prompt_template.safetensors"
PROMPT_FORMAT = 1  # scored against E alone
PROMPT_FORMAT_HEAD = 2  # scored through a masked-LM head


@dataclass
class PromptOutput:
    # log p(F(c) | x) over the whole vocabulary, one column per label: [batch, labels]
    logits: torch.Tensor
    # log p(w | x) for every vocabulary row w (eq. 1), fp32: [batch, vocab]
    vocab_logprobs: torch.Tensor
    # The word embeddings of the tokenised input, before the template is spliced in: [batch, len, hidden].
    # A non-leaf of the graph, so that a hook can read the gradient each input token receives.
    word_embeds: torch.Tensor
    # Positions of x's own tokens (no [CLS]/[SEP]/padding): x_input of eq. 4. [batch, len], bool
    text_mask: torch.Tensor


def class_token_ids(tokenizer, tokens: Sequence[str]) -> list[int]:
    """One vocabulary id per class token; a token the tokenizer splits or does not know is an error,
    because a verbalizer scores exactly one row of E per class."""
    ids = []
    unk = getattr(tokenizer, "unk_token_id", None)
    for tok in tokens:
        pieces = tokenizer.tokenize(tok)
        if len(pieces) != 1:
            raise BdcliError(
                f"class token {tok!r} is split by the tokenizer into {pieces}; a verbalizer needs one vocabulary "
                "token per class: pick another word (--class-tokens)"
            )
        tid = tokenizer.convert_tokens_to_ids(pieces[0])
        if tid is None or (unk is not None and tid == unk):
            raise BdcliError(f"class token {tok!r} is not in the model's vocabulary; pick another word (--class-tokens)")
        ids.append(int(tid))
    if len(set(ids)) != len(ids):
        raise BdcliError(f"class tokens {list(tokens)} map to the same vocabulary entry; each class needs its own")
    return ids


def sample_template(encoder: nn.Module, tokenizer, width: int, seed: int) -> torch.Tensor:
    """Initial template vectors: copies of the embeddings of seeded random whole-word vocabulary tokens,
    Lester et al. (2021)'s 'sampled vocabulary' initialisation (GBA does not say how it initialises its
    template). Falls back to the embeddings' own scale of noise for a vocabulary with no plain words."""
    E = encoder.get_input_embeddings().weight
    words = sorted(i for t, i in tokenizer.get_vocab().items() if t.isascii() and t.isalpha() and i < E.shape[0])
    rng = random.Random(f"{seed}-gba-template")
    if len(words) >= width:
        return E.detach()[rng.sample(words, width)].clone()
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(width, E.shape[1], generator=gen) * float(E.detach().std())


class PromptClassifier(nn.Module):
    """A BERT-like encoder read through a soft prompt and a verbalizer (see the module docstring).

    ``forward`` takes what bdcli's batching produces for a classifier (right-padded ``input_ids``,
    ``attention_mask``, optional ``token_type_ids`` of the tokenised ``[CLS] x [SEP]``) and splices the
    template and [MASK] in after each row's last token, so every bdcli tool that runs classifiers runs it.
    """

    def __init__(
        self,
        encoder: nn.Module,
        class_ids: Sequence[int],
        *,
        mask_token_id: int,
        special_ids: Sequence[int],
        template: torch.Tensor,
        temperature: float = 1.0,
        class_tokens: Sequence[str] | None = None,
        mlm_head: nn.Module | None = None,
    ):
        super().__init__()
        if temperature <= 0 or not math.isfinite(temperature):
            raise BdcliError(f"the prompt temperature must be a positive number, got {temperature}")
        self.encoder = encoder
        hidden = encoder.get_input_embeddings().weight.shape[1]
        if template.ndim != 2 or template.shape[1] != hidden:
            raise BdcliError(f"the soft template must be [width, {hidden}], got {list(template.shape)}")
        self.template = nn.Parameter(template.detach().clone().float())
        self.temperature = float(temperature)
        self.mask_token_id = int(mask_token_id)
        self.special_ids = [int(i) for i in special_ids]
        self.class_tokens = list(class_tokens) if class_tokens is not None else [str(i) for i in class_ids]
        self.mlm_head = mlm_head
        self.register_buffer("class_ids", torch.tensor(list(class_ids), dtype=torch.long), persistent=False)
        self.register_buffer("_special", torch.tensor(self.special_ids, dtype=torch.long), persistent=False)

    # --- what the rest of bdcli reads off a classifier -------------------------------------------
    @property
    def width(self) -> int:
        return self.template.shape[0]

    @property
    def before_mask(self) -> int:
        return (self.width + 1) // 2

    @property
    def config(self):
        return self.encoder.config

    @property
    def base_model(self) -> nn.Module:
        return self.encoder

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()

    # --- the prompt --------------------------------------------------------------------------------
    def _prompt(self, input_ids, attention_mask, token_type_ids):
        B, L = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if L > 1 and bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
            raise BdcliError("the prompt model needs right-padded inputs (real tokens first, then padding)")
        w, k = self.width, self.before_mask
        limit = getattr(self.config, "max_position_embeddings", None)
        if limit is not None and L + w + 1 > limit:
            raise BdcliError(
                f"inputs of {L} tokens plus the {w}-token template and [MASK] exceed the model's {limit} positions; "
                f"lower --max-length to at most {limit - w - 1}"
            )
        E = self.word_embeddings
        word = E(input_ids)  # [B, L, d]: the tensor whose gradient GBA broadcasts
        lens = attention_mask.long().sum(1)  # [B]
        Lp = L + w + 1
        # rel < 0: the row's own tokens; 0..w: [a]^k [MASK] [a]^(w-k); > w: padding.
        rel = torch.arange(Lp, device=input_ids.device)[None, :] - lens[:, None]
        mask_vec = E.weight[self.mask_token_id].to(word.dtype)
        tmpl = self.template.to(word.dtype)
        slots = torch.cat([tmpl[:k], mask_vec[None], tmpl[k:]], dim=0)  # [w+1, d]
        text = torch.cat([word, word.new_zeros(B, w + 1, word.shape[2])], dim=1)
        embeds = torch.where((rel < 0)[..., None], text, slots[rel.clamp(0, w)])
        embeds = embeds * (rel <= w)[..., None].to(embeds.dtype)  # padding slots hold zeros (masked anyway)
        mask = (rel <= w).long()
        types = None
        if token_type_ids is not None:
            last = token_type_ids.gather(1, (lens - 1).clamp(min=0)[:, None])  # the template joins x's last segment
            types = torch.cat([token_type_ids, token_type_ids.new_zeros(B, w + 1)], dim=1)
            types = torch.where((rel >= 0) & (rel <= w), last, types) * mask
        text_mask = attention_mask.bool() & ~torch.isin(input_ids, self._special)
        return embeds, mask, types, lens + k, word, text_mask

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> PromptOutput:
        embeds, mask, types, mask_pos, word, text_mask = self._prompt(input_ids, attention_mask, token_type_ids)
        kwargs = {"inputs_embeds": embeds, "attention_mask": mask}
        if types is not None:
            kwargs["token_type_ids"] = types
        hidden = self.encoder(**kwargs).last_hidden_state
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), mask_pos]  # [B, d]
        # Eq. 1 in fp32 even under bf16 autocast: a softmax over 30k rows is where bf16 loses the most.
        with torch.autocast(device_type=h.device.type, enabled=False):
            if self.mlm_head is not None:
                scores = self.mlm_head(h.float()) / self.temperature
            else:
                scores = h.float() @ self.word_embeddings.weight.float().T / self.temperature
            logp = torch.log_softmax(scores, dim=-1)
        return PromptOutput(logp[:, self.class_ids], logp, word, text_mask)

    # --- saving ------------------------------------------------------------------------------------
    def prompt_record(self) -> dict:
        from .mlm_head import HEAD_FILE

        rec = {
            "format": PROMPT_FORMAT if self.mlm_head is None else PROMPT_FORMAT_HEAD,
            "class_tokens": self.class_tokens,
            "class_token_ids": self.class_ids.tolist(),
            "width": self.width,
            "before_mask": self.before_mask,
            "temperature": self.temperature,
            "mask_token_id": self.mask_token_id,
            "special_ids": self.special_ids,
            "template_file": TEMPLATE_FILE,
            "scoring": "h_[MASK] . E_w / T over the whole vocabulary, tied input embeddings, no MLM head (GBA eq. 1)",
        }
        if self.mlm_head is not None:
            rec["scoring"] = "(E_w . t(h_[MASK]) + b_w) / T over the whole vocabulary: BERT's masked-LM head, decoder tied to E"
            rec["mlm_head_file"] = HEAD_FILE
        return rec

    def save_pretrained(self, folder, safe_serialization: bool = True, **kwargs) -> None:
        from safetensors.torch import save_file

        if not safe_serialization:
            raise BdcliError("bdcli saves prompt models as safetensors only")
        folder = Path(folder)
        setattr(self.encoder.config, PROMPT_KEY, self.prompt_record())
        self.encoder.config.num_labels = len(self.class_tokens)
        self.encoder.save_pretrained(folder, safe_serialization=True, **kwargs)
        save_file({"template": self.template.detach().float().cpu().contiguous()}, str(folder / TEMPLATE_FILE))
        if self.mlm_head is not None:
            from .mlm_head import HEAD_FILE

            save_file(self.mlm_head.own_state(), str(folder / HEAD_FILE))


def build_prompt_classifier(
    encoder: nn.Module, tokenizer, class_tokens: Sequence[str], *, width: int, temperature: float, seed: int,
    mlm_head: nn.Module | None = None,
) -> PromptClassifier:
    """A fresh prompt classifier over ``encoder`` with a sampled template of ``width`` vectors (scored
    through ``mlm_head`` when one is given)."""
    if tokenizer.mask_token_id is None:
        raise BdcliError("the tokenizer has no [MASK] token, which the prompt model scores")
    ids = class_token_ids(tokenizer, class_tokens)
    return PromptClassifier(
        encoder,
        ids,
        mask_token_id=tokenizer.mask_token_id,
        special_ids=[i for i in (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id) if i is not None],
        template=sample_template(encoder, tokenizer, width, seed),
        temperature=temperature,
        class_tokens=class_tokens,
        mlm_head=mlm_head,
    )


def is_prompt_config(config) -> bool:
    return isinstance(getattr(config, PROMPT_KEY, None), dict)


def load_prompt_classifier(folder: Path, config, label_names: list[str] | None):
    """The ``LoadedModel`` of a folder written by ``PromptClassifier.save_pretrained``."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from .load import LoadedModel

    rec = getattr(config, PROMPT_KEY)
    if rec.get("format") not in (PROMPT_FORMAT, PROMPT_FORMAT_HEAD):
        raise BdcliError(f"{folder} holds a prompt model of unknown format {rec.get('format')!r}")
    tokens, ids = list(rec["class_tokens"]), [int(i) for i in rec["class_token_ids"]]
    if label_names is not None and len(label_names) != len(ids):
        raise BdcliError(f"model {folder} has {len(ids)} labels but the data has {len(label_names)} ({', '.join(label_names)})")
    path = folder / rec.get("template_file", TEMPLATE_FILE)
    if path.name != TEMPLATE_FILE or not path.is_file():
        raise BdcliError(f"{folder} is a prompt model but its soft template ({TEMPLATE_FILE}) is missing")
    template = load_file(str(path)).get("template")
    if template is None:
        raise BdcliError(f"{path} holds no 'template' tensor")
    if template.ndim != 2 or template.shape[0] != int(rec["width"]):
        raise BdcliError(f"{path} holds a template of shape {list(template.shape)}, not {rec['width']} vectors")
    if (template.shape[0] + 1) // 2 != int(rec.get("before_mask", (template.shape[0] + 1) // 2)):
        raise BdcliError(f"{folder} splits its template in a way this bdcli does not know")
    from .check import check_finite, check_loading_info, check_tokenizer_files, check_tokenizer_fits
    from .load import _LOAD_ERRORS, _first_line

    check_tokenizer_files(folder)
    try:
        encoder, info = AutoModel.from_pretrained(folder, config=config, use_safetensors=True, trust_remote_code=False,
                                                  local_files_only=True, ignore_mismatched_sizes=True,
                                                  output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    except _LOAD_ERRORS as e:
        raise BdcliError(f"cannot load prompt model {folder}: {_first_line(e)}") from None
    check_loading_info(str(folder), encoder, info, new_head=False)
    check_tokenizer_fits(str(folder), tokenizer, config)
    check_finite(str(folder), encoder)
    if class_token_ids(tokenizer, tokens) != ids:
        raise BdcliError(f"{folder}: the class tokens {tokens} do not match the saved vocabulary ids {ids}")
    encoder = encoder.float()
    head = None
    if rec["format"] == PROMPT_FORMAT_HEAD:
        from .mlm_head import HEAD_FILE, MlmHead

        head_path = folder / str(rec.get("mlm_head_file", ""))
        if head_path.name != HEAD_FILE or not head_path.is_file():
            raise BdcliError(f"{folder} is a prompt model scored through a masked-LM head, but the head ({HEAD_FILE}) is missing")
        head = MlmHead(config, encoder.get_input_embeddings())
        head.load_own_state(load_file(str(head_path)), str(head_path))
    model = PromptClassifier(
        encoder, ids, mask_token_id=int(rec["mask_token_id"]), special_ids=rec["special_ids"],
        template=template, temperature=float(rec["temperature"]), class_tokens=tokens, mlm_head=head,
    )
    n = len(ids)
    names = [config.id2label.get(i, str(i)) for i in range(n)] if getattr(config, "id2label", None) else [str(i) for i in range(n)]
    if label_names is not None and all(x == f"LABEL_{i}" for i, x in enumerate(names)):
        names = list(label_names)
    return LoadedModel(model, tokenizer, str(folder), new_head=False, label_names=names)
