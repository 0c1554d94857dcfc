"""Fuzzing at length: MinT's parsers and every public RPC of a live embedded server, on the strategies and
properties of tests/fuzz (strategies.py, parsers.py, live.py), for many more cases than CI runs.

    python -m bench.fuzz [--quick] [--parser-cases N] [--rpc-cases N] [--threads N] [--seed N]

Parser cases: safetensors/PEFT files (valid adapters, their mutations, random files), adapter_config.json,
revision refs and names against an independent grammar, chat conversations under three templates. RPC
cases: generated, mutated and broken requests of every method, from several client threads at once.

Counted: `crashes` (a parser raising anything but MintError, a case the harness could not send, the server
unhealthy at a checkpoint), `internal_errors` (INTERNAL, UNKNOWN or DATA_LOSS answers), `hangs` (calls past
their deadline, parser cases over a second), `stored_on_refusal` (refused calls after which the catalog, the
blob store or the trainer kept something, and changes while only non-writing calls ran), `violations`
(another property of tests/fuzz/parsers.py broken), and `server_errors_logged` (ERROR records in the log).
"""

from __future__ import annotations

import argparse
import collections
import logging
import queue
import threading
import time
import traceback
from pathlib import Path

import grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from bench.common import PeakRss, report, scratch_dir
from mint.models.tokenizer import Tokenizer, write_byte_level_tokenizer
from tests.fuzz import parsers
from tests.fuzz import strategies as fs
from tests.fuzz.live import METHODS, World, cases

SLOW_PARSER_CASE_S = 1.0
CHECKPOINT_EVERY = 500  # RPC cases between health checks (and reopening a closed training session)
SHOWN = 5  # findings printed per kind


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.by_target: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.findings: dict[str, list[str]] = collections.defaultdict(list)

    def add(self, target: str, outcome: str, finding: str | None = None, kind: str | None = None) -> None:
        with self.lock:
            self.counts["cases"] += 1
            self.by_target[target][outcome] += 1
            if kind:
                self.counts[kind] += 1
                if len(self.findings[kind]) < SHOWN:
                    self.findings[kind].append(f"{target}: {finding}")


class ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < SHOWN:
            self.first.append(f"{record.name}: {record.getMessage()[:300]}")


