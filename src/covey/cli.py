"""Command line: `covey serve | chat | status | doctor | models | invite | revoke | bench |
ledger | memory | pull | rm`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from covey import __version__
from covey.errors import ConfigError

DEFAULT_URL = "http://127.0.0.1:7272"

# Every command, in the order `covey --help` lists them. A command's flags come from the
# module that runs it, and those import what they run (aiohttp, the ledger, pydantic models):
# over a second of start-up in all. Only the chosen command's flags are built, so `covey chat`
# and `covey invite` no longer pay for `covey serve`'s and `covey ledger`'s imports.
COMMANDS = {
    "serve": "run a node (engines + OpenAI-compatible API)",
    "chat": "stream one answer from the node",
    "status": "show the node's models and their measurements",
    "models": "list the models the node serves",
    "doctor": "check every layer from this node to each peer's model, name the first that "
              "fails and its fix",
    "invite": "print a one-line, single-use invite to this mesh (on any member; the mesh's "
              "creator must be online)",
    "revoke": "remove a node from the mesh (every member refuses it within a few gossip "
              "rounds)",
    "bench": "measure the node's relay overhead on a model",
    "ledger": "credits given and used: balances, entries, verify the ledger, checkpoints and "
              "proofs",
    "memory": "store and search memories (this node's, and what peers share)",
    "pull": "download a model file into <data-dir>/models (resumable, sha256-checked)",
    "rm": "delete a model file (and its sidecars) from <data-dir>/models",
}


def _command(argv: list[str]) -> str | None:
    """The command named in `argv` (the first word that is not an option), if it is one."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command, with the flags of `command` only: the others are listed, not built."""
    p = argparse.ArgumentParser(prog="covey", description="Run open-weight LLMs across the "
                                "machines you already own.")
    p.add_argument("--version", action="version", version=f"covey {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {name: sub.add_parser(name, help=text) for name, text in COMMANDS.items()}
    if command is not None:
        _add_flags(command, parsers[command])
    return p


def _add_flags(command: str, parser: argparse.ArgumentParser) -> None:
    if command == "serve":
        from covey import config

        config.add_flags(parser)
    elif command == "chat":
        parser.add_argument("prompt", help="what to ask")
        parser.add_argument("--model", help="model id (default: the node's default model)")
        parser.add_argument("--max-tokens", type=int, default=256)
        _client_flags(parser)
    elif command in ("status", "models"):
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        _client_flags(parser)
        if command == "models":
            parser.add_argument("--local", action="store_true", help="list the model files in "
                                "<data-dir>/models instead (source, sha256); no node needed")
    elif command == "doctor":
        parser.add_argument("peer", nargs="?", help="only this member: its node id, a unique "
                            "prefix of it, or its name")
        parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
        parser.add_argument("--no-token", action="store_true",
                            help="skip the one-token probes (layer 11)")
        _client_flags(parser)
    elif command == "invite":
        _client_flags(parser)
        parser.add_argument("--ttl", type=float, default=3600.0,
                            help="seconds the invite stays valid (default: 3600)")
    elif command == "revoke":
        parser.add_argument("node", help="node id (see `covey status`)")
        parser.add_argument("--data-dir", help="data dir of the node that created the mesh "
                            "(default: ~/.covey, or $COVEY_HOME)")
    elif command == "bench":
        from covey.engine import embedded

        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument("--runs", type=int, default=5, help="runs per measurement (median)")
        parser.add_argument("--max-tokens", type=int, default=64, help="tokens per stream")
        parser.add_argument("--model", type=Path, help="GGUF to bench, or an embedded model's "
                            f"name (default: {embedded.GEMMA.name}, which needs no download)")
        parser.add_argument("--threads", type=int, default=None, help="engine threads")
        parser.add_argument("--ttft-pairs", type=int, default=None, help="rounds of one- and "
                            "two-token requests on each path for the added TTFT (default: 120, "
                            "or 8 per run if more)")
        parser.add_argument("--idle-s", type=float, default=None, help="seconds the node's "
                            "idle CPU is measured (default: 10)")
        parser.add_argument("--data-dir", help="where to keep the assembled model "
                            "(default: ~/.covey, or $COVEY_HOME)")
    elif command == "ledger":
        from covey.ledger import cli as ledger_cli

        ledger_cli.add_arguments(parser)
    elif command == "memory":
        from covey.memory import cli as memory_cli

        memory_cli.add_arguments(parser, _client_flags)
    elif command == "pull":
        from covey.fetch import cli as fetch_cli

        fetch_cli.add_pull_arguments(parser)
    elif command == "rm":
        from covey.fetch import cli as fetch_cli

        fetch_cli.add_rm_arguments(parser)


def _client_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--url", help="node to ask (default: the node running from --data-dir, "
                    f"else $COVEY_URL, else {DEFAULT_URL})")
    sp.add_argument("--data-dir", help="data dir of the local node (default: ~/.covey, "
                    "or $COVEY_HOME)")
    sp.add_argument("--api-key", help="API key, if the node requires one "
                    "(default: $COVEY_API_KEY)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser(_command(argv)).parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "invite":
            from covey.mesh.setup import holds_authority, mint_invite

            if holds_authority(_data_dir(args)) and not args.url:
                print(mint_invite(_data_dir(args), args.ttl))
                return 0
            from covey import console

            # A member: its running node asks the mesh's creator for the invite.
            return console.invite(_client_url(args),
                                  args.api_key or os.environ.get("COVEY_API_KEY"), args.ttl)
        if args.command == "revoke":
            from covey.mesh.setup import revoke_member

            seq = revoke_member(_data_dir(args), args.node)
            print(f"revoked {args.node} (revocation list #{seq}); the running node takes "
                  "the list up within six gossip rounds, and members refuse the node as soon "
                  "as its gossip reaches them")
            return 0
        if args.command == "bench":
            from covey.bench.relay import run_bench

            return run_bench(args, data_dir=_data_dir(args))
        if args.command == "ledger" and args.ledger_command == "grant":
            from covey import console

            return console.grant(_client_url(args),
                                 args.api_key or os.environ.get("COVEY_API_KEY"), args.node,
                                 args.credits, args.note)
        if args.command == "ledger":
            from covey.ledger import cli as ledger_cli

            return ledger_cli.run(args, _data_dir(args))
        if args.command in ("pull", "rm") or (args.command == "models" and args.local):
            from covey.fetch import cli as fetch_cli

            if args.command == "pull":
                return fetch_cli.run_pull(args, _data_dir(args), fetch_cli.environment())
            if args.command == "rm":
                return fetch_cli.run_rm(args, _data_dir(args), os.environ.get("COVEY_API_KEY"))
            return fetch_cli.run_local(_data_dir(args), as_json=args.json)
        if args.command == "memory":
            from covey.memory import cli as memory_cli

            return memory_cli.run(args, _client_url(args),
                                  args.api_key or os.environ.get("COVEY_API_KEY"))
        from covey import console

        url = _client_url(args)
        api_key = args.api_key or os.environ.get("COVEY_API_KEY")
        if args.command == "chat":
            return console.chat(url, api_key, args.prompt, args.model, args.max_tokens)
        if args.command == "status":
            return console.status(url, api_key, as_json=args.json)
        if args.command == "doctor":
            return console.doctor(url, api_key, args.peer, not args.no_token, args.json)
        return console.models(url, api_key, as_json=args.json)
    except ConfigError as exc:
        print(f"covey: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _data_dir(args: argparse.Namespace) -> Path:
    raw = getattr(args, "data_dir", None) or os.environ.get("COVEY_HOME") or "~/.covey"
    return Path(raw).expanduser()


def _client_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    runtime = _data_dir(args) / "node.json"
    try:
        return str(json.loads(runtime.read_text())["url"])
    # No node running from this data dir (or a stale file): fall back to the usual address.
    except (OSError, ValueError, KeyError):
        return os.environ.get("COVEY_URL", DEFAULT_URL).rstrip("/")


def _serve(args: argparse.Namespace) -> int:
    from covey import config, event_loop

    settings = config.load(config.flag_values(args))
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    from covey.console import assembly_progress
    from covey.node import Node

    with assembly_progress() as progress:
        node = Node(settings, progress=progress)
        # Read the GGUFs (and assemble the default model) before the event loop starts,
        # so the progress bar finishes before log lines begin.
        node.prepare()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await node.run(stop, on_listening=lambda url: print(f"covey: serving on {url}/v1",
                                                             flush=True))

    try:
        event_loop.run(run())
    except OSError as exc:  # the port is taken, or the address is not ours
        print(f"covey: cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
