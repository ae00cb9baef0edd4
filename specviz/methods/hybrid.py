"""Which source drafts this round, and how many tokens: a copy (prompt lookup), the drafter, or no draft at all.

A round that verifies k drafts costs about one target step plus `width_cost` steps per verified draft (on a CPU
the width is not free: 10 more tokens cost about half a step), plus `draft_cost` steps per token the drafter
makes. It yields 1 + (accepted drafts) tokens. `choose="yield"` plans each round for the largest expected
tokens per unit of that modeled cost, from the run's own verdicts so far:

- each source keeps two acceptance rates: its first draft's (prior 0.6, worth 4 rounds: one early miss does not
  rule a source out), and a later draft's given the one before it passed (prior 3/4: optimistic, or a source
  planned at k = 1 would never learn its runs; copies come in runs: once a copied span is right, its next token
  usually is too);
- a copy's rates are kept per length of the n-gram it matched (1, 2, 3, 4 or more), so a long match is trusted
  more than a common word;
- k drafts are expected to yield a1 (1 - a^k) / (1 - a) accepted tokens; the plan is the (source, k) with the
  best (1 + that) / (1 + k (width_cost + draft_cost)), where k = 0 is a plain target step (value 1);
- a source left out for `PROBE_EVERY` rounds is tried again with its best k (>= 1), so a bad start is not final.

The plan is a function of the run's own past verdicts (counts, never timings), so a run is reproducible from its
seed, and it changes only how many tokens are drafted and by whom: each round is verified by its source's exact
rule, so the output's law (and greedy output) are unchanged. Costs are modeled, not measured per run: timings
would make the output of a seeded run depend on the machine's load.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from specviz.methods.base import Param, RunContext
from specviz.models.anatomy import weights_read_per_token

PROBE_EVERY = 4  # rounds a source may be left out before it is tried again
LONGEST_MATCH_BUCKET = 4

CHOOSE = Param(
    "choose",
    str,
    "match",
    choices=("match", "yield"),
    help="'match': copy whenever the text's ending occurred before, else draft as set; 'yield': each round "
    "takes the source and length with the most expected tokens per modeled cost (or no draft)",
)
WIDTH_COST = Param(
    "width_cost",
    float,
    0.05,
    0.0,
    1.0,
    help="with choose=yield: the modeled cost of verifying one more token, in target steps (this 2-core "
    "CPU: about 0.05; a GPU: about 0.01)",
)


def draft_cost(ctx: RunContext, target) -> float:
    """A drafter token's modeled cost in target steps: the weights it reads (`ctx.meta["draft_params"]`, set by the
    method's drafter) over the target's (MBSU's model)."""
    whole = ctx.once(("target_params", id(target)), lambda: weights_read_per_token(target))
    return ctx.meta["draft_params"] / max(1, whole)


@dataclass
class Acceptance:
    """Counts behind a source's acceptance: of its first draft, and of a later draft given the one before passed."""

    first_hits: float = 2.4
    first_tries: float = 4.0
    more_hits: float = 3.0
    more_tries: float = 4.0

    def update(self, drafted: int, accepted: int) -> None:
        if drafted <= 0:
            return
        self.first_tries += 1
        if accepted == 0:
            return
        self.first_hits += 1
        self.more_hits += accepted - 1
        self.more_tries += accepted - 1 + (accepted < drafted)  # the later drafts judged: passes, and the first miss

    def expected(self, k: int) -> float:
        """Expected accepted drafts of k."""
        a1, a = self.first_hits / self.first_tries, self.more_hits / self.more_tries
        return a1 * (1 - a**k) / (1 - a) if k else 0.0


NO_COPY = "lookup: the text's ending matched, but what followed it starts past the drafter's vocabulary"


@dataclass(frozen=True)
class Plan:
    source: str | None  # "lookup", "draft", or None: a plain target step
    k: int
    value: float  # expected tokens per modeled cost
    skipped: str = ""  # a source the round could not take, and why (NO_COPY), or ""

    def info(self) -> dict:
        """What the verify event records of the choice."""
        info = {"source": self.source or "none", "k": self.k, "value": round(self.value, 3)}
        if self.skipped:
            info["skipped"] = self.skipped
        return info


@dataclass
class SourceChooser:
    """Plans a round for the best expected yield (see the module's docstring)."""

    width_cost: float
    draft_cost: float  # one drafter token, in target steps
    rates: dict[tuple, Acceptance] = field(default_factory=dict)
    idle: dict[str, int] = field(default_factory=dict)  # rounds since each source was last tried

    def key(self, source: str, ngram: int = 0) -> tuple:
        return (source, min(ngram, LONGEST_MATCH_BUCKET)) if source == "lookup" else (source,)

    def best(self, source: str, k_max: int, ngram: int = 0) -> Plan:
        """The source's best plan of 1..k_max drafts."""
        rate = self.rates.setdefault(self.key(source, ngram), Acceptance())
        per_token = self.width_cost + (self.draft_cost if source == "draft" else 0.0)
        plans = [Plan(source, k, (1 + rate.expected(k)) / (1 + k * per_token)) for k in range(1, k_max + 1)]
        return max(plans, key=lambda p: p.value) if plans else Plan(None, 0, 1.0)

    def plan_round(
        self, index, copy_max: int, draft_max: int = 0, vocab: int | None = None
    ) -> tuple[Plan, tuple[list[int], list[int], int]]:
        """The round's plan, and the copy it takes from `index` (an NgramIndex, or None: no copy): the drafts (none
        unless the plan is a copy), the positions they were copied from, and the n-gram the text's ending matched. A
        copy is planned only where it yields tokens: the ending occurred before, and what followed starts inside
        `vocab` (where it does not, the round is planned without the copy, and the plan says so)."""
        drafts, sources, n = index.draft(copy_max, vocab) if index is not None else ([], [], 0)
        plan = self.plan(copy_max=len(drafts), ngram=n, draft_max=draft_max)
        if n and not drafts:
            plan = replace(plan, skipped=NO_COPY)
        if plan.source != "lookup":
            return plan, ([], [], n)
        return plan, (drafts[: plan.k], sources[: plan.k], n)

    def plan(self, copy_max: int = 0, ngram: int = 0, draft_max: int = 0) -> Plan:
        """The round's plan: copy_max > 0 when a copy is possible (of a matched `ngram`), draft_max > 0 when the
        drafter may draft."""
        options = [Plan(None, 0, 1.0)]
        for source, k_max in (("lookup", copy_max), ("draft", draft_max)):
            if k_max > 0:
                options.append(self.best(source, k_max, ngram))
        chosen = max(options, key=lambda p: p.value)
        if chosen.source is None:  # a source left out too long is tried again
            for source, k_max in (("draft", draft_max), ("lookup", copy_max)):
                if k_max > 0 and self.idle.get(source, 0) >= PROBE_EVERY:
                    chosen = self.best(source, k_max, ngram)
                    break
        for source in ("lookup", "draft"):
            self.idle[source] = 0 if chosen.source == source else self.idle.get(source, 0) + 1
        return chosen

    def update(self, plan: Plan, drafted: int, accepted: int, ngram: int = 0) -> None:
        if plan.source is not None:
            self.rates.setdefault(self.key(plan.source, ngram), Acceptance()).update(drafted, accepted)

    def summary(self) -> dict:
        """The learnt rates, for the trace's meta."""
        return {
            "/".join(map(str, key)): {
                "first": round(r.first_hits / r.first_tries, 3),
                "more": round(r.more_hits / r.more_tries, 3),
            }
            for key, r in sorted(self.rates.items(), key=lambda kv: str(kv[0]))
        }
