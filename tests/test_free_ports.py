"""Ports for a local server are chosen together: three asked one at a time once came back with the same
port twice, and tritonserver refused to listen for gRPC and metrics on it."""

from __future__ import annotations

import socket

from edge_thyroid.serving.server import free_port, free_ports


def test_ports_chosen_together_are_distinct_free_and_avoid_what_is_taken():
    ports = free_ports(40)
    assert len(ports) == 40 == len(set(ports))
    for port in ports[:3]:   # each one can be bound now that the chooser let go of it
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))
    taken = free_ports(5)
    assert not set(free_ports(20, avoid=taken)) & set(taken)
    assert free_ports(0) == [] and isinstance(free_port(), int)
