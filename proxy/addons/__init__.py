"""mitmproxy addons of the proxy: datapath (our relay after the 101), upstreams (load
balancer), and the control API server (control.py, aiohttp in the same loop)."""
