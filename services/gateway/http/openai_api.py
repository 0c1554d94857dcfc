"""The OpenAI-compatible API: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`.

`model` names a policy revision as every MinT client does (`acme/bot@prod`, `bot@7`, `bot` for its latest)
or a base model the engines serve (a base's name wins over a policy of the same name; write `bot@latest`
for the policy). Requests become the gateway's own SampleRequests and run through the servicer's `sample`
(resolve cache, tenancy, routing, retries before the first token); chat prompts are rendered by the
engine with the base's chat template. Streams are server-sent events, one per engine chunk, ending in
`data: [DONE]`, or in an error event when the engine is lost mid-stream.

A sampling request takes one worker-thread hop: authentication, checking its parameters, finding its model
and the servicer's sample run there in turn (Door.serve). The events of every chunk that is ready when the
response is written go out in one write.

OpenAI parameters MinT has no counterpart for (penalties, logit_bias, echo, suffix, tools) are refused
with 400 naming the parameter, rather than silently ignored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mint.errors import Code, MintError
from mint.models.tokenizer import Tokenizer
from mint.params import MAX_TOP_LOGPROBS
from mint.proto import catalog_pb2, common_pb2, engine_pb2, gateway_pb2
from services.gateway.http.door import Caller, Door, parse_body, read_body, retry_after

MAX_COMPLETION_LOGPROBS = 5  # the legacy completions API's limit on `logprobs`
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions
DEFAULT_CHAT_TOKENS = 256  # OpenAI's chat default is "up to the context": MinT needs a number before the prompt is tokenized
MAX_MODELS_PAGE = 200
SAMPLE = "/mint.v1.SamplingService/Sample"

FINISH = {common_pb2.FINISH_REASON_LENGTH: "length", common_pb2.FINISH_REASON_STOP: "stop"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               409: "conflict_error", 429: "rate_limit_error"}


class BadParam(MintError):
    """INVALID_ARGUMENT about one request parameter, which the error JSON names."""

    def __init__(self, param: str, message: str):
        super().__init__(Code.INVALID_ARGUMENT, message)
        self.param = param


def error_body(err: MintError, door: Door) -> dict[str, Any]:
    status = err.http_status
    return {
        "error": {
            "message": door.cut(err.message),
            "type": ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": getattr(err, "param", None),
            "code": err.code.value,
        }
    }


def error_response(err: MintError, door: Door) -> JSONResponse:
    """The error's JSON with its HTTP status, and Retry-After where the refusal says when to come back (OpenAI's
    clients wait on it)."""
    return JSONResponse(error_body(err, door), status_code=err.http_status, headers=retry_after(err))


class OpenAIApi:
    def __init__(self, door: Door):
        self.door = door
        self._tokenizers: dict[str, Tokenizer | None] = {}
        self._tokenizers_lock = threading.Lock()

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self._guarded(self.list_models, "/mint.v1.CatalogService/ListPolicies"), methods=["GET"]),
            Route("/v1/completions", self._sampling(self._completion_plan), methods=["POST"]),
            Route("/v1/chat/completions", self._sampling(self._chat_plan), methods=["POST"]),
        ]

    def _sampling(self, plan):
        """The endpoint of a sampling route: `plan`(body) checks the request's parameters (on the worker thread,
        after authentication, so a bad key is refused before a bad body)."""

        async def endpoint(request: Request) -> Response:
            try:
                return await self._answer(request, plan)
            except MintError as err:
                return error_response(err, self.door)

        return endpoint

    def _guarded(self, handler, method: str):
        """`handler`(request, caller) for callers whose key may call the gRPC `method` it does the work of."""

        async def endpoint(request: Request) -> Response:
            try:
                caller = await self.door.caller(request, method)
                return await handler(request, caller)
            except MintError as err:
                return error_response(err, self.door)

        return endpoint

    # --- models ----------------------------------------------------------------------------------------

    async def list_models(self, request: Request, caller: Caller) -> Response:
        limit = _int_query(request, "limit", 100, 1, MAX_MODELS_PAGE)
        after = request.query_params.get("after", "")
        data, next_token = await self.door.run(caller, self._models_page, caller, limit, after)
        return JSONResponse({"object": "list", "data": data, "has_more": bool(next_token), "next_page_token": next_token})

    def _models_page(self, caller: Caller, limit: int, after: str) -> tuple[list[dict], str]:
        """Bases first, then the tenant's policies (each as its latest and as each of its aliases). `after` is
        a page token from the previous page: 'b' or 'p' (bases or policies) and the catalog's own token."""
        catalog = self.door.catalog
        phase, token = (after[:1], after[1:]) if after else ("b", "")
        if phase not in ("b", "p"):
            raise BadParam("after", f"after must be a next_page_token from a previous page, got {after[:40]!r}")
        data: list[dict] = []
        if phase == "b":
            while len(data) < limit:
                page = catalog.call("ListBaseModels", catalog_pb2.ListBaseModelsRequest(page=_page(limit - len(data), token)), caller)
                data += [_model(b.name, b.created_at.seconds, "mint", None) for b in page.base_models]
                token = page.next_page_token
                if not token:
                    phase = "p"
                    break
            if phase == "b":
                return data, "b" + token
        while len(data) < limit:
            page = catalog.call("ListPolicies", catalog_pb2.ListPoliciesRequest(page=_page(limit - len(data), token)), caller)
            for policy in page.policies:
                created = policy.created_at.seconds
                data.append(_model(policy.full_name, created, policy.tenant, policy.base_model))
                aliases = catalog.call("ListAliases", catalog_pb2.ListAliasesRequest(policy=policy.full_name), caller)
                data += [_model(f"{policy.full_name}@{a.name}", created, policy.tenant, policy.base_model) for a in aliases.aliases]
            token = page.next_page_token
            if not token:
                return data, ""
        return data, "p" + token

    # --- completions -------------------------------------------------------------------------------------

    def _completion_plan(self, body: dict) -> _Plan:
        _refuse_unsupported(body, ("echo", "suffix", "logit_bias", "presence_penalty", "frequency_penalty", "best_of"))
        prompts = _completion_prompts(body.get("prompt"))
        logprobs = body.get("logprobs")
        if logprobs is not None and (not _is_int(logprobs) or not 0 <= logprobs <= MAX_COMPLETION_LOGPROBS):
            raise BadParam("logprobs", f"logprobs must be an integer in 0..{MAX_COMPLETION_LOGPROBS} (the alternatives per token), got {logprobs!r}")
        params = _params(body, DEFAULT_COMPLETION_TOKENS, logprobs=logprobs is not None, top=logprobs or 0)
        return _plan(body, prompts, params, chat=False)

    def _chat_plan(self, body: dict) -> _Plan:
        _refuse_unsupported(body, ("logit_bias", "presence_penalty", "frequency_penalty", "tools", "functions", "audio", "prediction"))
        fmt = body.get("response_format")
        if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
            raise BadParam("response_format", "only response_format {'type': 'text'} is served (MinT does not constrain decoding)")
        prompt = common_pb2.Prompt(chat=common_pb2.ChatPrompt(messages=_chat_messages(body.get("messages"))))
        want = body.get("logprobs") or False
        if not isinstance(want, bool):
            raise BadParam("logprobs", f"logprobs must be true or false for chat, got {want!r}")
        top = body.get("top_logprobs")
        if top is not None:
            if not _is_int(top) or not 0 <= top <= MAX_TOP_LOGPROBS:
                raise BadParam("top_logprobs", f"top_logprobs must be an integer in 0..{MAX_TOP_LOGPROBS}, got {top!r}")
            if not want:
                raise BadParam("top_logprobs", "top_logprobs needs logprobs: true")
        if body.get("max_completion_tokens") is not None:
            body = {**body, "max_tokens": body["max_completion_tokens"]}
        params = _params(body, DEFAULT_CHAT_TOKENS, logprobs=want, top=top or 0)
        return _plan(body, [prompt], params, chat=True)

    async def _answer(self, request: Request, plan) -> Response:
        raw = await read_body(request)
        batches = self.door.serve(request, SAMPLE, partial(self._prepared, plan, raw))
        prepared: _Prepared = (first := await anext(batches))[0]
        if len(prepared.samples) > 1:
            await batches.aclose()
            chunks = self._merged(prepared.caller, prepared.samples)
        else:
            chunks = _chained(first[1:], batches)
        if not prepared.stream:
            return await _unless_gone(request, self._buffered(prepared.answer, chunks))
        try:
            head = await anext(chunks, None)  # errors before the first chunk (no engine for the base) answer with their status
        except MintError as err:
            return error_response(err, self.door)
        events = self._events(prepared.answer, head, chunks, prepared.include_usage)
        return StreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})

    def _prepared(self, plan, raw: bytes | None, caller: Caller, call) -> Iterator:
        """On the worker thread, as the caller: the request checked and its model found (a _Prepared, first),
        then, for a single prompt, the (prompt index, chunk) of its sample call in the same thread."""
        plan_ = plan(parse_body(raw))
        is_base, tokenizer = self._model(caller, plan_.model, plan_.params.logprobs)
        samples = [
            gateway_pb2.SampleRequest(model="" if is_base else plan_.model, base_model=plan_.model if is_base else "", prompt=p,
                                      params=plan_.params, buffered=not plan_.stream)
            for p in plan_.prompts
        ]
        for sample in samples:
            self.door.check(sample)
        answer = _Answer(plan_.model, plan_.chat, plan_.params, tokenizer, n=plan_.params.n or 1)
        yield _Prepared(caller, samples, answer, plan_.stream, plan_.include_usage)
        if len(samples) == 1:
            yield from self._chunks(0, samples[0], call)

    def _chunks(self, prompt_index: int, sample: gateway_pb2.SampleRequest, call) -> Iterator[tuple[int, common_pb2.SampleChunk]]:
        for chunk in self.door.servicer.sample(sample, call):
            yield prompt_index, _checked(chunk)

    async def _buffered(self, answer: _Answer, chunks: AsyncIterator[list[tuple[int, common_pb2.SampleChunk]]]) -> Response:
        try:
            async for batch in chunks:
                for prompt_index, chunk in batch:
                    answer.add(prompt_index, chunk)
        except MintError as err:
            return error_response(err, self.door)
        return JSONResponse(answer.whole())

    async def _events(self, answer: _Answer, head, chunks, include_usage: bool) -> AsyncIterator[str]:
        """One string per batch of chunks: their events, written at once."""
        try:
            if head is not None:
                yield "".join([answer.event(i, chunk, usage=include_usage) for i, chunk in head])
            async for batch in chunks:
                yield "".join([answer.event(i, chunk, usage=include_usage) for i, chunk in batch])
        except MintError as err:
            yield _sse(error_body(err, self.door))  # the stream ends with an error event, never silently
            return
        yield (_sse(answer.usage_piece()) if include_usage else "") + "data: [DONE]\n\n"

    async def _merged(self, caller: Caller, samples: list[gateway_pb2.SampleRequest]) -> AsyncIterator[list[tuple[int, common_pb2.SampleChunk]]]:
        """Batches of (prompt index, chunk) of every prompt's sample call, as they come."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, sample: gateway_pb2.SampleRequest) -> None:
            try:
                async for batch in self.door.stream(caller, partial(self._chunks, index, sample)):
                    await queue.put(batch)
                await queue.put(None)
            except MintError as err:
                await queue.put(err)

        tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(samples)]
        try:
            running = len(tasks)
            while running:
                item = await queue.get()
                if isinstance(item, MintError):
                    raise item
                if item is None:
                    running -= 1
                    continue
                yield item
        finally:
            for task in tasks:
                task.cancel()

    def _model(self, caller: Caller, model: str, want_tokenizer: bool) -> tuple[bool, Tokenizer | None]:
        """Whether `model` is a base the engines serve, and (when logprobs need names for their tokens) the
        base's tokenizer. A revision that cannot be served (retracted, or hidden from this tenant) is a
        model not found, as OpenAI clients expect; the servicer resolves it again from its cache."""
        servicer = self.door.servicer
        is_base = model in servicer.bases()
        if is_base:
            base = model
        else:
            try:
                base = servicer.resolver.resolve(model, caller.api_key).adapter.base_model
            except MintError as err:
                if err.code is Code.FAILED_PRECONDITION:
                    raise MintError(Code.NOT_FOUND, err.message) from None
                raise
        if not want_tokenizer:
            return is_base, None
        with self._tokenizers_lock:
            if base in self._tokenizers:
                return is_base, self._tokenizers[base]
        call, ended = self.door.call(caller)
        try:
            files = servicer.tokenizer(engine_pb2.GetBaseTokenizerRequest(base_model=base), call).files
            tokenizer = Tokenizer.from_files(dict(files))
        except MintError as err:
            if err.code is not Code.FAILED_PRECONDITION:  # a base without tokenizer.json: tokens by id
                raise
            tokenizer = None
        finally:
            ended.end()
        with self._tokenizers_lock:
            self._tokenizers[base] = tokenizer
        return is_base, tokenizer


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """A sampling request's parameters, checked."""

    model: str
    prompts: list[common_pb2.Prompt]
    params: common_pb2.SamplingParams
    chat: bool
    stream: bool
    include_usage: bool


