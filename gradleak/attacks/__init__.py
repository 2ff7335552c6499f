"""What the attacker recovers from an observation: labels (analytic) and images (inversion)."""
