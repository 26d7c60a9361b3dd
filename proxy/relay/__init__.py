"""The data phase, without mitmproxy: frame scanning (frames.py), one direction with its
fault chain (pipe.py), the two-socket relay (relay.py) and proxy-wide state (state.py).
Testable with plain sockets."""
