"""Recipes built only on the public SDK primitives, like a cookbook: SFT and GRPO, with built-in tasks."""
