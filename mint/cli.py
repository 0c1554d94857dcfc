"""The `mint` command.

    mint demo                                   the end-to-end tour on the embedded default
    mint serve [--model DIR]                    everything in one process, on one port
    mint serve catalog|gateway|engine|trainer   one service, configured from MINT_* variables
    mint base init --arch llama --preset tiny DIR
    mint base import FILE.gguf DIR
    mint base register DIR                      make a base known to a catalog
    mint train sft|grpo ...                     recipes against a server (--address) or an embedded one
    mint key create|list|revoke                 API keys with scopes and expiry (a key with the admin scope)
    mint limits set|show TENANT                 a tenant's quotas (set: a global admin key)
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mint", description="Train and serve many LoRA policies over resident base models.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the end-to-end tour on the embedded default")
    demo.add_argument("--data-dir", default=".mint/demo")
    demo.add_argument("--tiny", action="store_true", help="use a tiny random base instead of SmolLM2-135M-Instruct")
    demo.add_argument("--steps", type=int, default=0, help="SFT steps per policy (default: by base size)")

    serve = commands.add_parser("serve", help="run MinT (embedded) or one of its services")
    serve.add_argument("service", nargs="?", choices=["catalog", "gateway", "engine", "trainer"])
    serve.add_argument("--model", help="base model directory (embedded)")
    serve.add_argument("--data-dir", default=".mint")
    serve.add_argument("--address", default="127.0.0.1:50050")
    serve.add_argument("--http-address", default="", help="the OpenAI-compatible HTTP API (embedded; default: --address's host on "
                       "port 8080, any free port when --address's is 0; 'off': none)")
    serve.add_argument("--tls-cert", help="serve TLS with this PEM certificate (embedded; default: $MINT_TLS_CERT)")
    serve.add_argument("--tls-key", help="its PEM private key (default: $MINT_TLS_KEY)")
    serve.add_argument("--tls-ca", help="CA bundle for client certificates, with MINT_TLS_CLIENT_AUTH=require (default: $MINT_TLS_CA)")

    base = commands.add_parser("base", help="make base models")
    base_commands = base.add_subparsers(dest="base_command", required=True)
    init = base_commands.add_parser("init", help="a random base in Hugging Face format")
    init.add_argument("--arch", default="llama", choices=["llama", "mistral", "qwen2", "qwen3"])
    init.add_argument("--preset", default="tiny", choices=["tiny", "smollm2-shape"])
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("dir")
    imp = base_commands.add_parser("import", help="a GGUF file as a Hugging Face directory")
    imp.add_argument("gguf")
    imp.add_argument("dir")
    register = base_commands.add_parser("register", help="register a base directory with a catalog (admin key)")
    register.add_argument("dir")
    register.add_argument("--name", default="", help="default: the directory's name")
    register.add_argument("--address", help="the catalog or gateway (default: $MINT_ADDRESS)")
    register.add_argument("--api-key", help="an admin key (default: $MINT_API_KEY)")

    key = commands.add_parser("key", help="API keys: create (with scopes and expiry), list, revoke")
    key_commands = key.add_subparsers(dest="key_command", required=True)
    key_create = key_commands.add_parser("create", help="a new key; prints it once")
    key_create.add_argument("name")
    key_create.add_argument("--scopes", default="", help="comma-separated: read,sample,train,publish,admin (default: the role's that your key holds)")
    key_create.add_argument("--expires-in", type=int, default=0, metavar="SECONDS", help="lifetime (default: as long as your key)")
    key_create.add_argument("--role", default="member", choices=["member", "service", "admin"])
    key_list = key_commands.add_parser("list", help="the tenant's keys (never their secrets)")
    key_revoke = key_commands.add_parser("revoke", help="revoke a key by name")
    key_revoke.add_argument("name")
    for command in (key_create, key_list, key_revoke):
        command.add_argument("--tenant", default="", help="default: your key's tenant")
        command.add_argument("--address", help="the catalog or gateway (default: $MINT_ADDRESS)")
        command.add_argument("--api-key", help="a key with the admin scope (default: $MINT_API_KEY)")

    limits = commands.add_parser("limits", help="a tenant's quotas: set (global admin key), show")
    limit_commands = limits.add_subparsers(dest="limits_command", required=True)
    limits_set = limit_commands.add_parser("set", help="set some limits, keep the rest ('none' removes one)")
    limits_show = limit_commands.add_parser("show", help="the limits and what the tenant stores now")
    for flag, kind in LIMIT_FLAGS.items():
        limits_set.add_argument(f"--{flag}", type=_limit_value(kind), metavar="N|none")
    for command in (limits_set, limits_show):
        command.add_argument("tenant")
        command.add_argument("--address", help="catalog or gateway (default: $MINT_ADDRESS or 127.0.0.1:50050)")
        command.add_argument("--api-key", help="default: $MINT_API_KEY")

    train = commands.add_parser("train", help="run a training recipe")
    recipes = train.add_subparsers(dest="recipe", required=True)
    for name in ("sft", "grpo"):
        recipe = recipes.add_parser(name)
        recipe.add_argument("--policy", required=True, help="policy name (tenant/name or name)")
        recipe.add_argument("--address", help="a MinT server (default: $MINT_ADDRESS, else an embedded one on --model)")
        recipe.add_argument("--api-key", help="default: $MINT_API_KEY")
        recipe.add_argument("--model", help="base model directory, for an embedded server")
        recipe.add_argument("--data-dir", default=".mint")
        recipe.add_argument("--base-model", default="", help="catalog name of the base (default: the server's)")
        recipe.add_argument("--rank", type=int, default=16)
        recipe.add_argument("--steps", type=int, default=50)
        recipe.add_argument("--lr", type=float, default=1e-3)
        recipe.add_argument("--seed", type=int, default=0)
    sft = recipes.choices["sft"]
    sft.add_argument("--task", default="", help="a built-in task (pirate, shout, terse, echo)")
    sft.add_argument("--data", default="", help="JSONL of {prompt, completion} or {messages}")
    sft.add_argument("--batch-size", type=int, default=4)
    sft.add_argument("--publish-every", type=int, default=0)
    grpo = recipes.choices["grpo"]
    grpo.add_argument("--task", default="brevity", help="a built-in RL task (brevity, arithmetic)")
    grpo.add_argument("--reward", default="", help="a registered reward function (default: the task's)")
    grpo.add_argument("--prompts", type=int, default=4)
    grpo.add_argument("--group-size", type=int, default=4)
    grpo.add_argument("--max-tokens", type=int, default=32)
    grpo.add_argument("--temperature", type=float, default=1.0)
    grpo.add_argument("--kl", type=float, default=0.0)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from mint.runtime import tune_allocator

    tune_allocator()
    if args.command == "demo":
        from mint.demo import run_demo

        return run_demo(data_dir=args.data_dir, tiny=args.tiny, steps=args.steps)
    if args.command == "serve":
        return _serve(args)
    if args.command == "base":
        return _base(args)
    if args.command == "key":
        return _key(args)
    if args.command == "limits":
        return _limits(args)
    from mint.train_cli import run_train

    return run_train(args)


def _serve(args) -> int:
    logging.getLogger().setLevel(logging.INFO)
    from mint.procs import embedded, load_service

    if args.service:
        load_service(f"{args.service}.main").serve()
        return 0
    if not args.model:
        print("mint serve needs --model DIR (a Hugging Face base directory; see `mint base init|import`)", file=sys.stderr)
        return 2
    from mint.errors import MintError
    from mint.limits import RequestLimits
    from mint.server import READY_LINE
    from mint.tls import TLSConfig

    try:
        tls = TLSConfig.from_env(cert_file=args.tls_cert, key_file=args.tls_key, ca_file=args.tls_ca)
    except MintError as err:
        print(f"mint serve: {err}", file=sys.stderr)
        return 2
    http_address = args.http_address or f"{args.address.rpartition(':')[0]}:{0 if args.address.endswith(':0') else 8080}"
    stack = embedded(model_path=args.model, data_dir=args.data_dir, address=args.address, request_limits=RequestLimits.from_env(), tls=tls,
                     http_address="" if http_address == "off" else http_address)
    print(READY_LINE.format(name="embedded", port=stack.port, security=tls.security(public=True)), flush=True)
    print(f"admin key (also in {args.data_dir}/admin.key): {stack.admin_key}", flush=True)
    if stack.http_url:
        print(f"OpenAI-compatible API: {stack.http_url}/v1", flush=True)
    try:
        stack.server.wait_for_termination()
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0


def _key(args) -> int:
    import os

    from mint.errors import MintError
    from mint.proto import catalog_pb2
    from mint.sdk import CatalogClient
    from mint.server import channel

    address = args.address or os.environ.get("MINT_ADDRESS", "127.0.0.1:50050")
    client = CatalogClient(channel(address), args.api_key or os.environ.get("MINT_API_KEY", ""))
    try:
        if args.key_command == "create":
            scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
            created = client.create_api_key_info(args.tenant, args.name, args.role, scopes=scopes, expires_in_s=args.expires_in or None)
            info = created.info
            expires = _when(info, "expires_at", never="never")
            print(f"key {info.tenant}/{info.name} ({info.key_id}), scopes {','.join(info.scopes)}, expires {expires}; shown only now:")
            print(created.key)
        elif args.key_command == "list":
            print(f"{'name':<24} {'key id':<12} {'role':<8} {'scopes':<32} {'created':<20} {'expires':<20} revoked")
            for info in client.list_api_keys(args.tenant):
                role = catalog_pb2.Role.Name(info.role).removeprefix("ROLE_").lower()
                print(f"{info.name:<24} {info.key_id:<12} {role:<8} {','.join(info.scopes):<32} {_when(info, 'created_at'):<20} "
                      f"{_when(info, 'expires_at'):<20} {_when(info, 'revoked_at')}")
        else:
            info = client.revoke_api_key(args.tenant, args.name)
            print(f"revoked key {info.tenant}/{info.name} ({info.key_id}) at {_when(info, 'revoked_at')}")
    except MintError as err:
        print(f"mint key {args.key_command}: {err}", file=sys.stderr)
        return 1
    return 0


LIMIT_FLAGS = {
    "max-stored-bytes": int, "max-revisions": int, "max-policies": int, "requests-per-second": float, "burst": int,
    "max-concurrent-sequences": int, "max-concurrent-sessions": int,
}
_NONE = object()


def _limit_value(kind: type):
    def parse(text: str):
        if text == "none":
            return _NONE
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'} or 'none', got {text!r}") from None

    return parse


def _limits(args) -> int:
    import os

    from mint.errors import MintError
    from mint.sdk import CatalogClient
    from mint.server import channel

    address = args.address or os.environ.get("MINT_ADDRESS", "127.0.0.1:50050")
    client = CatalogClient(channel(address), args.api_key or os.environ.get("MINT_API_KEY", ""))
    try:
        if args.limits_command == "set":
            given = {flag.replace("-", "_"): getattr(args, flag.replace("-", "_")) for flag in LIMIT_FLAGS}
            given = {name: value for name, value in given.items() if value is not None}
            limits = client.set_tenant_limits(
                args.tenant, clear=[n for n, v in given.items() if v is _NONE], **{n: v for n, v in given.items() if v is not _NONE}
            )
        else:
            limits = client.get_tenant_limits(args.tenant, with_usage=True)
    except MintError as err:
        print(f"mint limits {args.limits_command}: {err}", file=sys.stderr)
        return 1
    used = {"max_stored_bytes": "stored_bytes", "max_revisions": "revisions", "max_policies": "policies"}
    print(f"tenant {limits.tenant} (limits set {_when(limits, 'updated_at', never='never')} by {limits.updated_by or '-'})")
    for flag in LIMIT_FLAGS:
        name = flag.replace("-", "_")
        value = f"{getattr(limits, name):{'g' if LIMIT_FLAGS[flag] is float else 'd'}}" if limits.HasField(name) else "none"
        now = f"  (now {getattr(limits.usage, used[name])})" if name in used and limits.HasField("usage") else ""
        print(f"  {name:<26} {value}{now}")
    return 0


def _when(message, field: str, never: str = "-") -> str:
    """A Timestamp field as UTC ISO time, or `never` when unset."""
    if not message.HasField(field):
        return never
    return getattr(message, field).ToDatetime().isoformat(timespec="seconds") + "Z"


def _base(args) -> int:
    if args.base_command == "register":
        import os

        from mint.sdk import CatalogClient
        from mint.server import channel

        address = args.address or os.environ.get("MINT_ADDRESS", "127.0.0.1:50050")
        client = CatalogClient(channel(address), args.api_key or os.environ.get("MINT_API_KEY", ""))
        model = client.register_base_dir(args.dir, args.name)
        print(f"registered base model {model.name} ({model.architecture}, {model.num_layers} layers) at {address}")
        return 0
    if args.base_command == "init":
        from mint.models.presets import init_base

        config = init_base(args.dir, arch=args.arch, preset=args.preset, seed=args.seed)
        print(f"wrote a random {args.arch} base ({args.preset}, {config.num_parameters():,} parameters) to {args.dir}")
        return 0
    from mint.models.gguf_import import import_gguf

    config = import_gguf(args.gguf, args.dir)
    print(f"imported {args.gguf} ({config.architecture}, {config.num_parameters():,} parameters) to {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
