"""Base models: the resident models adapters are trained for and validated against."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select

from mint.adapters import LORA_MODULES
from mint.errors import Code, MintError, invalid, not_found
from mint.names import check_base_model_name, check_sha256
from services.catalog.store.audit import record_event
from services.catalog.store.db import Database
from services.catalog.store.entities import BaseModel, Page, utcnow
from services.catalog.store.pages import BASE_MODELS, PageTokens, page_size
from services.catalog.store.tables import base_models


def _entity(row) -> BaseModel:
    return BaseModel(
        id=row.id,
        name=row.name,
        architecture=row.architecture,
        config=row.config,
        weights_sha256=row.weights_sha256,
        module_shapes={k: (int(v[0]), int(v[1])) for k, v in row.module_shapes.items()},
        num_layers=row.num_layers,
        created_at=row.created_at,
    )


class BaseModelStore:
    def __init__(self, db: Database, tokens: PageTokens):
        self.db = db
        self.tokens = tokens

    def register(
        self,
        *,
        name: str,
        architecture: str,
        config: dict[str, Any],
        weights_sha256: str,
        module_shapes: dict[str, tuple[int, int]],
        num_layers: int,
        actor: str,
    ) -> BaseModel:
        check_base_model_name(name)
        if not architecture:
            raise invalid("base model architecture is required (e.g. llama, qwen2, qwen3)")
        check_sha256(weights_sha256, "weights_sha256")
        if num_layers < 1:
            raise invalid(f"num_layers must be >= 1, got {num_layers}")
        unknown = sorted(set(module_shapes) - set(LORA_MODULES))
        if unknown or not module_shapes:
            raise invalid(f"module_shapes keys {unknown or '(none)'} must be among {list(LORA_MODULES)}")
        for module, (d_in, d_out) in module_shapes.items():
            if d_in < 1 or d_out < 1:
                raise invalid(f"module {module} has invalid shape ({d_in}, {d_out})")
        now = utcnow()
        values = dict(
            name=name,
            architecture=architecture,
            config=config,
            weights_sha256=weights_sha256,
            module_shapes={k: [int(v[0]), int(v[1])] for k, v in module_shapes.items()},
            num_layers=num_layers,
            created_at=now,
        )
        with self.db.write() as conn:
            existing = conn.execute(select(base_models).where(base_models.c.name == name)).first()
            if existing is not None:
                if existing.weights_sha256 == weights_sha256 and existing.module_shapes == values["module_shapes"]:
                    return _entity(existing)  # registering the same base again is a no-op
                raise MintError(Code.ALREADY_EXISTS, f"base model {name!r} is already registered with other weights")
            model_id = conn.execute(insert(base_models).values(**values).returning(base_models.c.id)).scalar_one()
            record_event(conn, tenant_id=None, actor=actor, action="register_base_model", details={"name": name, "weights_sha256": weights_sha256})
        return BaseModel(id=model_id, **{**values, "module_shapes": dict(module_shapes)})

    def get(self, name: str) -> BaseModel:
        with self.db.read() as conn:
            row = conn.execute(select(base_models).where(base_models.c.name == name)).first()
        if row is None:
            raise not_found(f"base model {name!r} is not registered")
        return _entity(row)

    def list(self, *, page_token: str = "", limit: int = 0) -> Page[BaseModel]:
        size = page_size(limit)
        after = self.tokens.decode(page_token, BASE_MODELS, ())
        query = select(base_models).order_by(base_models.c.name).limit(size + 1)
        if after is not None:
            query = query.where(base_models.c.name > after[0])
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        items = [_entity(r) for r in rows[:size]]
        return Page(items=items, next_token=self.tokens.encode(BASE_MODELS, (), (items[-1].name,)) if len(rows) > size else "")
