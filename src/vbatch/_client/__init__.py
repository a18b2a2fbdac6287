"""Talking to servers: transport, retries, the window, the dispatcher and its counters."""
