"""Requests and their sequences inside the engine, and what they send back.

A `Request` is one Sample or logprob-scoring call. It starts as one `SequenceState` holding the prompt;
once the prompt is prefilled, a sampling request with n > 1 forks into n sequences that share the prompt's
KV blocks. Each sequence feeds `tokens[num_cached:]` to the model step by step; when everything it holds is
cached, the step's last logits give its next token. A finished sample says why with the SDK's `Finish`;
its text is the decoded tokens, empty on a base without a tokenizer.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import queue
import threading
import time

import torch

from mint.adapters.spec import AdapterSpec
from mint.errors import MintError
from mint.models.tokenizer import Tokenizer
from mint.sdk.types import Finish
from services.engine.sampling import SamplingParams, TopLogprobs

_ids = itertools.count(1)


@dataclasses.dataclass(slots=True)
class SampleEvent:
    """New output of one sample since its previous event."""

    index: int
    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish: Finish | None = None
    prompt_tokens: int = 0
    top_logprobs: list[TopLogprobs] = dataclasses.field(default_factory=list)  # one per token when asked for


class SequenceState:
    __slots__ = (
        "seq_id", "request", "index", "tokens", "num_cached", "blocks", "generator",
        "out_tokens", "out_logprobs", "out_top", "text", "emitted_tokens", "emitted_text", "finish",
    )

    def __init__(self, request: Request, index: int, tokens: list[int], generator: torch.Generator | None):
        self.seq_id = next(_ids)
        self.request = request
        self.index = index
        self.tokens = tokens
        self.num_cached = 0
        self.blocks: list[int] = []
        self.generator = generator
        self.out_tokens: list[int] = []
        self.out_logprobs: list[float] = []
        self.out_top: list[TopLogprobs] = []
        self.text = ""
        self.emitted_tokens = 0
        self.emitted_text = 0
        self.finish: Finish | None = None

    @property
    def pending(self) -> int:
        """Tokens not yet fed to the model."""
        return len(self.tokens) - self.num_cached

    def fork(self, index: int, generator: torch.Generator | None) -> SequenceState:
        child = SequenceState(self.request, index, list(self.tokens), generator)
        child.num_cached = self.num_cached
        child.blocks = list(self.blocks)
        return child


class RequestKind(enum.Enum):
    SAMPLE = "sample"
    LOGPROBS = "logprobs"


class Request:
    """One call's state. The engine thread mutates it; the caller's thread only reads `events`."""

    def __init__(
        self,
        kind: RequestKind,
        prompt: list[int],
        adapter: AdapterSpec | None,
        params: SamplingParams | None,
        request_id: str = "",
        buffered: bool = False,
    ):
        self.kind = kind
        self.buffered = buffered  # report each sample once, finished, instead of token by token
        self.request_id = request_id or f"req-{next(_ids)}"
        self.prompt = prompt
        self.adapter = adapter
        self.params = params
        self.arrival = time.monotonic()
        self.slot = 0  # adapter slot while admitted (0: base)
        self.admitted = False
        self.seqs: list[SequenceState] = []
        self.prompt_logprobs: list[float] = []
        self.events: queue.Queue[SampleEvent | MintError | None] = queue.Queue()
        self.cancelled = threading.Event()
        self.done = False

    @property
    def live(self) -> list[SequenceState]:
        return [s for s in self.seqs if s.finish is None]

    def cancel(self) -> None:
        self.cancelled.set()

    def abort(self) -> None:
        """End every unfinished sample as ABORTED (the caller went away or gave up)."""
        for seq in self.seqs:
            if seq.finish is None:
                seq.finish = Finish.ABORTED
                self.events.put(SampleEvent(index=seq.index, token_ids=[], text="", logprobs=[], finish=Finish.ABORTED))
        self.done = True
        self.events.put(None)

    def fail(self, error: MintError) -> None:
        self.done = True
        self.events.put(error)
        self.events.put(None)


def check_stop(seq: SequenceState, tokenizer: Tokenizer | None, eos_ids: frozenset[int], max_model_len: int) -> None:
    """After a token is appended: decide whether the sample is finished, and keep its text current (stop
    strings come only with a tokenizer: the engine refuses them for a base without one)."""
    params = seq.request.params
    assert params is not None
    token = seq.out_tokens[-1]
    if params.stop:
        assert tokenizer is not None
        seq.text = tokenizer.decode(seq.out_tokens)
        for stop in params.stop:
            at = seq.text.find(stop, max(0, seq.emitted_text - len(stop)))
            if at >= 0:
                seq.text = seq.text[:at]
                seq.finish = Finish.STOP
                return
    if (token in eos_ids and not params.ignore_eos) or token in params.stop_token_ids:
        seq.finish = Finish.STOP
    elif len(seq.out_tokens) >= params.max_tokens or len(seq.tokens) >= max_model_len:
        seq.finish = Finish.LENGTH


def take_event(seq: SequenceState, tokenizer: Tokenizer | None, *, first: bool) -> SampleEvent | None:
    """The output a sample has not reported yet. Text that could still turn into a stop string, or that
    ends inside a multi-byte character, is held back until it is certain. Without a tokenizer the text
    stays empty: the tokens are the output."""
    params = seq.request.params
    assert params is not None
    if tokenizer is not None and not params.stop:
        seq.text = tokenizer.decode(seq.out_tokens)
    text_end = len(seq.text)
    if seq.finish is None:
        if params.stop:
            text_end = max(seq.emitted_text, text_end - max(len(s) for s in params.stop) + 1)
        while text_end > seq.emitted_text and seq.text[text_end - 1] == "\ufffd":
            text_end -= 1
    new_tokens = seq.out_tokens[seq.emitted_tokens :]
    if not new_tokens and seq.finish is None and text_end == seq.emitted_text:
        return None
    event = SampleEvent(
        index=seq.index,
        token_ids=new_tokens,
        text=seq.text[seq.emitted_text : text_end],
        logprobs=seq.out_logprobs[seq.emitted_tokens :] if params.logprobs else [],
        top_logprobs=seq.out_top[seq.emitted_tokens :] if params.top_logprobs else [],
        finish=seq.finish,
        prompt_tokens=len(seq.request.prompt) if first else 0,
    )
    seq.emitted_tokens = len(seq.out_tokens)
    seq.emitted_text = text_end
    return event
