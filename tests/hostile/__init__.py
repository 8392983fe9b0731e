"""
The hostile-traffic level: attacks replayed against a real Service on the
loopback interface (from a process of their own, L{tests.hostile.attacker}),
while a legitimate peer connects and exchanges messages.
"""
