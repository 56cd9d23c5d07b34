"""kindling.loadtest.peers: Kindling against the servers users would pick instead."""
