"""A training session: one policy's LoRA parameters on the shared base, its optimizer, and its state file.

Parameters live in the packed layout the model uses (per layer and projection, A [num_slices, r, in] and
B [out, r]), initialized as PEFT does (A Kaiming-uniform, B zero: the adapter starts as the base).
`save_state` writes parameters and AdamW moments to one safetensors file with the session's settings in its
metadata, so `load_state` resumes exactly, optimizer included.
"""

from __future__ import annotations

import json
import math
import os
import threading
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from mint.adapters import ATTN_MODULES, MLP_MODULES, AdapterConfig, AdapterWeights
from mint.adapters.packing import lora_targets, unpack
from mint.errors import invalid, not_found
from mint.models.config import ModelConfig
from mint.params import AdamParams


class Session:
    def __init__(
        self,
        *,
        tenant: str,
        policy: str,
        base_model: str,
        config: AdapterConfig,
        model_config: ModelConfig,
        seed: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        session_id: str | None = None,
        created_by: str | None = None,
    ):
        self.session_id = session_id or f"sess-{uuid.uuid4().hex[:16]}"
        self.tenant, self.policy, self.base_model = tenant, policy, base_model
        self.created_by = created_by  # the id of the key that asked for the session
        self.config = config
        self.model_config = model_config
        self.seed = seed
        self.step = 0
        self.last_published = 0
        self.closed = False
        self.lock = threading.Lock()  # one call at a time per session
        # Kept by the trainer under its sessions lock: when a call last used the session, how many calls on
        # it have not returned yet (a pass queued or running), and the state file it saved last.
        self.last_used = 0.0
        self.in_flight = 0
        self.last_saved: str | None = None
        gen = torch.Generator().manual_seed(seed)
        targets = [t for t in lora_targets(model_config) if set(t.modules) & set(config.target_modules)]
        self.params: list[dict[str, tuple[nn.Parameter, nn.Parameter]]] = []
        for _ in range(model_config.num_layers):
            layer = {}
            for target in targets:
                a = torch.empty(len(target.modules), config.r, target.in_features)
                bound = 1 / math.sqrt(target.in_features)  # kaiming_uniform_(a=sqrt(5)), PEFT's default
                a.uniform_(-bound, bound, generator=gen)
                b = torch.zeros(target.out_features, config.r)
                layer[target.path] = (nn.Parameter(a.to(device, dtype)), nn.Parameter(b.to(device, dtype)))
            self.params.append(layer)
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=1e-4, foreach=True)

    @property
    def full_policy(self) -> str:
        return f"{self.tenant}/{self.policy}"

    def parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.params for pair in layer.values() for p in pair]

    def named_parameters(self) -> dict[str, nn.Parameter]:
        return {
            f"layers.{i}.{path}.lora_{w}": p
            for i, layer in enumerate(self.params)
            for path, pair in layer.items()
            for w, p in zip("AB", pair, strict=True)
        }

    def optim_step(self, params: AdamParams) -> dict[str, float]:
        params.check()
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0
        if not math.isfinite(grad_norm):
            # Adam's moments of such gradients overflow and turn the weights into NaN. The gradients go, so
            # the session can carry on.
            self.optimizer.zero_grad(set_to_none=True)
            raise invalid(
                f"the gradients since the last step overflow the model's float precision (norm {grad_norm}): their "
                "forward_backward inputs were too large; no step was taken and those gradients were dropped"
            )
        if params.grad_clip_norm and grad_norm > params.grad_clip_norm:
            for g in grads:
                g.mul_(params.grad_clip_norm / (grad_norm + 1e-6))
        for group in self.optimizer.param_groups:
            group.update(lr=params.learning_rate, betas=(params.beta1, params.beta2), eps=params.eps, weight_decay=params.weight_decay)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"grad_norm": grad_norm, "learning_rate": params.learning_rate}

    def release(self) -> None:
        """Drop the parameters, their gradients and the optimizer's moments, once the session is closed and no
        call on it is left: its memory is freed even while something still refers to the session (a response
        being written, the pass worker's last batch)."""
        self.params = []
        self.optimizer.state.clear()
        self.optimizer.param_groups.clear()

    def adapter_weights(self) -> AdapterWeights:
        """The current parameters as a PEFT adapter."""
        layers = [{path: (a.detach().float().cpu(), b.detach().float().cpu()) for path, (a, b) in layer.items()} for layer in self.params]
        return unpack(layers, self.config, self.model_config)

    # --- state files -------------------------------------------------------------------------------------

    def save_state(self, path: Path) -> None:
        tensors = {f"param.{name}": p.detach().contiguous().cpu() for name, p in self.named_parameters().items()}
        names = {id(p): name for name, p in self.named_parameters().items()}
        for param, state in self.optimizer.state.items():
            for key in ("exp_avg", "exp_avg_sq"):
                tensors[f"{key}.{names[id(param)]}"] = state[key].contiguous().cpu()
        optimizer_steps = {names[id(p)]: float(s["step"]) for p, s in self.optimizer.state.items()}
        metadata = {
            "session": json.dumps(
                {
                    "tenant": self.tenant, "policy": self.policy, "base_model": self.base_model, "seed": self.seed,
                    "step": self.step, "last_published": self.last_published, "adapter_config": self.config.to_dict(),
                    "optimizer_steps": optimizer_steps,
                }
            )
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)

    def load_state(self, path: Path, *, with_optimizer: bool) -> None:
        if not path.is_file():
            raise not_found(f"no saved state at {path}")
        try:  # a file beside the states (a write a crash cut short) is not one
            with safe_open(str(path), framework="pt") as f:
                saved = json.loads((f.metadata() or {})["session"])
            config = AdapterConfig.from_dict(saved["adapter_config"])
            tensors = load_file(str(path))
        except (SafetensorError, OSError, KeyError, TypeError, ValueError) as err:
            raise invalid(f"{path} is not a state file that SaveState wrote ({type(err).__name__}: {str(err)[:200]})") from None
        if saved["base_model"] != self.base_model or config.r != self.config.r or config.target_modules != self.config.target_modules:
            raise invalid(
                f"state at {path} is for base {saved['base_model']!r}, rank {config.r}, modules {list(config.target_modules)}; "
                f"this session is base {self.base_model!r}, rank {self.config.r}, modules {list(self.config.target_modules)}"
            )
        params = self.named_parameters()
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(tensors[f"param.{name}"])
        self.optimizer.state.clear()
        if with_optimizer:
            for name, param in params.items():
                if f"exp_avg.{name}" in tensors:
                    self.optimizer.state[param] = {
                        "step": torch.tensor(saved["optimizer_steps"][name]),
                        "exp_avg": tensors[f"exp_avg.{name}"].to(param.device),
                        "exp_avg_sq": tensors[f"exp_avg_sq.{name}"].to(param.device),
                    }
        self.step = saved["step"]
        self.last_published = saved["last_published"]


def target_modules(train_attn: bool, train_mlp: bool) -> tuple[str, ...]:
    if not (train_attn or train_mlp):
        raise invalid("train at least one of attention (train_attn) and MLP (train_mlp)")
    return (ATTN_MODULES if train_attn else ()) + (MLP_MODULES if train_mlp else ())
