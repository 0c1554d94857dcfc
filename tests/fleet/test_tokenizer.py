"""A fleet with no trainer gives clients its base's tokenizer: the gateway asks an engine serving that base."""

from __future__ import annotations

from mint.models.tokenizer import Tokenizer
from services.local_fleet import BASE_MODEL


def test_a_fleet_without_a_trainer_gives_the_bases_tokenizer(fleet, fleet_base):
    assert fleet.trainer is None
    own = Tokenizer.from_dir(fleet_base)
    for served in (fleet.client.get_tokenizer(), fleet.client.get_tokenizer(BASE_MODEL)):
        assert served.backend.to_str() == own.backend.to_str() and served.chat_template == own.chat_template
        assert served.eos_token_ids == own.eos_token_ids
        assert served.encode("ping pong") == own.encode("ping pong")
