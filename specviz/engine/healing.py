"""Token healing at the prompt boundary: the prompt's last token is backed off and the first generated
token must extend its text.

Why: byte-level BPE merges a newline with the indentation after it ('\\n   ' is one token), so a prompt
that ends in a bare '\\n' shows the model a token that, in training, is followed by a line at column 0.
A well-trained code model then writes end-of-text or a new top-level `def` after `def f(self):\\n`.
Healing lets it pick '\\n        ' instead. It happens once, before any method runs (`specviz.api`), so
every method decodes from the same healed prompt and greedy equality with the autoregressive
baseline holds; in sampling the first token is drawn from the target's distribution restricted to
the tokens that extend the removed text (renormalized), then processed as every other step.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

_TEXTS: "weakref.WeakKeyDictionary[object, list[str]]" = weakref.WeakKeyDictionary()
_EXTENSIONS: "weakref.WeakKeyDictionary[object, dict[tuple[str, int], tuple[int, ...]]]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Healing:
    kept_ids: list[int]  # the prompt without its last token
    removed_id: int
    removed_text: str
    allowed: tuple[int, ...]  # ids whose text starts with removed_text (the removed id among them)

    def record(self, healed_id: int) -> dict:
        """What Trace.meta["token_healing"] says of one row."""
        return {
            "removed_token": self.removed_id,
            "removed_text": self.removed_text,
            "allowed": len(self.allowed),
            "healed_token": healed_id,
        }


def token_texts(tokenizer) -> list[str]:
    """The text of every token id on its own (decoded once per tokenizer: a 150k vocabulary takes a second)."""
    texts = _TEXTS.get(tokenizer)
    if texts is None:
        texts = tokenizer.batch_decode(
            [[i] for i in range(len(tokenizer))], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        _TEXTS[tokenizer] = texts
    return texts


def extensions(tokenizer, texts: list[str], removed: str, vocab: int, special: set[int]) -> tuple[int, ...]:
    """Ids whose text starts with `removed`: a scan of the whole vocabulary, so kept per tokenizer and text
    (a prompt usually ends in one of a few tokens; 150k texts take tens of ms to scan)."""
    cache = _EXTENSIONS.setdefault(tokenizer, {})
    key = (removed, vocab)
    if key not in cache:
        cache[key] = tuple(i for i, text in enumerate(texts[:vocab]) if i not in special and text.startswith(removed))
    return cache[key]


def plan(tokenizer, ids: list[int], vocab: int) -> Healing | None:
    """The healing of a prompt, or None when there is nothing to heal: a one-token prompt, a special or
    partial-character last token, or a last token no other token extends."""
    if len(ids) < 2:
        return None
    last = ids[-1]
    special = set(tokenizer.all_special_ids)
    texts = token_texts(tokenizer)
    if last in special or last >= len(texts):
        return None
    removed = texts[last]
    if not removed or "\ufffd" in removed:
        return None
    allowed = extensions(tokenizer, texts, removed, vocab, special)
    if len(allowed) < 2:
        return None
    return Healing(kept_ids=list(ids[:-1]), removed_id=last, removed_text=removed, allowed=allowed)


@torch.no_grad()
def first_token(model, healing: Healing, sampling, generator: torch.Generator, vocab: int) -> tuple[int, float]:
    """(token, its probability): the target's choice after the kept prompt among the allowed tokens, under
    the run's sampling (argmax when greedy)."""
    device = model.device
    logits = model(torch.tensor([healing.kept_ids], device=device)).logits[:, -1, :vocab].float()
    mask = torch.full_like(logits, float("-inf"))
    mask[:, list(healing.allowed)] = 0.0
    token, probs = sampling.choose(logits + mask, generator)
    token_id = int(token.item())
    return token_id, float(probs[0, token_id].item())


def healed_prompt(prompt: str, healing: Healing | None, tokenizer) -> str:
    """The prompt text the model was conditioned on: the user's prompt without the removed text (as is
    when nothing was healed)."""
    if healing is None:
        return prompt
    if prompt.endswith(healing.removed_text):
        return prompt[: len(prompt) - len(healing.removed_text)]
    return tokenizer.decode(healing.kept_ids, skip_special_tokens=False)
