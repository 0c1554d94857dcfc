"""python -m services.gateway: the gateway process, configured from MINT_* environment variables."""

import logging

from services.gateway.main import serve

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
serve()
