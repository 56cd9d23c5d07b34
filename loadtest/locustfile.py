"""Locust entry point for Kindling's workloads.

    kindling loadtest run --target http://127.0.0.1:8080 --model kim_cnn --workload mmpp-40

starts Locust on this file; so can Locust itself, with the same options and its web UI:

    locust -f $(python -c 'import kindling.loadtest.locustfile as f; print(f.__file__)') \
        --host http://127.0.0.1:8080 --model kim_cnn --workload step

Locust picks up the user classes and the one shape class named here.
"""

from kindling.loadtest.driver import ArrivalUser, ClosedLoopUser, KindlingShape

__all__ = ["ArrivalUser", "ClosedLoopUser", "KindlingShape"]
