"""TrainerService over gRPC: Tinker-shaped messages in, `Trainer` calls, messages out."""

from __future__ import annotations

from mint import auth
from mint.errors import invalid
from mint.names import PolicyName
from mint.params import AdamParams
from mint.proto import common_pb2, trainer_pb2, trainer_pb2_grpc
from services.trainer.losses import FLOAT_INPUTS, INT_INPUTS, LossRow
from services.trainer.session import Session
from services.trainer.trainer import PassResult, Trainer


def loss_row_from_pb(message: trainer_pb2.Datum, index: int) -> LossRow:
    """The datum of a request, each loss input in the form its loss reads (`LossRow.check` then checks values
    and lengths against the loss)."""
    inputs: dict[str, list] = {}
    for key, tensor in message.loss_fn_inputs.items():
        if key not in INT_INPUTS + FLOAT_INPUTS:
            raise invalid(f"datum {index}: unknown loss_fn_inputs key {key[:64]!r}; expected one of {', '.join(INT_INPUTS + FLOAT_INPUTS)}")
        ints = key in INT_INPUTS
        values, other = (tensor.int_data, tensor.float_data) if ints else (tensor.float_data, tensor.int_data)
        if other:
            want, got = ("int_data", "float_data") if ints else ("float_data", "int_data")
            raise invalid(f"datum {index}: loss_fn_inputs[{key!r}] holds {'token ids' if ints else 'floats'} in {want}; got {len(other)} values in {got}")
        if tensor.shape and list(tensor.shape) != [len(values)]:
            raise invalid(f"datum {index}: loss_fn_inputs[{key!r}] has shape {list(tensor.shape)[:8]} for {len(values)} values; expected [{len(values)}]")
        inputs[key] = list(values)
    return LossRow(tokens=list(message.tokens), **inputs)


def result_pb(result: PassResult) -> trainer_pb2.ForwardBackwardResponse:
    return trainer_pb2.ForwardBackwardResponse(
        loss_fn_outputs=[
            trainer_pb2.LossFnOutput(outputs={"logprobs": common_pb2.TensorData(float_data=lp, shape=[len(lp)])}) for lp in result.logprobs
        ],
        metrics=result.metrics,
    )


def session_pb(session: Session) -> trainer_pb2.TrainingSession:
    return trainer_pb2.TrainingSession(
        session_id=session.session_id,
        policy=session.full_policy,
        base_model=session.base_model,
        rank=session.config.r,
        alpha=session.config.lora_alpha,
        target_modules=list(session.config.target_modules),
        step=session.step,
        last_published_number=session.last_published,
        closed=session.closed,
    )


def policy_for(name: str) -> tuple[str, str]:
    """(tenant, policy) for a caller: members only within their own tenant."""
    parsed = PolicyName.parse(name)
    principal = auth.current_principal()
    tenant = parsed.tenant or principal.tenant
    if tenant != principal.tenant and not principal.privileged:
        raise invalid(f"a {principal.role.value} key of tenant {principal.tenant} cannot train policies of {tenant}")
    return tenant, parsed.name


def asking_key() -> str:
    """The id of the key that asked for this call: the caller's, or the one a service key acts on behalf of."""
    principal = auth.current_principal()
    return principal.on_behalf_of or principal.key_id


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, trainer: Trainer, ensure_policy=None):
        """`ensure_policy(tenant, policy, base_model, on_behalf_of)` creates the policy in the catalog when it
        is missing."""
        self.trainer = trainer
        self.ensure_policy = ensure_policy

    def _session(self, session_id: str) -> Session:
        principal = auth.current_principal()
        return self.trainer.session(session_id, None if principal.privileged else principal.tenant)

    def CreateSession(self, request, context):
        tenant, policy = policy_for(request.policy)
        settings = dict(
            rank=request.rank or 16, alpha=request.alpha, train_attn=request.train_attn, train_mlp=request.train_mlp,
            use_rslora=request.use_rslora, base_model=request.base_model,
        )
        # A refused session creates no policy: its settings are checked, and the tenant's cap, first.
        self.trainer.session_config(policy=policy, **settings)
        self.trainer.make_room(tenant)
        if self.ensure_policy is not None:
            self.ensure_policy(tenant, policy, self.trainer.base_model, asking_key())
        session = self.trainer.create_session(tenant=tenant, policy=policy, seed=request.seed, created_by=asking_key(), **settings)
        return session_pb(session)

    def GetSession(self, request, context):
        return session_pb(self._session(request.session_id))

    def CloseSession(self, request, context):
        session = self._session(request.session_id)
        self.trainer.close_session(session)
        return session_pb(session)

    def ForwardBackward(self, request, context):
        session = self._session(request.session_id)
        data = [loss_row_from_pb(d, i) for i, d in enumerate(request.data)]
        return result_pb(self.trainer.forward_backward(session, data, request.loss_fn or "cross_entropy", dict(request.loss_fn_config)))

    def Forward(self, request, context):
        session = self._session(request.session_id)
        data = [loss_row_from_pb(d, i) for i, d in enumerate(request.data)]
        return result_pb(self.trainer.forward(session, data, request.loss_fn or "cross_entropy", dict(request.loss_fn_config)))

    def OptimStep(self, request, context):
        session = self._session(request.session_id)
        metrics = self.trainer.optim_step(session, AdamParams.from_proto(request.adam_params))
        return trainer_pb2.OptimStepResponse(step=session.step, metrics=metrics)

    def SaveWeightsForSampler(self, request, context):
        session = self._session(request.session_id)
        published = self.trainer.save_weights_for_sampler(session, request.name, dict(request.metrics), requested_by=asking_key())
        return trainer_pb2.SaveWeightsForSamplerResponse(address=published.address, revision_number=published.number, adapter=published.adapter)

    def SaveState(self, request, context):
        session = self._session(request.session_id)
        return trainer_pb2.SaveStateResponse(path=self.trainer.save_state(session, request.name or f"step-{session.step}"))

    def GetTokenizer(self, request, context):
        auth.current_principal()
        return trainer_pb2.TokenizerFiles(base_model=self.trainer.base_model, files=self.trainer.tokenizer_files())

    def LoadState(self, request, context):
        session = self._session(request.session_id)
        self.trainer.load_state(session, request.path, request.with_optimizer)
        return session_pb(session)
