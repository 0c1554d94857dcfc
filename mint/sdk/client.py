"""The MinT client: `ServiceClient` connects to a gateway (or `mint serve`) and hands out training and
sampling clients with Tinker's method names. Every blocking method has an `_async` twin for asyncio.

    service = ServiceClient("127.0.0.1:50050", api_key)
    trainer = service.create_lora_training_client("tiny", "acme/bot", rank=16)
    trainer.forward_backward(data, "cross_entropy"); trainer.optim_step(AdamParams(learning_rate=1e-4))
    sampler = trainer.save_weights_and_get_sampling_client("step-1")
    sampler.sample("Hello", num_samples=4, sampling_params=SamplingParams(max_tokens=32))

Addresses: `host:port` (plaintext, unless a CA is given), `grpcs://host:port` or `https://host:port` (TLS,
checked against `ca_file`, else $MINT_CA_FILE, else gRPC's default roots, the well-known public CAs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import time
from collections.abc import Sequence

from mint import auth
from mint.errors import Code, MintError
from mint.proto import common_pb2, engine_pb2, gateway_pb2, gateway_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from mint.sdk.catalog import CatalogClient, rpc, rpc_stream
from mint.sdk.types import (
    AdamParams,
    Datum,
    Finish,
    ForwardBackwardOutput,
    SampledSequence,
    SampleResponse,
    SamplingParams,
    prompt_proto,
)
from mint.server import channel
from mint.tls import CERT_PEM, TLSConfig, read_pem


def client_tls(ca_file: str | None = None) -> TLSConfig:
    """A client's TLS: trust `ca_file` (default: $MINT_CA_FILE), checked now so a wrong path is named."""
    name, path = ("ca_file", ca_file) if ca_file else ("MINT_CA_FILE", os.environ.get("MINT_CA_FILE", ""))
    if path:
        read_pem(path, name, CERT_PEM)
    return TLSConfig(ca_file=path)


def _async(method):
    """An asyncio twin of a blocking client method, run on the default executor."""

    @functools.wraps(method)
    async def twin(self, *args, **kwargs):
        return await asyncio.to_thread(method, self, *args, **kwargs)

    twin.__name__ = f"{method.__name__}_async"
    return twin


class ServiceClient:
    def __init__(
        self, address: str | None = None, api_key: str | None = None, *, ca_file: str | None = None, timeout_s: float = 600.0,
    ):
        """`ca_file`: the PEM CA bundle a TLS server's certificate is checked against (default: $MINT_CA_FILE);
        given, a bare `host:port` is reached over TLS too."""
        self.address = address or os.environ.get("MINT_ADDRESS", "127.0.0.1:50050")
        self.api_key = api_key or os.environ.get("MINT_API_KEY", "")
        if not self.api_key:
            raise MintError(Code.UNAUTHENTICATED, "pass api_key or set MINT_API_KEY")
        self.channel = channel(self.address, client_tls(ca_file))
        self.metadata = auth.call_metadata(self.api_key)
        self.timeout_s = timeout_s
        self.catalog = CatalogClient(self.channel, self.api_key, timeout_s=timeout_s)
        self._sampling = gateway_pb2_grpc.SamplingServiceStub(self.channel)
        self._trainer = trainer_pb2_grpc.TrainerServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def _call(self, stub, name: str, request, timeout_s: float | None = None):
        return rpc(getattr(stub, name), request, metadata=self.metadata, timeout=timeout_s or self.timeout_s)

    def create_lora_training_client(
        self, base_model: str, policy: str, rank: int = 16, *, alpha: float = 0.0, train_attn: bool = True, train_mlp: bool = True,
        seed: int = 0, use_rslora: bool = False,
    ) -> TrainingClient:
        request = trainer_pb2.CreateSessionRequest(
            base_model=base_model, policy=policy, rank=rank, alpha=alpha, train_attn=train_attn, train_mlp=train_mlp,
            seed=seed, use_rslora=use_rslora,
        )
        return TrainingClient(self, self._call(self._trainer, "CreateSession", request))

    def create_sampling_client(self, model: str = "", *, base_model: str = "") -> SamplingClient:
        """Sample a policy revision (`acme/bot@prod`, `mint://acme/bot@7`), or the base alone."""
        return SamplingClient(self, model.removeprefix("mint://"), base_model)

    def activate_wave(self, refs: Sequence[str], name: str = "") -> gateway_pb2.Wave:
        return self._call(self._sampling, "ActivateWave", gateway_pb2.ActivateWaveRequest(refs=list(refs), name=name))

    def get_wave(self, wave_id: str) -> gateway_pb2.Wave:
        return self._call(self._sampling, "GetWave", gateway_pb2.GetWaveRequest(wave_id=wave_id))

    def engines(self) -> list[gateway_pb2.EngineInfo]:
        return list(self._call(self._sampling, "ListEngines", gateway_pb2.ListEnginesRequest()).engines)

    def get_tokenizer(self, base_model: str = ""):
        """The tokenizer (mint.models.tokenizer.Tokenizer) of `base_model`, or of the one base the engines
        serve, from an engine serving it."""
        from mint.models.tokenizer import Tokenizer

        files = self._call(self._sampling, "GetTokenizer", engine_pb2.GetBaseTokenizerRequest(base_model=base_model))
        return Tokenizer.from_files(files.files)


