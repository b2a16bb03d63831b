"""Chaos scenarios for the local cluster (``djscale chaos SCENARIO``).

See :mod:`djscale.chaos.scenarios`; the load generator is :mod:`djscale.chaos.load`.
"""

from djscale.chaos.scenarios import SCENARIOS, ChaosOptions, ChaosReport, run_scenario

__all__ = ["SCENARIOS", "ChaosOptions", "ChaosReport", "run_scenario"]
