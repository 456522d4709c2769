"""Proving that peers serve the model they claim: fingerprints, audits and verdicts.

compare.py   the tolerant statistic (pure): a peer's greedy answer against local ground truth
verdicts.py  the verdict state machine per (peer, model) (pure, clock injected)
prompts.py   randomized synthetic audit prompts (rng injected)
fingerprint.py  the model fingerprint published in this node's signed record
auditor.py   the loop that audits peers through the mesh transport (the effects)
"""
