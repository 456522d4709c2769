"""`covey ledger balance | show | verify | checkpoint | proof | verify-proof`.

Every command opens the node's ledger (`<data_dir>/ledger.sqlite3`) read-only: a running
node may hold it open (WAL) and is its only writer. `checkpoint` writes only to the
checkpoint sink (checkpoints.py). Exit codes: 0 fine, 1 a check failed (a broken ledger, a
proof that does not hold), 2 nothing to work on (no ledger, no key, no checkpoint).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from covey.errors import ConfigError
from covey.ledger.chain import Entry, Ledger
from covey.ledger.checkpoint import verifier_key
from covey.ledger.checkpoints import (
    MAX_PROOF_FILE,
    CheckpointError,
    check_proof,
    consistency_document,
    default_origin,
    inclusion_document,
    key_node_id,
    load_checkpoint,
    write_checkpoint,
)
from covey.ledger.credits import UNIT
from covey.ledger.service import LEDGER_FILE
from covey.mesh.identity import KEY_FILE, Identity, load_or_create

SHOW_LIMIT = 50  # entries `show` prints unless told


def add_arguments(ledger: argparse.ArgumentParser) -> None:
    """The subcommands of `covey ledger` (covey/cli.py makes its parser)."""
    cmds = ledger.add_subparsers(dest="ledger_command", required=True, metavar="COMMAND")

    def data_dir_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data-dir", help="the node's data dir (default: ~/.covey, or "
                        "$COVEY_HOME)")

    balance = cmds.add_parser("balance", help="credits given, used, adjusted and the balance "
                              "of each node")
    balance.add_argument("node", nargs="?", help="only this node: its id or a unique prefix")
    balance.add_argument("--json", action="store_true", help="print JSON")
    show = cmds.add_parser("show", help="the ledger's entries (no content: there is none)")
    show.add_argument("--since", type=int, metavar="SEQ",
                      help="entries after this seq (default: the last --limit)")
    show.add_argument("--limit", type=int, default=SHOW_LIMIT, metavar="N",
                      help=f"at most N entries (default: {SHOW_LIMIT})")
    show.add_argument("--json", action="store_true", help="print JSON")
    verify = cmds.add_parser("verify", help="recompute the hash chain; name the first bad "
                             "entry")
    verify.add_argument("--json", action="store_true", help="print JSON")
    checkpoint = cmds.add_parser("checkpoint", help="sign a Merkle tree head of every entry "
                                 "(C2SP tlog-checkpoint) and keep it")
    checkpoint.add_argument("--origin", help="the log's name (default: covey.mesh/<mesh "
                            "id>/ledger on the keeper of the mesh ledger)")
    checkpoint.add_argument("--out", type=Path, metavar="FILE", help="also write it here")
    proof = cmds.add_parser("proof", help="print a proof (JSON) against the latest checkpoint")
    proof.add_argument("seq", nargs="?", type=int, help="the entry to prove included")
    proof.add_argument("--consistency", type=int, metavar="OLD_SIZE",
                       help="prove instead that the latest checkpoint extends the kept one "
                       "of OLD_SIZE entries")
    check = cmds.add_parser("verify-proof", help="check a proof offline: the checkpoint's "
                            "signature, then the proof against its root")
    check.add_argument("file", type=Path, help="the proof (`covey ledger proof ... > FILE`)")
    check.add_argument("--key", metavar="VERIFIER_KEY", help="the keeper's verifier key "
                       "(`covey ledger checkpoint` prints it); without it only the file's "
                       "own key is used")
    grant = cmds.add_parser("grant", help="on the keeper of the mesh ledger: grant a member "
                            "credits (negative: take them back), through the running node")
    grant.add_argument("node", help="the member's node id")
    grant.add_argument("credits", type=float)
    grant.add_argument("--note", default="", help="why (kept in the entry)")
    grant.add_argument("--url", help="the node to ask (default: the one running from "
                       "--data-dir)")
    grant.add_argument("--api-key", help="API key, if the node requires one "
                       "(default: $COVEY_API_KEY)")
    for sp in (balance, show, verify, checkpoint, proof, grant):
        data_dir_flag(sp)


def run(args: argparse.Namespace, data_dir: Path) -> int:
    command = args.ledger_command
    try:
        if command == "verify-proof":
            return verify_proof(args.file, args.key)
        if command == "checkpoint":
            return checkpoint(data_dir, args.origin, args.out)
        if command == "proof":
            return proof(data_dir, args.seq, args.consistency)
        if command == "balance":
            return balance(data_dir, args.node, args.json)
        if command == "show":
            return show(data_dir, args.since, args.limit, args.json)
        return verify(data_dir, args.json)
    except CheckpointError as exc:
        print(f"covey: {exc}", file=sys.stderr)
        return 1


# -- commands ----------------------------------------------------------------------------

def balance(data_dir: Path, node: str | None, as_json: bool) -> int:
    with _open(data_dir) as ledger:
        balances = ledger.balances()
        unconfirmed = len(ledger.unconfirmed())
    if node is not None:
        matches = [n for n in balances if n.startswith(node)]
        if len(matches) != 1:
            why = "matches no node with entries" if not matches else "is ambiguous"
            print(f"covey: {node!r} {why} ({len(balances)} nodes in the ledger)",
                  file=sys.stderr)
            return 1
        balances = {matches[0]: balances[matches[0]]}
    own = _own_id(data_dir)
    if as_json:
        print(json.dumps({"unit": UNIT, "unconfirmed": unconfirmed, "balances": {
            n: {"given": b.given, "used": b.used, "adjusted": b.adjusted, "balance": b.balance}
            for n, b in balances.items()}}, indent=2))
        return 0
    print(UNIT)
    rows = [(n + (" (this node)" if n == own else ""), b) for n, b in balances.items()]
    width = max([len("node"), *(len(name) for name, _ in rows)])
    print(f"{'node':<{width}}  {'given':>14}  {'used':>14}  {'adjusted':>14}  {'balance':>14}")
    for name, b in rows:
        print(f"{name:<{width}}  {_c(b.given)}  {_c(b.used)}  {_c(b.adjusted)}  "
              f"{_c(b.balance)}")
    if not rows:
        print("(no entries yet)")
    if unconfirmed:
        print(f"{unconfirmed} receipt(s) signed only by the provider: held, not counted")
    return 0


def show(data_dir: Path, since: int | None, limit: int, as_json: bool) -> int:
    if limit < 1:
        raise ConfigError(f"--limit {limit}: must be at least 1")
    with _open(data_dir) as ledger:
        size = ledger.head()[0]
        after = max(0, size - limit) if since is None else since
        entries = ledger.entries(after, limit)
    rows = [_entry_row(e) for e in entries]
    if as_json:
        print(json.dumps({"size": size, "entries": rows}, indent=2))
        return 0
    print(f"{'seq':>6}  {'time (UTC)':<19}  {'kind':<6}  {'node':<16}  {'credits':>14}  "
          f"{'request':<8}  model / reason")
    for r in rows:
        print(f"{r['seq']:>6}  {_time(r['created_at']):<19}  {r['kind']:<6}  "
              f"{r['node_id']:<16}  {_c(r['credits'])}  {(r['request_id'] or '-')[:8]:<8}  "
              f"{r.get('model_id') or r.get('reason') or '-'}")
    last = entries[-1].seq if entries else after
    shown = f"entries {entries[0].seq}..{last}" if entries else "no entries"
    more = f"; more: --since {last}" if last < size else ""
    print(f"{shown} of {size}{more}")
    return 0


def verify(data_dir: Path, as_json: bool) -> int:
    with _open(data_dir) as ledger:
        result = ledger.verify()
        size, head = ledger.head()
    if as_json:
        print(json.dumps({"ok": result.ok, "entries": size, "head": head,
                          "first_bad_seq": result.first_bad_seq, "reason": result.reason,
                          "checked": result.checked}))
    elif result.ok:
        print(f"ledger intact: {size} entries, head {head}")
    elif result.first_bad_seq is not None:
        print(f"ledger BROKEN at entry {result.first_bad_seq}: {result.reason} "
              f"({result.checked} entries before it check out)")
    else:
        print(f"ledger entries intact, but {result.reason}")
    return 0 if result.ok else 1


def checkpoint(data_dir: Path, origin: str | None, out: Path | None) -> int:
    identity = _identity(data_dir)
    name = origin or default_origin(data_dir, identity.node_id)
    try:
        vkey = verifier_key(name, identity.public_bytes)
    except ValueError as exc:
        raise ConfigError(f"--origin {name!r}: {exc}") from exc
    with _open(data_dir) as ledger:
        text = write_checkpoint(ledger, data_dir, identity.key, name)
    if out is not None:
        out.write_text(text)
    print(text, end="")
    print(f"\nverifier key: {vkey}")
    print(f"signed by node {identity.node_id}; kept in {data_dir / 'checkpoints'}"
          + (f" and {out}" if out is not None else ""))
    return 0


def proof(data_dir: Path, seq: int | None, old_size: int | None) -> int:
    if (seq is None) == (old_size is None):
        raise ConfigError("covey ledger proof: give an entry's SEQ, or --consistency OLD_SIZE")
    identity = _identity(data_dir)
    latest = load_checkpoint(data_dir)
    with _open(data_dir) as ledger:
        if old_size is not None:
            doc = consistency_document(ledger, load_checkpoint(data_dir, old_size), latest,
                                       identity.public_bytes)
        else:
            assert seq is not None
            doc = inclusion_document(ledger, latest, seq, identity.public_bytes)
    print(json.dumps(doc, indent=2))
    return 0


def verify_proof(path: Path, vkey: str | None) -> int:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_PROOF_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    result = check_proof(raw, vkey)
    print(("proof holds: " if result.ok else "proof FAILS: ") + result.message)
    if result.checkpoint is not None:
        c = result.checkpoint
        root = base64.b64encode(c.root).decode()
        print(f"checkpoint: {c.origin}, {c.size} entries, root {root}")
    if result.entry is not None:
        e = result.entry
        print(f"entry {e['seq']}: {e['kind']} {_c(e['credits']).strip()} credits, node "
              f"{e['node_id']}, request {e['request_id'] or '-'}")
    if result.self_signed:
        print("note: checked only against the verifier key inside the file, which proves the "
              "file agrees with itself, not who signed it; pass --key with the keeper's "
              "verifier key (`covey ledger checkpoint` prints it)")
    elif vkey is not None and (node := key_node_id(vkey)) is not None:
        print(f"signed by the key of node {node}")
    return 0 if result.ok else 1


# -- helpers -----------------------------------------------------------------------------

def _open(data_dir: Path) -> Ledger:
    path = data_dir / LEDGER_FILE
    try:
        return Ledger(path, read_only=True)
    except FileNotFoundError as exc:
        raise ConfigError(f"no ledger in {data_dir} ({LEDGER_FILE}): the node running from "
                          "this data dir has recorded no credits yet") from exc


def _identity(data_dir: Path) -> Identity:
    # Never make a key here: a checkpoint signed by a fresh key would vouch for nothing.
    if not (data_dir / KEY_FILE).is_file():
        raise ConfigError(f"no node key in {data_dir} ({KEY_FILE}): run `covey serve` from "
                          "this data dir first")
    try:
        return load_or_create(data_dir)
    except ValueError as exc:  # not a PEM Ed25519 key
        raise ConfigError(f"{data_dir / KEY_FILE}: {exc}") from exc


def _own_id(data_dir: Path) -> str | None:
    try:
        return _identity(data_dir).node_id
    except ConfigError:  # no key here: nothing to mark as this node
        return None


def _entry_row(entry: Entry) -> dict[str, Any]:
    """What `show` prints of an entry: never its body beyond the model id or the reason."""
    row: dict[str, Any] = {"seq": entry.seq, "created_at": entry.created_at,
                           "kind": entry.kind, "node_id": entry.node_id,
                           "credits": entry.credits, "request_id": entry.request_id}
    if entry.kind == "adjust":
        row["reason"] = entry.reason
    else:
        try:
            row["model_id"] = json.loads(entry.body)["receipt"]["receipt"]["model_id"]
        # A body edited by hand: show the entry anyway; `verify` names it.
        except (ValueError, KeyError, TypeError):
            row["model_id"] = None
    return row


def _c(credits: float) -> str:
    return f"{round(credits, 6) + 0.0:>14.6f}"  # + 0.0: never print -0.000000


def _time(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):  # a time no calendar holds
        return "?"

