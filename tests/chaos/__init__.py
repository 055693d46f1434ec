"""Fault schedules with a history checker (Jepsen-style) on a real cluster.

* :mod:`tests.harness`: the node processes, their faults and the network namespaces (or
  SIGSTOP) that cut nodes off, shared with the integration tests;
* :mod:`tests.chaos.workload`: admin clients rotating, SSO clients encrypting/decrypting;
* :mod:`tests.chaos.nemesis`: random faults from a seeded RNG;
* :mod:`tests.chaos.history`: the recorded operations;
* :mod:`tests.chaos.checker`: what the history, the final state and the Raft logs must
  satisfy;
* :mod:`tests.chaos.runner`: one run, end to end.

Short runs are part of the test suite (``tests/chaos/test_chaos.py``); a long run:
``python -m tests.chaos --seed 42 --duration 1800``.
"""
