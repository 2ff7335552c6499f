"""Attack real federated-learning frameworks from their server side.

``flower``: :class:`~gradleak.integrations.flower.EavesdroppingStrategy` wraps a Flower strategy;
``flower_local``: a SuperLink and SuperNodes on loopback for demos and tests;
``offpath``: the bounded, killable worker that keeps attacks off the round's path.
"""
