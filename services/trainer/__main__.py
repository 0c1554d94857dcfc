"""python -m services.trainer: a trainer process, configured from MINT_* environment variables."""

import logging

from mint.runtime import tune_allocator
from services.trainer.main import serve

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
tune_allocator()
serve()
