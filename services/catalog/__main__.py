"""python -m services.catalog: the catalog service, configured from MINT_* environment variables."""

import logging

from services.catalog.main import serve

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
serve()
