"""Studies: one measurement end to end, from a config to its result files.

``client`` builds the victim, draws the private batch and observes the client's update under the
threat model; ``side`` builds the attacker's side models once per run; ``attack`` is the attacker
(labels, images, names); ``evaluate`` is the only code that reads the true batch; ``outputs`` writes
the files. ``rounds`` and ``label_sweep`` are studies over several updates.
"""
