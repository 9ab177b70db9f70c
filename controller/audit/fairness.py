"""``audit fairness``: did any account systematically receive more than its share?

For every buy, the continuous optimum x*_i (fractional shares bringing accounts as close to
target as the fill allows: water-filling over the shortfalls) is computed exactly; each account
is due floor(x*_i) shares, and the fill's R = Q - sum floor(x*_i) remaining whole shares are its
rounding remainders. An account's expected number of remainders is the sum of its fractional
parts frac(x*_i) (they add up to R on every fill), its observed number what it received beyond
floor(x*_i). A chi-square goodness-of-fit test compares observed with expected counts over the
period: a small p-value means remainders went to some accounts more often than their fractions
justify. Sells are bounded by holdings and are not part of the remainder test.

Also per account: shares and value bought and shares sold, and its deviation from target after
every fill of the period (value minus weight times the book's total, in basis points of the
total): the mean (signed: a persistent sign is a persistent favour) and the worst.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from controller.audit.history import JournalHistory
from controller.audit.ledger import Ledger, Step, replay
from controller.domain import Allocation, Side, Split
from controller.policy import TOTAL_VALUE

DEFAULT_ALPHA = 0.001
# The chi-square approximation needs about this many expected remainders per category:
# accounts expecting fewer are pooled.
MIN_EXPECTED = 5.0


@dataclass(slots=True)
class AccountFairness:
    """One account's figures over the period."""

    account: str
    bought: int = 0
    bought_value: int = 0
    sold: int = 0
    remainders: int = 0
    expected_remainders: float = 0.0
    deviation_sum_bp: float = 0.0
    worst_deviation_bp: float = 0.0
    samples: int = 0

    @property
    def mean_deviation_bp(self) -> float:
        """Mean signed deviation from target after each fill, basis points of the total."""
        return self.deviation_sum_bp / self.samples if self.samples else 0.0


@dataclass(slots=True)
class Fairness:
    """The per-account figures and the remainder test over a period."""

    alpha: float = DEFAULT_ALPHA
    fills: int = 0
    buys: int = 0
    remainders: int = 0
    accounts: dict[str, AccountFairness] = field(default_factory=dict)
    statistic: float = 0.0
    degrees_of_freedom: int = 0
    p_value: float = 1.0

    def account(self, name: str) -> AccountFairness:
        """The figures of ``name`` (created on first use)."""
        found = self.accounts.get(name)
        if found is None:
            found = self.accounts[name] = AccountFairness(name)
        return found

    @property
    def enough_data(self) -> bool:
        """Whether the test can say anything: at least two categories were compared."""
        return self.degrees_of_freedom >= 1

    @property
    def biased(self) -> bool:
        """Whether the test rejects "remainders follow the fractions" at level ``alpha``."""
        return self.enough_data and self.p_value < self.alpha

    def verdict(self) -> str:
        """One plain sentence."""
        if not self.enough_data:
            return (
                f"not enough remainder shares to test ({self.remainders} over"
                f" {self.buys} buys): no conclusion"
            )
        if self.biased:
            return (
                f"BIAS DETECTED: remainder shares are not distributed as the fractions predict"
                f" (chi-square {self.statistic:.1f}, {self.degrees_of_freedom} degrees of freedom,"
                f" p = {self.p_value:.3g} < {self.alpha:g})"
            )
        return (
            f"no bias detected: remainder shares follow the fractions (chi-square"
            f" {self.statistic:.1f}, {self.degrees_of_freedom} degrees of freedom,"
            f" p = {self.p_value:.3g} >= {self.alpha:g})"
        )


def continuous_floors(
    ledger: Ledger, split: Split, allocation: Allocation, policy: str = TOTAL_VALUE
) -> dict[str, tuple[int, float]]:
    """For a buy: each eligible account's floor(x*_i) and frac(x*_i) under ``policy``, exact
    up to the final conversion of the fraction to float."""
    fill = allocation.fill
    scale = split.total
    values, before, unit = ledger.measure(policy, fill.ticker, fill.price)
    after = before + unit * fill.quantity
    step = scale * unit
    # a_i = S * (target after - measure before): x*_i = max(0, (a_i - tau) / step).
    shortfalls = sorted(
        (
            (percent * after - scale * values.get(account, 0), account)
            for account, percent in split.percents.items()
            if percent > 0
        ),
        reverse=True,
    )
    needed = step * fill.quantity
    running = 0
    active = 0
    for k, (a, _) in enumerate(shortfalls, start=1):
        # tau over the top k is (sum - needed) / k; the next account joins while its a > tau.
        if k > 1 and a * (k - 1) <= running - needed:
            break
        running += a
        active = k
    excess = running - needed  # tau = excess / active
    result = {}
    for k, (a, account) in enumerate(shortfalls):
        if k >= active:
            result[account] = (0, 0.0)
            continue
        whole, part = divmod(active * a - excess, active * step)
        result[account] = (whole, part / (active * step))
    return result


