"""Sendspin reference server. Talks to the rest of the harness only over
sockets, HTTP and its event log; imports nothing but `harness.protocol`."""
