"""Credit ledger: signed receipts, hash chain, Merkle checkpoints (issue 15)."""
