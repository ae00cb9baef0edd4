"""A token tree and what feeding it to a causal LM in one forward takes: an attention mask and per-node positions.

Node 0 is the root, the last committed token; every other node is one candidate token whose parent is the token
before it on its path. Nodes are numbered in the order they were added, so a parent always comes before its
children and the nodes can be fed in that order. Fed in one forward after a cache of `past` entries, node i sits
at cache slot past + i, its position id is (the root's position) + its depth, and it attends to the committed
context, its ancestors and itself: then its logits equal those of feeding its path alone (tested in
tests/engine/test_tree_mask.py, and on every architecture through the `tree` method's greedy-equality tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TokenTree:
    """Candidates of one round: node -> token, parent, depth (the root is node 0, depth 0, parent -1)."""

    tokens: list[int]
    parents: list[int] = field(default_factory=lambda: [-1])
    depths: list[int] = field(default_factory=lambda: [0])

    @classmethod
    def rooted_at(cls, token: int) -> "TokenTree":
        return cls([int(token)])

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, parent: int, token: int) -> int:
        """A new child of `parent`; returns its node number."""
        self.tokens.append(int(token))
        self.parents.append(parent)
        self.depths.append(self.depths[parent] + 1)
        return len(self.tokens) - 1

    def children(self, node: int) -> list[int]:
        """The children of `node`, in the order they were added."""
        return [i for i, parent in enumerate(self.parents) if parent == node]

    def sibling_ranks(self) -> list[int]:
        """node -> its rank among its parent's children, in the order they were added (the root: 0)."""
        seen: dict[int, int] = {}
        ranks = [0]
        for parent in self.parents[1:]:
            seen[parent] = seen.get(parent, -1) + 1
            ranks.append(seen[parent])
        return ranks

    def leaves(self) -> int:
        """Nodes without children."""
        return len(self.tokens) - len(set(self.parents[1:]))

    def ancestors(self, node: int) -> list[int]:
        """`node`'s ancestors from the root down (the root included, `node` not)."""
        chain = []
        while (node := self.parents[node]) >= 0:
            chain.append(node)
        return chain[::-1]

    def subtree(self, keep: list[int]) -> "TokenTree":
        """The tree of the root and the nodes `keep` (ancestor-closed), renumbered in their order."""
        number = {0: 0}
        out = TokenTree.rooted_at(self.tokens[0])
        for node in sorted(keep):
            number[node] = out.add(number[self.parents[node]], self.tokens[node])
        return out


def tree_mask(
    visible: list[list[int]], prefix: int, past: int, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """The additive attention mask (1, 1, T, past + T) of T new entries fed after `past` cached ones: new entry
    i sees the first `prefix` cached entries (the committed context), the cache slots in visible[i] (its
    ancestors) and itself; everything else gets the dtype's minimum. Additive rather than boolean: eager
    attention adds the mask to its scores, so a boolean one would mask nothing there."""
    rows = len(visible)
    allowed = torch.zeros(rows, past + rows, dtype=torch.bool)
    allowed[:, :prefix] = True
    for i, slots in enumerate(visible):
        if slots:
            allowed[i, slots] = True
        allowed[i, past + i] = True
    mask = torch.zeros(rows, past + rows, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.view(1, 1, rows, past + rows).to(device)
