"""Attack real federated-learning frameworks from their server side.

Framework-free logic first: ``weights`` (global and returned weights → the client's update),
``capture`` (captured updates as recorded-update files, the demo's ground truth), ``eavesdropper``
(attack every capture, score it where an evaluator has the truth, write the results),
``offpath`` (the bounded, killable worker that keeps attacks off the round's path). Then the
Flower glue: ``flower`` (:class:`~gradleak.integrations.flower.EavesdroppingStrategy` wraps a
Flower strategy), ``flower_local`` (a SuperLink and SuperNodes on loopback) and ``flower_demo``.
"""
