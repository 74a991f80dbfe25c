"""Search results in the response's terms: choices, usage, the ``edgetts`` object."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal

from edgetts.grading import answers_equal
from edgetts.search.base import Candidate, SearchResult
from edgetts.search.select import score_or_zero
from edgetts.server.schemas import CandidateInfo, ChoiceLogprobs, EdgettsInfo, TokenLogprob, Usage
from edgetts.solver import GREEDY

if TYPE_CHECKING:
    from edgetts.code import CodeResult
    from edgetts.server.engine import Job


def code_as_search_result(code: CodeResult) -> SearchResult:
    """A code task's result in the response's shape: the answer is the chosen program, each
    candidate's answer its program, and the votes each behaviour cluster's support."""
    candidates = [
        Candidate(
            text=c.text,
            answer=c.program,
            score=None,
            step_scores=[],
            n_tokens=c.n_tokens,
            stop_reason=c.stop_reason,
        )
        for c in code.candidates
    ]
    chosen = candidates[code.chosen] if code.chosen is not None else None
    if chosen is not None and code.program is not None:
        chosen = dataclasses.replace(chosen, text=f"```python\n{code.program.rstrip()}\n```")
        candidates[code.chosen] = chosen
    votes = {f"cluster {i}": c["support"] for i, c in enumerate(code.clusters)}
    return SearchResult(
        strategy=f"code {code.strategy}",
        answer=code.program,
        chosen=chosen,
        candidates=candidates,
        votes=votes,
        cut_short=code.cut_short,
        counters=dict(code.counters),
    )


def logprobs_of(candidate: Candidate | None, content: str | None = None) -> ChoiceLogprobs | None:
    """The tokens of the choice's ``content`` (its text trimmed of surrounding whitespace; None:
    all of it) and their log-probabilities, when the search kept them: as OpenAI's, they cover
    the text returned, not a stop string's token cut off after it or whitespace trimmed off."""
    if candidate is None or not candidate.token_logprobs:
        return None
    # found in the tokens' own bytes: the text may lack some of them (a blank first step is
    # not a step) or differ (a broken character written as U+FFFD): then every token is kept
    spelled = b"".join(piece for piece, _ in candidate.token_logprobs)
    wanted = b"" if content is None else content.encode()
    start = -1 if content is None else spelled.find(wanted)
    if start < 0:
        start, end = 0, len(spelled)
    else:
        end = start + len(wanted)
    kept, at = [], 0
    for piece, logprob in candidate.token_logprobs:
        if at < end and at + len(piece) > start:  # the token overlaps the content
            kept.append(TokenLogprob(token=token_text(piece), logprob=logprob, bytes=list(piece)))
        at += len(piece)
    return ChoiceLogprobs(content=kept)


def token_text(piece: bytes) -> str:
    """A token's text; a token holding part of a UTF-8 character is written as OpenAI writes
    it, ``bytes:\\xNN...`` (its ``bytes`` field has the raw bytes either way)."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in piece)


def finish_reason_of(candidate: Candidate | None) -> Literal["stop", "length"]:
    """OpenAI's: "stop" at the end of the text or a stop string, "length" when cut short."""
    return "stop" if candidate is not None and candidate.stop_reason in ("eos", "stop") else "length"


def usage_of(job: Job, result: SearchResult) -> Usage:
    """OpenAI's usage: the prompt's tokens (whether prefilled or reused from an earlier request;
    the prompts a search decoded when the job did not count its own) and the tokens sampled."""
    prompt = job.prompt_tokens
    if prompt is None:
        prompt = int(result.counters.get("tokens_prefilled", 0))
    completion = int(result.counters.get("tokens_sampled", 0))
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def edgetts_info(job: Job, result: SearchResult) -> EdgettsInfo:
    chosen = result.chosen
    index = next((i for i, c in enumerate(result.candidates) if c is chosen), None)
    started = job.started_at or job.queued_at
    return EdgettsInfo(
        answer=result.answer,
        provisional=result.provisional,
        strategy=result.strategy,
        n=1 if job.options.strategy == GREEDY else job.options.n or len(result.candidates),
        seed=None if job.options.strategy == GREEDY else job.options.seed,
        cut_short=result.cut_short,
        votes=result.votes,
        chosen_index=index,
        step_scores=chosen.step_scores if chosen else [],
        candidates=[
            CandidateInfo(
                answer=c.answer,
                score=c.score,
                n_tokens=c.n_tokens,
                stop_reason=c.stop_reason,
                provisional=c.provisional,
            )
            for c in result.candidates
        ],
        counters=result.counters,
        queue_s=round(started - job.queued_at, 3),
        search_s=round((job.finished_at or started) - started, 3),
        deprecation=job.deprecation,
    )


def ranked_choices(result: SearchResult, k: int) -> list[Candidate]:
    """``k`` candidates (OpenAI's ``n`` is a count): the pick first, then the other answers by
    their vote (or score), each by its best-scored path, then, when there are fewer distinct
    answers than ``k``, further solutions in the same order. Fewer only when the search made
    fewer solutions."""
    chosen = [result.chosen] if result.chosen is not None else []

    def rank(c: Candidate) -> tuple[float, float]:
        return (result.votes.get(c.answer or "", 0.0), score_or_zero(c))

    ranked = sorted(result.candidates, key=rank, reverse=True)
    for cand in ranked:
        if len(chosen) >= k:
            break
        if cand.answer is not None and all(not answers_equal(cand.answer, c.answer) for c in chosen):
            chosen.append(cand)
    for cand in ranked:
        if len(chosen) >= k:
            break
        if all(cand is not c for c in chosen):
            chosen.append(cand)
    return chosen