def _plan(body: dict, prompts: list[common_pb2.Prompt], params: common_pb2.SamplingParams, *, chat: bool) -> _Plan:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadParam("model", "name a model: a policy revision (acme/bot@prod, bot@7, bot) or a base model")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise BadParam("stream", f"stream must be true or false, got {stream!r}")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadParam("stream_options", "stream_options must be an object")
    return _Plan(model, prompts, params, chat, stream, bool(options.get("include_usage")))


@dataclasses.dataclass(frozen=True, slots=True)
class _Prepared:
    """A request ready to sample: who asks, the sample calls it makes, and the answer they build."""

    caller: Caller
    samples: list[gateway_pb2.SampleRequest]
    answer: _Answer
    stream: bool
    include_usage: bool


async def _chained(head: list, batches: AsyncIterator[list]) -> AsyncIterator[list]:
    """`head` (when not empty), then the batches."""
    try:
        if head:
            yield head
        async for batch in batches:
            yield batch
    finally:
        await batches.aclose()


class _Answer:
    """One request's choices, built from its chunks: as a whole (buffered) or piece by piece (streamed)."""

    def __init__(self, model: str, chat: bool, params: common_pb2.SamplingParams, tokenizer: Tokenizer | None, n: int):
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model
        self.chat = chat
        self.params = params
        self.tokenizer = tokenizer
        self.n = n
        self.prompt_tokens: dict[int, int] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.completion_tokens = 0
        self._head: str | None = None

    def _choice(self, prompt_index: int, chunk: common_pb2.SampleChunk) -> tuple[int, dict[str, Any], bool]:
        index = prompt_index * self.n + chunk.index
        if chunk.prompt_tokens:
            self.prompt_tokens[prompt_index] = chunk.prompt_tokens
        self.completion_tokens += len(chunk.token_ids)
        fresh = index not in self.choices
        choice = self.choices.setdefault(index, {"text": "", "tokens": [], "finish": None})
        choice["text"] += chunk.text
        choice["tokens"].append(chunk)
        if chunk.finish_reason:
            choice["finish"] = FINISH[chunk.finish_reason]
        return index, choice, fresh

    def add(self, prompt_index: int, chunk: common_pb2.SampleChunk) -> None:
        self._choice(prompt_index, chunk)

    def whole(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self.choices):
            choice = self.choices[index]
            logprobs = self._logprobs(choice["tokens"], 0) if self.params.logprobs else None
            if self.chat:
                choices.append({"index": index, "message": {"role": "assistant", "content": choice["text"]},
                                "logprobs": logprobs, "finish_reason": choice["finish"]})
            else:
                choices.append({"index": index, "text": choice["text"], "logprobs": logprobs, "finish_reason": choice["finish"]})
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion", "created": self.created,
                "model": self.model, "choices": choices, "usage": self.usage()}

    def piece(self, prompt_index: int, chunk: common_pb2.SampleChunk, *, usage: bool) -> dict[str, Any]:
        before = len(self.choices.get(prompt_index * self.n + chunk.index, {"text": ""})["text"])
        index, choice, fresh = self._choice(prompt_index, chunk)
        logprobs = self._logprobs([chunk], before) if self.params.logprobs else None
        if self.chat:
            delta: dict[str, Any] = {"content": chunk.text}
            if fresh:
                delta["role"] = "assistant"
            body = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": choice["finish"] if chunk.finish_reason else None}
        else:
            body = {"index": index, "text": chunk.text, "logprobs": logprobs, "finish_reason": choice["finish"] if chunk.finish_reason else None}
        piece = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion", "created": self.created,
                 "model": self.model, "choices": [body]}
        if usage:
            piece["usage"] = None
        return piece

    def event(self, prompt_index: int, chunk: common_pb2.SampleChunk, *, usage: bool) -> str:
        """The server-sent event of `piece`; without logprobs, the same bytes from a head made once per answer."""
        if self.params.logprobs:
            return _sse(self.piece(prompt_index, chunk, usage=usage))
        if self._head is None:
            self._head = ('data: {"id":' + json.dumps(self.id) + ',"object":' + ('"chat.completion.chunk"' if self.chat else '"text_completion"')
                          + ',"created":' + str(self.created) + ',"model":' + json.dumps(self.model) + ',"choices":[{"index":')
        index, choice, fresh = self._choice(prompt_index, chunk)
        text = json.dumps(chunk.text)
        if self.chat:
            body = ',"delta":{"content":' + text + (',"role":"assistant"}' if fresh else "}")
        else:
            body = ',"text":' + text
        finish = '"' + choice["finish"] + '"' if chunk.finish_reason else "null"
        return self._head + str(index) + body + ',"logprobs":null,"finish_reason":' + finish + ('}],"usage":null}\n\n' if usage else "}]}\n\n")

    def usage_piece(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion", "created": self.created,
                "model": self.model, "choices": [], "usage": self.usage()}

    def usage(self) -> dict[str, int]:
        prompt = sum(self.prompt_tokens.values())
        return {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens, "total_tokens": prompt + self.completion_tokens}

    def _token(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"token_id:{token_id}"
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _alternatives(self, top: common_pb2.TopLogprobs) -> dict[str, float]:
        """The legacy format's {token: logprob}: tokens that print alike (bytes of one character) keep the
        likelier one's value."""
        alternatives: dict[str, float] = {}
        for token_id, value in zip(top.token_ids, top.logprobs, strict=True):
            alternatives.setdefault(self._token(token_id), value)
        return alternatives

    def _logprobs(self, chunks: list[common_pb2.SampleChunk], text_offset: int) -> dict[str, Any]:
        ids = [t for c in chunks for t in c.token_ids]
        values = [v for c in chunks for v in c.logprobs]
        tops = [t for c in chunks for t in c.top_logprobs]
        strings = [self._token(t) for t in ids]
        if self.chat:
            content = []
            for i, (token, value) in enumerate(zip(strings, values, strict=True)):
                alternatives = []
                if i < len(tops):
                    alternatives = [{"token": (s := self._token(t)), "logprob": v, "bytes": list(s.encode())}
                                    for t, v in zip(tops[i].token_ids, tops[i].logprobs, strict=True)]
                content.append({"token": token, "logprob": value, "bytes": list(token.encode()), "top_logprobs": alternatives})
            return {"content": content}
        offsets = []
        for token in strings:
            offsets.append(text_offset)
            text_offset += len(token)
        return {
            "tokens": strings,
            "token_logprobs": values,
            "top_logprobs": [self._alternatives(top) for top in tops] if tops else None,
            "text_offset": offsets,
        }


def _checked(chunk: common_pb2.SampleChunk) -> common_pb2.SampleChunk:
    if chunk.finish_reason == common_pb2.FINISH_REASON_ABORTED:
        raise MintError(Code.UNAVAILABLE, "the engine aborted this sample before it finished; retry the request")
    return chunk


def _page(size: int, token: str) -> common_pb2.PageRequest:
    return common_pb2.PageRequest(page_size=size, page_token=token)


def _sse(value: dict[str, Any]) -> str:
    return f"data: {json.dumps(value, separators=(',', ':'))}\n\n"


def _model(name: str, created: int, owner: str, base: str | None) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": owner, "root": base or name, "parent": base}


async def _unless_gone(request: Request, work) -> Response:
    """Await `work`, unless the client disconnects first: then cancel it (freeing its engine work)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        return Response(status_code=499)  # nobody reads it
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParam(name, f"{name} must be an integer in {low}..{high}, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise BadParam(name, f"{name} must be an integer in {low}..{high}, got {value}")
    return value


def _refuse_unsupported(body: dict, names: tuple[str, ...]) -> None:
    for name in names:
        value = body.get(name)
        neutral = value in (None, 0, False, {}, []) or (name == "best_of" and value == body.get("n", 1))
        if not neutral:
            raise BadParam(name, f"{name} is not supported by MinT's engines; leave it out")


def _params(body: dict, default_max_tokens: int, *, logprobs: bool, top: int) -> common_pb2.SamplingParams:
    """SamplingParams from OpenAI's fields, each checked here so the error names it (the engine checks again)."""
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = default_max_tokens
    if not _is_int(max_tokens) or max_tokens < 1:
        raise BadParam("max_tokens", f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    temperature = body.get("temperature", 1.0)
    temperature = 1.0 if temperature is None else temperature
    if not _is_number(temperature) or not 0 <= temperature <= 2:
        raise BadParam("temperature", f"temperature must be a number in [0, 2], got {temperature!r}")
    top_p = body.get("top_p", 1.0)
    top_p = 1.0 if top_p is None else top_p
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise BadParam("top_p", f"top_p must be a number in (0, 1], got {top_p!r}")
    n = body.get("n", 1)
    n = 1 if n is None else n
    if not _is_int(n) or not 1 <= n <= 64:
        raise BadParam("n", f"n must be an integer in 1..64, got {n!r}")
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 16 or any(not isinstance(s, str) or not s or len(s) > 256 for s in stops):
        raise BadParam("stop", "stop must be a string or a list of at most 16 non-empty strings of up to 256 characters")
    ignore_eos = body.get("ignore_eos", False)  # vLLM's extension, for benchmarks and evaluations of fixed length
    if not isinstance(ignore_eos, bool):
        raise BadParam("ignore_eos", f"ignore_eos must be true or false, got {ignore_eos!r}")
    params = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, n=n, stop=stops,
                                       logprobs=logprobs, top_logprobs=top, ignore_eos=ignore_eos)
    seed = body.get("seed")
    if seed is not None:
        if not _is_int(seed) or not -(2**63) <= seed < 2**63:
            raise BadParam("seed", f"seed must be a 64-bit integer, got {seed!r}")
        params.seed = seed
    return params


def _completion_prompts(prompt) -> list[common_pb2.Prompt]:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
    if isinstance(prompt, str):
        return [common_pb2.Prompt(text=prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [common_pb2.Prompt(text=p) for p in prompt]
        if all(_is_int(t) for t in prompt):
            return [_token_prompt(prompt)]
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt):
            return [_token_prompt(p) for p in prompt]
    raise BadParam("prompt", "prompt must be a string, a list of strings, a list of token ids or a list of such lists (none empty)")


def _token_prompt(ids: list[int]) -> common_pb2.Prompt:
    if any(not 0 <= t < 2**31 for t in ids):
        raise BadParam("prompt", "token ids in prompt must be non-negative 32-bit integers")
    return common_pb2.Prompt(tokens=common_pb2.TokenIds(ids=ids))


def _chat_messages(messages) -> list[common_pb2.ChatMessage]:
    if not isinstance(messages, list) or not messages:
        raise BadParam("messages", "messages must be a non-empty list of {role, content} objects")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadParam(f"messages[{i}]", f"messages[{i}] must be an object with a role and a content")
        content = message.get("content")
        if isinstance(content, list):
            if any(not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str) for part in content):
                raise BadParam(f"messages[{i}].content", "only text content parts ({'type': 'text', 'text': ...}) are served")
            content = "".join(part["text"] for part in content)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise BadParam(f"messages[{i}].content", f"messages[{i}].content must be a string or a list of text parts")
        out.append(common_pb2.ChatMessage(role=message["role"], content=content))
    return out
