"""Threat model and client-update simulator."""

from .threat_model import Observation, ThreatModel
from .update import ClientUpdate, UpdateConfig, fedsgd_gradient, simulate_client

__all__ = ["ClientUpdate", "Observation", "ThreatModel", "UpdateConfig", "fedsgd_gradient", "simulate_client"]
