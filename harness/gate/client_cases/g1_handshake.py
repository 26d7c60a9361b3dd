"""Group 1: the handshake."""

from __future__ import annotations

from ...settings import Bounds
from ..client import ClientWorld
from ..verdict import Judgement
from ..wire import data_messages, describe, first_wire
from .common import (
    NOISE_HELLO,
    RUNS_IN_NOISE,
    SPEC_HELLO,
    TERMINATED,
    client_case,
    fault_acted,
    hello_passed,
    ms,
    server_sessions,
)

HELLO_DELAY_MS = 1000


@client_case("1.1", noise=RUNS_IN_NOISE, noise_proxy=TERMINATED,
             title="client/hello first, and nothing else before server/hello",
             description=f"The proxy holds server/hello back for {HELLO_DELAY_MS} ms; it records every message "
                         "the client sends meanwhile.",
             expectation="The client's first message is client/hello, and it sends nothing else until "
                         "server/hello has reached it.",
             source=f"{SPEC_HELLO}; field: esphome#16551 (client/state and client/time sent before server/hello)")
async def hello_first(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    fault = await w.proxy.add({"type": "delay", "direction": "downstream", "json_type": "server/hello",
                               "delay_ms": HELLO_DELAY_MS, "count": 1})
    await w.start_client()
    hello = await hello_passed(w, j)
    if hello is None:
        return
    await w.observe(HELLO_DELAY_MS / 1000 + 1.0)
    ev = w.events()
    fault_acted(ev, fault["name"], j)
    sent = data_messages(ev, hello["session"], "upstream")
    if not j.require(bool(sent) and sent[0].get("type") == "client/hello",
                     f"the first message was {describe(sent[0]) if sent else 'nothing'}, not client/hello"):
        return
    # the proxy forwarded server/hello HELLO_DELAY_MS after it arrived: anything the client
    # sent before then, it sent without having server/hello
    released_us = hello["t_us"] + HELLO_DELAY_MS * 1000
    early = [r for r in sent[1:] if r["t_us"] < released_us]
    j.check("messages sent before server/hello reached the client", len(early), "==", 0)
    if early:
        j.note("sent early: " + ", ".join(f"{describe(r)} {ms(released_us - r['t_us'])} ms before"
                                          for r in early[:5]))


@client_case("1.2", noise=RUNS_IN_NOISE, noise_proxy=TERMINATED,
             title="Initial client/state follows server/hello",
             description="A normal handshake; the proxy records when client/state passes.",
             expectation="A client with a player role sends its initial client/state promptly after "
                         "server/hello.",
             source="spec: server/hello — the initial client/state follows it \"if the client has roles that "
                    "require state updates\"", roles=("player",))
async def initial_state(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    hello = await hello_passed(w, j)
    if hello is None:
        return
    state = await w.until("client/state", lambda ev: first_wire(ev, hello["session"], "upstream", "client/state"),
                          b.client_state_us / 1e6 + 1)
    after = None if state is None else state["t_us"] - hello["t_us"]
    j.check("client/state after server/hello", None if after is None else ms(after), "<=", ms(b.client_state_us),
            "ms", "client_state_us", (hello["t_us"], hello["t_us"] + (after or b.client_state_us)))
    j.require(after is None or after >= 0, "client/state was sent before server/hello")


ROLES_WITH_SUPPORT = {"player@v1", "artwork@v1", "visualizer@v1"}


@client_case("1.3", noise=NOISE_HELLO, title="The hello is well formed, its roles and formats consistent",
             description="A normal handshake; the reference server validates client/hello field by field "
                         "(types, role versions, a player's formats and buffer) and logs which support "
                         "objects it carried.",
             expectation="The server accepts the client/hello, and each declared role that has a support object "
                         "(player, artwork, visualizer) comes with it, and no support object without its role.",
             source="spec: client/hello — `player@v1_support`: \"only if `player@v1` is listed\"")
async def hello_well_formed(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    await w.until("a hello read", lambda ev: server_sessions(ev) or ev.select("reject"), 15)
    await w.observe(0.5)
    ev = w.events()
    for r in ev.select("reject"):
        j.require(False, f"the server refused {r['type']}: {r.get('field') or ''} {r['rule']}".replace("  ", " "))
    hellos = server_sessions(ev)
    if not j.require(bool(hellos), "no client/hello was read within 15 s"):
        return
    j.require(bool(ev.select("send_end", type="server/hello")), "the server sent no server/hello")
    roles, supports = set(hellos[0]["roles"]), set(hellos[0].get("supports") or ())
    for role in sorted(roles & ROLES_WITH_SUPPORT):
        j.require(f"{role}_support" in supports, f"it declares {role} but sends no {role}_support: a server "
                  "cannot know what to send it")
    for key in sorted(supports):
        j.require(key.removesuffix("_support") in roles, f"it sends {key} without declaring that role")
