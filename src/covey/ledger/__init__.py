"""The credit ledger: signed receipts, a hash-chained log of entries, Merkle checkpoints."""
