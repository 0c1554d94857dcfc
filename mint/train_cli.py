"""`mint train sft|grpo`: a recipe with a progress bar and per-step metrics, against a MinT server
(--address / $MINT_ADDRESS) or an embedded one started on --model."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mint.errors import Code, MintError


def run_train(args) -> int:
    console = Console()
    try:
        # A bad file or setting stops us before any server starts, or any session or policy exists.
        examples = _sft_examples(args) if args.recipe == "sft" else []
        config = _config(args)
        with _server(args) as (address, api_key):
            return _run(args, examples, config, address, api_key, console)
    except MintError as err:
        console.print(f"[red]{err}[/red]")
        return 1


@contextlib.contextmanager
def _server(args):
    address = args.address or os.environ.get("MINT_ADDRESS")
    if address:
        yield address, args.api_key or os.environ.get("MINT_API_KEY", "")
        return
    if not args.model:
        print("give --address (or set MINT_ADDRESS) for a running server, or --model DIR to start one here", file=sys.stderr)
        raise SystemExit(2)
    from mint.procs import embedded

    stack = embedded(model_path=args.model, data_dir=args.data_dir, address="127.0.0.1:0")
    try:
        yield stack.address, stack.admin_key
    finally:
        stack.stop()


def _run(args, examples: list, config, address: str, api_key: str, console: Console) -> int:
    from mint.sdk import ServiceClient

    service = ServiceClient(address, api_key)
    tokenizer = service.get_tokenizer()
    base_model = args.base_model or service.engines()[0].base_model
    client = service.create_lora_training_client(base_model, args.policy, rank=args.rank, seed=args.seed)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[metrics]}"))
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(f"{args.recipe} {client.policy}", total=args.steps, metrics="")

        def on_step(report) -> None:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in report.metrics.items())
            progress.update(bar, advance=1, metrics=shown)
            published = f"  -> {report.published}" if report.published else ""
            progress.console.print(f"step {report.step:>4}  {shown}{published}")  # the run's curve stays on screen

        if args.recipe == "sft":
            from mint.recipes.sft import run_sft

            run_sft(client, tokenizer, examples, config, on_step)
        else:
            from mint.recipes.grpo import run_grpo

            run_grpo(service, client, tokenizer, config, on_step)
    return 0


def _config(args):
    if args.recipe == "sft":
        from mint.recipes.sft import SFTConfig

        return SFTConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, publish_every=args.publish_every, seed=args.seed)
    from mint.recipes.grpo import GRPOConfig

    return GRPOConfig(
        task=args.task, reward_fn=args.reward, steps=args.steps, prompts_per_step=args.prompts, group_size=args.group_size,
        max_tokens=args.max_tokens, temperature=args.temperature, learning_rate=args.lr, kl_coef=args.kl, seed=args.seed,
    )


def _sft_examples(args) -> list:
    """A built-in task, or the examples of --data, a file read here, on the client: it travels as data."""
    from mint.recipes.tasks import parse_examples, sft_examples

    if bool(args.task) == bool(args.data):
        raise MintError(Code.INVALID_ARGUMENT, "give either --task (a built-in task) or --data (a JSONL file of yours)")
    if args.task:
        return sft_examples(args.task)
    try:
        data = Path(args.data).read_bytes()
    except OSError as err:
        raise MintError(Code.INVALID_ARGUMENT, f"cannot read --data {args.data}: {err.strerror}") from None
    return parse_examples(data, args.data)
