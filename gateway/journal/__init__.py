"""The journal: the durable source of truth for authorizations and owed reversals."""
