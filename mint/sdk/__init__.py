"""MinT's Python SDK: `ServiceClient` and the training and sampling clients it creates."""

from mint.sdk.catalog import CatalogClient
from mint.sdk.client import SamplingClient, ServiceClient, TrainingClient
from mint.sdk.types import (
    AdamParams,
    Datum,
    ForwardBackwardOutput,
    SampledSequence,
    SampleResponse,
    SamplingParams,
    next_token_datum,
)

__all__ = [
    "AdamParams",
    "CatalogClient",
    "Datum",
    "ForwardBackwardOutput",
    "SampleResponse",
    "SampledSequence",
    "SamplingClient",
    "SamplingParams",
    "ServiceClient",
    "TrainingClient",
    "next_token_datum",
]
