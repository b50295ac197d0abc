"""The ground floor: what tidings knows, as pure values and functions.

Standard library only, and nothing else of tidings: every rule here (retry,
circuit, alarms, rate limit, which endpoints get a message) is a function of its
arguments, tested with a fake clock and without a store or a network.
"""
