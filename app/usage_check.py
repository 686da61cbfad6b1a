"""Trust no upstream's token count blindly: it reaches the client's usage and the bill.

An upstream's count for a call is believed only if it is a non-negative integer, at most a
generous factor above the gateway's own cl100k count for the same items (tokenisers differ, so
4x plus a few special tokens per input), and within the model's `max_tokens` for each input.
Otherwise the gateway's own count is used and a warning names the provider. A count below the
gateway's is believed: upstreams truncate (the local model stops at 256 word pieces), and it is
what they bill.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from app.jobs import EmbeddingJob
from app.providers import UpstreamResult

log = logging.getLogger("app.usage_check")

FACTOR = 4
SLACK_PER_INPUT = 8  # special tokens ([CLS], [SEP], BOS/EOS) another tokeniser may count


def plausible_tokens(reported: object, own: int, inputs: int, max_tokens: int) -> bool:
    if type(reported) is not int or reported < 0:
        return False
    slack = SLACK_PER_INPUT * inputs
    if reported > FACTOR * own + slack:
        return False
    return reported <= max_tokens * inputs + slack


def checked_usage(
    outcome: UpstreamResult, job: EmbeddingJob, chunk: list[int], provider: str
) -> UpstreamResult:
    """The call's result, with an implausible upstream count replaced by the gateway's own."""
    reported, inputs = outcome.prompt_tokens, len(chunk)
    if reported is None:
        return outcome
    # Every input is at least one token, so a count within FACTOR + SLACK_PER_INPUT per input
    # passes the check whatever the exact count: no tokenising for the common answer.
    if plausible_tokens(reported, inputs, inputs, job.model.config.max_tokens):
        return outcome
    own = job.tokens_of(chunk)
    if plausible_tokens(reported, own, inputs, job.model.config.max_tokens):
        return outcome
    log.warning(
        "upstream usage is implausible; using the gateway's own count",
        extra={"provider": provider, "reported_tokens": reported, "own": own},
    )
    return replace(outcome, prompt_tokens=own)
