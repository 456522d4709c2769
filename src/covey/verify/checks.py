"""Cheap checks (pure): what a node can say about a peer's claim without running the model.

A node that does not serve a model from its own file cannot audit it, but it can read what
the peer published in its signed record and how fast its answers arrive here:

- consistency of the peer's own claims: the sha256 in its model ad against its fingerprint's,
  the quantization in the model id (`…-q4_k_m`) against the one it declares;
- agreement with the other peers claiming the same id: a peer whose fingerprint names another
  architecture or parameter count than every other claimant's is serving something else
  (only when at least two others agree among themselves, so one liar cannot frame anyone);
- speed plausibility: answers relayed through the mesh arriving much faster than the peer's
  own published native baseline (a cheaper model decodes faster than the one it claims).

These are notes, not convictions: they are shown with the verdict and never demote a peer on
their own (a peer can publish anything, and hardware varies). Audits are the proof.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from covey.engine.catalog import quant_from_name
from covey.mesh.records import Fingerprint, NodeRecord

# Through-mesh decode speed over this multiple of the peer's own native baseline is
# implausible: the relay adds work, it never removes it (issue 11 measured 0.9-1.0x).
MAX_SPEEDUP = 2.0
MIN_SAMPLES = 3  # observed speeds needed before the speed check speaks



def _identity(fp: Fingerprint | None) -> tuple[str, str] | None:
    if fp is None or not fp.architecture or not fp.parameters:
        return None
    return fp.architecture.lower(), fp.parameters.lower()


def cheap_checks(record: NodeRecord, model_id: str, others: Sequence[NodeRecord],
                 observed_tps: Sequence[float]) -> list[str]:
    """Problems with `record`'s claim to serve `model_id`, as short evidence (no content).

    `others`: the other members' records (any that claim `model_id` are compared);
    `observed_tps`: decode speeds this node measured on answers relayed from that peer."""
    problems: list[str] = []
    ad = next((a for a in record.models if a.id == model_id), None)
    fp = record.fingerprints.get(model_id)
    if ad is not None and fp is not None and ad.sha256 and fp.sha256 and ad.sha256 != fp.sha256:
        problems.append("its model ad and its fingerprint name different files (sha256)")
    declared = (fp.quantization if fp is not None and fp.quantization
                else ad.quantization if ad is not None else None)
    named = quant_from_name(model_id)
    if named and declared and declared.upper() != named:
        problems.append(f"the id names {named} but it declares {declared.upper()}")
    mine = _identity(fp)
    theirs = Counter(ident for o in others if o.node_id != record.node_id
                     and (ident := _identity(o.fingerprints.get(model_id))) is not None)
    if mine is not None and theirs:
        (common, count), = theirs.most_common(1)
        if count >= 2 and mine != common and mine not in theirs:
            problems.append(f"its fingerprint says {mine[0]} {mine[1]}; {count} other peers "
                            f"claiming this id say {common[0]} {common[1]}")
    baseline = record.baseline.get(model_id)
    if baseline and len(observed_tps) >= MIN_SAMPLES:
        fast = sorted(observed_tps)[len(observed_tps) // 2]
        if fast > MAX_SPEEDUP * baseline:
            problems.append(f"answers arrive at {fast:.0f} tok/s here, over {MAX_SPEEDUP:g}x "
                            f"its own native baseline ({baseline:.0f} tok/s)")
    return problems
