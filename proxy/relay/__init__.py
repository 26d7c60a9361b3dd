"""The data phase, without mitmproxy and without any fault class: one direction with its
fault chain (pipe.py), the two-socket relay (relay.py), the message type message faults
see (message.py), what a pipe needs from an attached fault (hooks.py) and what a fault
may read and do (connection.py). Frames are harness.protocol.wsframes. Testable with
plain sockets; knows no fault class (faults see it through connection.py)."""
