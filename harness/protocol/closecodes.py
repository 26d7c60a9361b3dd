"""WebSocket close codes the harness uses, with the rule behind each.

RFC 6455 codes where one fits; 4000-4999 (private use) for our policies.
"""

NORMAL = 1000            # client/goodbye, orderly shutdown
GOING_AWAY = 1001        # server shutting down
PROTOCOL_ERROR = 1002    # handshake order broken: first message not client/hello
TOO_BIG = 1009           # inbound message over the size limit
HELLO_TIMEOUT = 4000     # no client/hello within the hello timeout
SLOW_READER = 4001       # peer read nothing for longer than the slow-reader limit
STALLED_PAYLOAD = 4002   # a fragmented message stalled mid-way past the payload timeout

NAMES = {
    NORMAL: "normal", GOING_AWAY: "going away", PROTOCOL_ERROR: "protocol error",
    TOO_BIG: "message too big", HELLO_TIMEOUT: "hello timeout",
    SLOW_READER: "slow reader", STALLED_PAYLOAD: "stalled payload",
}
