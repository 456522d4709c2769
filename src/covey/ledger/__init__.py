"""The credit ledger (issue 15): signed receipts, a hash-chained log of entries, Merkle
checkpoints.

credits.py     what a credit is (completion tokens x model-size weight)
receipts.py    the receipt, provider-signed and consumer-countersigned
entries.py     one ledger entry, its canonical bytes and hash, the chain check (pure)
chain.py       the append-only SQLite ledger: entries, balances, verify()
merkle.py      RFC 6962 / 9162 tree hashing and proofs (pure)
checkpoint.py  C2SP signed notes: tlog-checkpoint and tlog-cosignature (pure)
checkpoints.py the Merkle tree over the entries, the checkpoint sink, proof documents
cli.py         `covey ledger ...`
"""
