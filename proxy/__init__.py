"""sendspin-proxy: the fault proxy between Sendspin clients and servers (docs/architecture.md §2–§4).

mitmproxy (reverse mode, a bare Master in its own process) is the shell: listener,
HTTP upgrade, upstream choice. After the 101 our own relay owns both sockets and
forwards WebSocket frames untouched unless a fault acts (NOTES: stock mitmproxy
buffers messages, couples the directions and hides abnormal ends).

  master.py     EmbeddedProxy: start (readiness), close (listener + connections)
  cli.py        `sendspin-proxy` (serve) and its control-API client subcommands
  addons/       datapath (the takeover), upstreams (load balancer), sockets (fixed kernel buffers),
                control (REST API)
  state.py      ProxyState: event sink, upstreams, live relays, the fault table (attaches faults)
  relay/        the data path, no mitmproxy and no fault class: pipe (one direction + fault
                chain), relay (two sockets), message (Msg), hooks (what a pipe calls on an
                attached fault), connection (Connection/Channel: all a fault may read and do)
  faults/       fault.py (spec + per-pipe state), selector.py, params.py; one fault per file;
                the catalogue (build_fault, load_plan) in __init__
  observe.py    per-direction observer of decoded messages (only with --view / --web)
  describe.py   messages and faults in words; view.py the terminal view (--view)
  web.py        mitmweb's UI on the embedded master (--web); contentview.py its Sendspin view

Imports from our code: `harness.protocol` only (never reference_server).
"""
