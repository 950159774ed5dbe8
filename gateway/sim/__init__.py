"""Simulators: an acquirer host with a ledger of held funds, and a terminal load generator."""
