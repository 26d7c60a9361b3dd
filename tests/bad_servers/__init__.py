"""Deliberately wrong Sendspin servers: negative controls for the checkers.

A checker that never fails proves nothing. Each server here reproduces one
field bug faithfully, so a test can show that the harness catches it.
"""
