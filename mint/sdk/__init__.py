"""MinT's Python SDK."""

from mint.sdk.catalog import CatalogClient

__all__ = ["CatalogClient"]
