"""Verification: gradient checks, golden vectors, the verifier and its adapters."""
