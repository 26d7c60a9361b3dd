"""The gates: judging someone else's Sendspin implementation from outside.

The client gate (a client under test against our reference server, through the fault
proxy) and, later, the server gate (our probes against a server under test) share
everything here; only the peer they start and the catalogue of cases differ.

  case.py          numbered cases (`group.case`, Autobahn style) and their catalogue
  verdict.py       figures against bounds → a verdict, and the close verdict
  knownfailures.py an implementer's list of cases it fails for now (a stale entry is an error)
  results.py       results.json: one record per case
"""
