"""Test doubles of the remote SaaS model providers (see README.md)."""
