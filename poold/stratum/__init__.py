"""Stratum V1: line framing, JSON codec, one message class per method, sessions and the server.

`framing`, `messages` and `codec` are sans-IO; `session` is the per-connection state machine (no
sockets either); `server` is the asyncio edge (accept, limits, fan-out, timers).
"""
