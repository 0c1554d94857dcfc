"""python -m services.trainer: a trainer process, configured from MINT_* environment variables."""

import logging

from services.trainer.main import serve

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
serve()