class TrainingClient:
    """One training session of a policy on the trainer's resident base."""

    def __init__(self, service: ServiceClient, session: trainer_pb2.TrainingSession):
        self.service = service
        self.session_id = session.session_id
        self.policy = session.policy
        self.base_model = session.base_model
        self.rank = session.rank

    def _call(self, name: str, request):
        return self.service._call(self.service._trainer, name, request)

    def forward_backward(self, data: Sequence[Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict[str, float] | None = None) -> ForwardBackwardOutput:
        request = trainer_pb2.ForwardBackwardRequest(
            session_id=self.session_id, data=[d.to_proto() for d in data], loss_fn=loss_fn, loss_fn_config=loss_fn_config or {}
        )
        return _output(self._call("ForwardBackward", request))

    def forward(self, data: Sequence[Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict[str, float] | None = None) -> ForwardBackwardOutput:
        request = trainer_pb2.ForwardRequest(
            session_id=self.session_id, data=[d.to_proto() for d in data], loss_fn=loss_fn, loss_fn_config=loss_fn_config or {}
        )
        return _output(self._call("Forward", request))

    def optim_step(self, adam_params: AdamParams) -> dict[str, float]:
        response = self._call("OptimStep", trainer_pb2.OptimStepRequest(session_id=self.session_id, adam_params=adam_params.to_proto()))
        return {"step": float(response.step), **response.metrics}

    def save_weights_for_sampler(self, name: str = "", metrics: dict[str, float] | None = None) -> trainer_pb2.SaveWeightsForSamplerResponse:
        """Publish the current weights as the policy's next revision; returns its mint:// address."""
        request = trainer_pb2.SaveWeightsForSamplerRequest(session_id=self.session_id, name=name, metrics=metrics or {})
        return self._call("SaveWeightsForSampler", request)

    def save_weights_and_get_sampling_client(self, name: str = "", metrics: dict[str, float] | None = None) -> SamplingClient:
        return self.service.create_sampling_client(self.save_weights_for_sampler(name, metrics).address)

    def save_state(self, name: str) -> str:
        return self._call("SaveState", trainer_pb2.SaveStateRequest(session_id=self.session_id, name=name)).path

    def load_state(self, path: str, with_optimizer: bool = True) -> trainer_pb2.TrainingSession:
        return self._call("LoadState", trainer_pb2.LoadStateRequest(session_id=self.session_id, path=path, with_optimizer=with_optimizer))

    def info(self) -> trainer_pb2.TrainingSession:
        return self._call("GetSession", trainer_pb2.GetSessionRequest(session_id=self.session_id))

    def close(self) -> None:
        self._call("CloseSession", trainer_pb2.CloseSessionRequest(session_id=self.session_id))

    forward_backward_async = _async(forward_backward)
    forward_async = _async(forward)
    optim_step_async = _async(optim_step)
    save_weights_for_sampler_async = _async(save_weights_for_sampler)
    save_state_async = _async(save_state)
    load_state_async = _async(load_state)


class SamplingClient:
    """Samples one policy revision (or the base) through the gateway's engines."""

    RETRIES = 3

    def __init__(self, service: ServiceClient, model: str, base_model: str):
        self.service = service
        self.model = model
        self.base_model = base_model

    def sample(
        self,
        prompt: str | Sequence[int] | Sequence[dict[str, str]],
        num_samples: int = 1,
        sampling_params: SamplingParams | None = None,
    ) -> SampleResponse:
        request = gateway_pb2.SampleRequest(
            model=self.model, base_model=self.base_model, prompt=prompt_proto(prompt),
            params=dataclasses.replace(sampling_params or SamplingParams(), n=num_samples).to_proto(),
            buffered=True,  # the answer is returned whole anyway
        )
        for attempt in range(self.RETRIES + 1):
            try:
                return self._sample_once(request, num_samples)
            except MintError as err:
                # An engine that died mid-answer: nothing was handed to the caller yet, so ask again.
                if err.code is not Code.UNAVAILABLE or attempt == self.RETRIES:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    def _sample_once(self, request: gateway_pb2.SampleRequest, num_samples: int) -> SampleResponse:
        sequences = [SampledSequence(tokens=[], text="", logprobs=[]) for _ in range(num_samples)]
        prompt_tokens = 0
        stream = rpc_stream(self.service._sampling.Sample, request, metadata=self.service.metadata, timeout=self.service.timeout_s)
        for chunk in stream:
            seq = sequences[chunk.index]
            seq.tokens += chunk.token_ids
            seq.text += chunk.text
            seq.logprobs += chunk.logprobs
            if chunk.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED:
                seq.finish = Finish(chunk.finish_reason)
            prompt_tokens = prompt_tokens or chunk.prompt_tokens
        return SampleResponse(sequences=sequences, prompt_tokens=prompt_tokens)

    def compute_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        request = gateway_pb2.LogprobsRequest(
            model=self.model, base_model=self.base_model, sequences=[common_pb2.TokenIds(ids=list(s)) for s in sequences]
        )
        response = self.service._call(self.service._sampling, "ComputeLogprobs", request)
        return [list(s.logprobs) for s in response.sequences]

    sample_async = _async(sample)
    compute_logprobs_async = _async(compute_logprobs)


def _output(response: trainer_pb2.ForwardBackwardResponse) -> ForwardBackwardOutput:
    return ForwardBackwardOutput(
        loss_fn_outputs=[{k: list(v.float_data) for k, v in out.outputs.items()} for out in response.loss_fn_outputs],
        metrics=dict(response.metrics),
    )

