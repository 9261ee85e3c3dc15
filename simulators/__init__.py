"""Fleet simulator: many virtual receivers speaking the Loa protocol to a real broker, with
fault injection (link cuts, power loss, flapping links, clock skew, clean reboots) and a
ground-truth log of when each receiver was really connected. See docs/simulator.md."""

from simulators.fleet import Fleet
from simulators.ground_truth import GroundTruth, Transition
from simulators.receiver import ReceiverStatus
from simulators.scenario import Fault, FaultKind, Scenario

__all__ = ["Fault", "FaultKind", "Fleet", "GroundTruth", "ReceiverStatus", "Scenario", "Transition"]