def fuzz(strategy, check, examples: int, seed: int, target: str, tally: Tally) -> None:
    """Run `check` on `examples` draws of `strategy`, counting outcomes instead of stopping at the first."""

    @hypothesis_seed(seed)
    @settings(max_examples=examples, phases=[Phase.generate], database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(value):
        start = time.perf_counter()
        try:
            outcome = "accepted" if check(value) else "refused"
        except AssertionError as err:
            tally.add(target, "violation", f"{err} on {value!r:.300}", "violations")
            return
        except Exception as err:  # noqa: BLE001 - a parser raising anything but MintError is what we count
            tally.add(target, "crash", f"{type(err).__name__}: {err} on {value!r:.300}", "crashes")
            return
        elapsed = time.perf_counter() - start
        if elapsed > SLOW_PARSER_CASE_S:
            tally.add(target, outcome, f"{elapsed:.1f}s on {value!r:.200}", "hangs")
        else:
            tally.add(target, outcome)

    run()


def parser_targets(root: Path):
    """(name, strategy, check, weight) of every parser fuzzed; weights share out the parser cases."""
    scratch = root / "adapter_model.safetensors"
    valid = [a.to_safetensors() for a in parsers.ADAPTERS]
    pick = st.integers(0, len(parsers.ADAPTERS) - 1)
    base = write_byte_level_tokenizer(root / "tokenizer", vocab_size=400)
    targets = [
        ("safetensors", st.tuples(fs.adapter_files(valid), pick),
         lambda v: parsers.check_adapter_file(v[0], scratch, parsers.ADAPTERS[v[1]].config, parsers.BASE), 4),
        ("adapter_config", fs.adapter_configs(parsers.ADAPTERS[1].config.to_dict()), parsers.check_adapter_config, 2),
        ("refs", fs.ref_texts(), parsers.check_ref, 3),
        ("names", st.one_of(fs.names(), fs.aliases(), st.text(max_size=70), fs.names().flatmap(fs.mutated_text)), parsers.check_names, 2),
    ]
    for name, template in parsers.CHAT_TEMPLATES.items():
        tokenizer = Tokenizer(base.backend, special_tokens=base.special_tokens, chat_template=template)
        chats = st.tuples(fs.chat_messages(), st.booleans(), st.booleans())
        check = lambda v, t=tokenizer: parsers.check_chat(t, v[0], add_generation_prompt=v[1], allow_special=v[2])  # noqa: E731
        targets.append((f"chat:{name}", chats, check, 1))
    return targets


def fuzz_rpcs(world: World, total: int, threads: int, seed: int, tally: Tally) -> float:
    """Draw `total` cases in this thread (hypothesis is not shared between threads) and judge them on
    `threads` workers; returns the seconds it took."""
    work: queue.Queue = queue.Queue(maxsize=4 * threads)
    done = threading.Event()
    counted = [0]

    def worker() -> None:
        while True:
            case = work.get()
            if case is None:
                return
            target = f"{case.service.name}.{case.method.name}"
            try:
                verdict = world.judge(case)
            except Exception as err:  # noqa: BLE001 - the harness failing to send a case is a finding
                tally.add(target, "crash", f"{type(err).__name__}: {err}; {traceback.format_exc(limit=3)}; {case!r:.300}", "crashes")
                continue
            outcome = "ok" if verdict.status is grpc.StatusCode.OK else "refused"
            if verdict.fault:
                tally.add(target, "fault", f"{verdict.status.name} {verdict.details[:300]}; {case!r:.400}", "internal_errors")
            elif verdict.hang:
                tally.add(target, "hang", f"{verdict.elapsed_s:.1f}s; {case!r:.400}", "hangs")
            elif verdict.stored:
                tally.add(target, "stored", f"{verdict.status.name} ({verdict.details[:200]}) stored {verdict.stored}; {case!r:.300}", "stored_on_refusal")
            else:
                tally.add(target, outcome)

    pool = [threading.Thread(target=worker, name=f"fuzz-{i}", daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    start = time.perf_counter()

    @hypothesis_seed(seed)
    @settings(max_examples=total, phases=[Phase.generate], database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def draw(data):
        if done.is_set():
            return
        work.put(data.draw(cases(world, METHODS)))
        counted[0] += 1
        if counted[0] % CHECKPOINT_EVERY == 0:
            checkpoint(world, tally)
        if counted[0] >= total:
            done.set()

    draw()
    for _ in pool:
        work.put(None)
    for thread in pool:
        thread.join()
    checkpoint(world, tally)
    return time.perf_counter() - start


def checkpoint(world: World, tally: Tally) -> None:
    if not world.healthy():
        tally.add("server", "unhealthy", "the health check or WhoAmI failed", "crashes")
    for change in world.settle():
        tally.add("non-writing calls", "stored", change, "stored_on_refusal")
    world.refresh()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few thousand cases (under a minute)")
    parser.add_argument("--parser-cases", type=int, default=None, help="default 70000 (quick: 2500)")
    parser.add_argument("--rpc-cases", type=int, default=None, help="default 40000 (quick: 1200)")
    parser.add_argument("--threads", type=int, default=4, help="client threads sending RPC cases")
    parser.add_argument("--seed", type=int, default=18)
    args = parser.parse_args()
    parser_cases = args.parser_cases if args.parser_cases is not None else (2500 if args.quick else 70_000)
    rpc_cases = args.rpc_cases if args.rpc_cases is not None else (1200 if args.quick else 40_000)

    logging.basicConfig(level=logging.CRITICAL)  # findings are counted, not printed as they happen
    errors = ErrorRecords()
    logging.getLogger().addHandler(errors)
    tally = Tally()
    with scratch_dir() as tmp, PeakRss() as rss:
        root = Path(tmp)
        start = time.perf_counter()
        targets = parser_targets(root)
        weights = sum(t[3] for t in targets)
        for i, (name, strategy, check, weight) in enumerate(targets):
            fuzz(strategy, check, max(1, parser_cases * weight // weights), args.seed + i, name, tally)
        parser_s = time.perf_counter() - start
        world = World(root / "rpc")
        try:
            rpc_s = fuzz_rpcs(world, rpc_cases, args.threads, args.seed, tally)
        finally:
            world.close()

    rpc_targets = {k: v for k, v in tally.by_target.items() if "." in k}
    rpc_total = sum(sum(c.values()) for c in rpc_targets.values())
    parser_total = tally.counts["cases"] - rpc_total
    print(f"{'target':<40}{'cases':>8}{'ok/accepted':>13}{'refused':>9}{'findings':>10}")
    for target, counts in sorted(tally.by_target.items()):
        good = counts["ok"] + counts["accepted"]
        findings = sum(counts.values()) - good - counts["refused"]
        print(f"{target:<40}{sum(counts.values()):>8}{good:>13}{counts['refused']:>9}{findings:>10}")
    for kind, shown in tally.findings.items():
        print(f"\n{kind} (first {len(shown)}):")
        for line in shown:
            print("  " + line.replace("\n", " ")[:700])
    if errors.first:
        print(f"\nERROR records ({errors.count}), first:")
        for line in errors.first:
            print("  " + line)
    print()
    rpc_ok = sum(c["ok"] for c in rpc_targets.values())
    metrics = {
        "cases": tally.counts["cases"],
        "parser_cases": parser_total,
        "rpc_cases": rpc_total,
        "crashes": tally.counts["crashes"],
        "internal_errors": tally.counts["internal_errors"],
        "stored_on_refusal": tally.counts["stored_on_refusal"],
        "hangs": tally.counts["hangs"],
        "violations": tally.counts["violations"],
        "server_errors_logged": errors.count,
        "rpc_ok_fraction": round(rpc_ok / max(1, rpc_total), 4),
        "parser_cases_per_s": round(parser_total / parser_s, 1),
        "rpc_cases_per_s": round(rpc_total / rpc_s, 1),
        "peak_rss_mb": round(rss.peak_bytes / 2**20, 1),
    }
    params = {"quick": args.quick, "parser_cases": parser_cases, "rpc_cases": rpc_cases, "threads": args.threads, "seed": args.seed, "methods": len(METHODS)}
    report("fuzz", params, metrics)


if __name__ == "__main__":
    main()
