"""Tenants, manifest signing keys, bearer tokens, tiers and the hourly quota ledger."""