def tally(
    history: JournalHistory,
    since: int = 0,
    until: int | None = None,
    alpha: float = DEFAULT_ALPHA,
    progress: Callable[[int], None] | None = None,
) -> Fairness:
    """The fairness figures of the allocations made at sequences in ``[since, until]``."""
    result = Fairness(alpha)
    ledger = Ledger()
    pending: Step | None = None
    for item in replay(history, ledger, until):
        if pending is not None:
            _deviations(result, ledger)  # the ledger now includes the allocation
            pending = None
        if not isinstance(item, Step) or item.sequence < since:
            continue
        add(result, item.ledger, item.event.journaled, history.policy)
        pending = item
        if progress is not None and result.fills % 1_000 == 0:
            progress(result.fills)
    if pending is not None:
        _deviations(result, ledger)
    finish(result)
    return result


def add(
    result: Fairness, ledger: Ledger, allocation: Allocation, policy: str = TOTAL_VALUE
) -> None:
    """Count one allocation, given the ledger before it."""
    fill = allocation.fill
    result.fills += 1
    shares = dict(allocation.shares)
    if fill.side is Side.SELL:
        for account, quantity in shares.items():
            result.account(account).sold += quantity
        return
    result.buys += 1
    assert ledger.split is not None
    if allocation.lot_size > 1:
        # Round lots have their own remainder (the odd lot): not part of the share test.
        for account, quantity in shares.items():
            figures = result.account(account)
            figures.bought += quantity
            figures.bought_value += quantity * fill.price
        return
    floors = continuous_floors(ledger, ledger.split, allocation, policy)
    for account, (due, fraction) in floors.items():
        figures = result.account(account)
        got = shares.get(account, 0)
        figures.bought += got
        figures.bought_value += got * fill.price
        figures.remainders += got - due
        figures.expected_remainders += fraction
        result.remainders += got - due


def _deviations(result: Fairness, ledger: Ledger) -> None:
    split = ledger.split
    if split is None or ledger.total == 0:
        return
    scale = split.total
    for account, figures in result.accounts.items():
        deviation = (
            ledger.values.get(account, 0) - split.percents.get(account, 0) * ledger.total / scale
        )
        bp = deviation / ledger.total * 10_000
        figures.deviation_sum_bp += bp
        figures.samples += 1
        if abs(bp) > abs(figures.worst_deviation_bp):
            figures.worst_deviation_bp = bp


def finish(result: Fairness) -> None:
    """Run the chi-square test: accounts expecting at least ``MIN_EXPECTED`` remainders are
    categories of their own, the others are pooled into one (the usual condition for the
    chi-square approximation). Remainders where none were expected at all are bias outright."""
    from scipy.stats import chisquare

    categories: list[tuple[float, int]] = []
    pooled_expected, pooled_observed = 0.0, 0
    for figures in result.accounts.values():
        if figures.expected_remainders >= MIN_EXPECTED:
            categories.append((figures.expected_remainders, figures.remainders))
        else:
            pooled_expected += figures.expected_remainders
            pooled_observed += figures.remainders
    if pooled_expected > 0 or pooled_observed:
        categories.append((pooled_expected, pooled_observed))
    observed = [count for _, count in categories]
    if len(categories) < 2 or sum(observed) == 0:
        return
    result.degrees_of_freedom = len(categories) - 1
    if any(expected == 0 and count for expected, count in categories):
        result.statistic, result.p_value = float("inf"), 0.0
        return
    # The fractions sum to the remainders on every fill; rescaling removes float rounding.
    factor = sum(observed) / sum(expected for expected, _ in categories)
    test = chisquare(observed, [expected * factor for expected, _ in categories])
    result.statistic = float(test.statistic)
    result.p_value = float(test.pvalue)
