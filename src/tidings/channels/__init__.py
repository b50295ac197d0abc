"""Channels carry one delivery to its destination: webhooks over HTTP (and, later, email)."""
