"""Flower's own privacy features in a Flower app, with the eavesdropper placed where the server is.

:class:`~gradleak.integrations.privacy.FlowerPrivacy` (framework-free) names the features; this
module switches them on in Flower 1.41 and puts the eavesdropper exactly where an honest-but-
curious server reads the replies:

- DP (message API, ``flwr.serverapp.strategy``): :func:`with_central_dp` wraps FedAvg in Flower's
  ``DifferentialPrivacy{Client,Server}SideFixedClipping``; the app wraps *that* in an
  :class:`~gradleak.integrations.flower.EavesdroppingStrategy`, so the eavesdropper reads each reply
  as it arrives (clipped by ``fixedclipping_mod``, or noised by ``LocalDpMod``, on the client; raw
  under server-side clipping, which happens after receipt) and the Gaussian noise of central DP,
  added to the aggregate, never reaches it. :func:`privacy_mod` is the one mod the ClientApp
  carries: it applies the Flower mods the run config names.
- SecAgg+: in flwr 1.41 it exists only for the legacy strategy API. ``SecAggPlusWorkflow.__call__``
  raises ``TypeError("Expect a LegacyContext, but get Context.")`` for a plain ServerApp context and
  drives ``context.strategy.configure_fit`` / ``aggregate_fit`` (``flwr.server.strategy.Strategy``),
  which the message-API ``flwr.serverapp.strategy.Strategy`` (``configure_train`` /
  ``aggregate_train`` / ``start``) does not have; there is no SecAgg+ wrapper in
  ``flwr.serverapp.strategy``. :func:`run_secure_aggregation` therefore runs, inside the same
  ``@app.main()``, ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` over the legacy FedAvg,
  wrapped in :class:`SecAggEavesdroppingStrategy`. After unmasking, the workflow hands
  ``aggregate_fit`` one FitRes per client whose parameters are all the unmasked aggregate: that is
  everything the server holds, and the eavesdropper attacks it as one capture (node id 0,
  ``members`` the clients, ``num-examples`` their sum). On the client, :func:`legacy_fit_mod`
  translates the legacy FitIns/FitRes records that ``secaggplus_mod`` passes on to and from the
  app's message-API ``@app.train()`` function.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable, Sequence

import numpy as np

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.mod import LocalDpMod, fixedclipping_mod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
)
from flwr.serverapp.strategy import Strategy as MessageStrategy

import flwr.compat.common.recorddict_compat as compat
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from .capture import CapturedUpdate
from .eavesdropper import Eavesdropper
from .privacy import FlowerPrivacy

AGGREGATE_NODE = 0  # the node id of an aggregate's capture (Flower node ids are never 0)
Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


# --------------------------------------------------------------------------------------------
# Client side


def client_mods(privacy: FlowerPrivacy) -> list[Mod]:
    """Flower's client mods for ``privacy``, outermost first."""
    p = privacy.dp_params
    if privacy.aggregate_only:
        return [secaggplus_mod, legacy_fit_mod]  # secaggplus_mod runs the protocol's stages itself
    if privacy.dp == "client-fixed":
        return [fixedclipping_mod]
    if privacy.dp == "local":
        return [LocalDpMod(p["C"], p["sensitivity"], p["epsilon"], p["delta"])]
    return []


def privacy_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """The ClientApp's one mod: the Flower mods its run config (``flower-dp``, ``flower-secagg``) names."""
    handler = call_next
    for mod in reversed(client_mods(FlowerPrivacy.from_run_config(ctxt.run_config))):
        handler = (lambda m, c, mod=mod, nxt=handler: mod(m, c, nxt))
    return handler(msg, ctxt)


def legacy_fit_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """Legacy FitIns in (what ``SecAggPlusWorkflow`` sends), message-API ``{"arrays", "config"}`` to
    the app's train function, and its reply back as the FitRes ``secaggplus_mod`` masks.

    The legacy Parameters carry no names: the arrays reach the app keyed "0", "1", … in the
    server's state-dict order (the app loads them by position)."""
    if "fitins.parameters" not in msg.content.array_records:
        return call_next(msg, ctxt)
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    msg.content = RecordDict({"arrays": ArrayRecord(parameters_to_ndarrays(fitins.parameters)),
                              "config": ConfigRecord(dict(fitins.config))})
    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    arrays = next(iter(reply.content.array_records.values()))
    metrics = dict(next(iter(reply.content.metric_records.values()), {}))
    fitres = FitRes(Status(Code.OK, "Success"), ndarrays_to_parameters(arrays.to_numpy_ndarrays()),
                    int(metrics.get("num-examples", 0)), metrics)
    reply.content = compat.fitres_to_recorddict(fitres, keep_input=True)
    return reply


# --------------------------------------------------------------------------------------------
# Server side: DP (message API)


def with_central_dp(strategy: MessageStrategy, privacy: FlowerPrivacy, num_clients: int) -> MessageStrategy:
    """``strategy`` in Flower's central-DP wrapper for ``privacy.dp`` (unchanged for none/local)."""
    p = privacy.dp_params
    if privacy.dp == "client-fixed":
        return DifferentialPrivacyClientSideFixedClipping(strategy, p["sigma"], p["C"], num_clients)
    if privacy.dp == "server-fixed":
        return DifferentialPrivacyServerSideFixedClipping(strategy, p["sigma"], p["C"], num_clients)
    return strategy


# --------------------------------------------------------------------------------------------
# Server side: SecAgg+ (legacy strategy API)


class SecAggEavesdroppingStrategy(LegacyStrategy):
    """A legacy strategy under ``SecAggPlusWorkflow``, plus a curious server reading what it is given.

    Every call is delegated to ``strategy``. ``aggregate_fit`` receives, after unmasking, one result
    per client whose parameters are the aggregate; the eavesdropper captures that aggregate once
    per round, with the clients as ``members`` and the sum of their ``num_examples``.
    """

    def __init__(self, strategy: LegacyStrategy, eavesdropper: Eavesdropper, observed: str) -> None:
        self.strategy = strategy
        self.eavesdropper = eavesdropper
        self.observed = observed
        self._sent: dict[int, tuple[dict[str, np.ndarray], dict[str, Any]]] = {}

    def initialize_parameters(self, client_manager):
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters, client_manager):
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        try:
            config = dict(instructions[0][1].config) if instructions else {}
            self._sent[server_round] = (_numbered(parameters_to_ndarrays(parameters)), config)
        except Exception:  # noqa: BLE001 - eavesdropping must never break the round
            traceback.print_exc()
        return instructions

    def aggregate_fit(self, server_round: int, results, failures):
        try:
            self._capture(server_round, results)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
        return self.strategy.aggregate_fit(server_round, results, failures)

    def configure_evaluate(self, server_round: int, parameters, client_manager):
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round: int, results, failures):
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters):
        return self.strategy.evaluate(server_round, parameters)

    def _capture(self, server_round: int, results: Sequence[tuple[Any, FitRes]]) -> None:
        sent = self._sent.pop(server_round, None)
        key = (server_round, AGGREGATE_NODE)
        if sent is None or not results:
            self.eavesdropper.skip(key, "no weights sent, or no client finished the secure aggregation")
            return
        aggregate = _numbered(parameters_to_ndarrays(results[0][1].parameters))
        members = tuple(sorted(int(proxy.node_id) for proxy, _ in results))
        total = sum(int(res.num_examples) for _, res in results)
        # SecAgg+ masks the weights only: each client's FitRes metrics reach the server in the clear.
        clear = sorted({k for _, res in results for k in (res.metrics or {})})
        observed = self.observed + (f"; each client's {', '.join(clear)} in the clear" if clear else "")
        self.eavesdropper.capture(CapturedUpdate(server_round, AGGREGATE_NODE, sent[0], aggregate, dict(sent[1]),
                                                 {"num-examples": total}, observed=observed, members=members))


def _numbered(arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    # Legacy Parameters are unnamed: keyed by position, read back in the model's state-dict order.
    return {str(i): np.array(a, copy=True) for i, a in enumerate(arrays)}


def run_secure_aggregation(grid, context: Context, privacy: FlowerPrivacy, eavesdropper: Eavesdropper,
                           initial: Sequence[np.ndarray], num_rounds: int, num_clients: int,
                           train_config: dict[str, Any]) -> SecAggEavesdroppingStrategy:
    """FedAvg under SecAgg+ for ``num_rounds``, the eavesdropper attacking each round's aggregate.

    ``initial`` are the global weights in state-dict order; ``train_config`` (plus ``server-round``)
    is what each client's train function reads, as under the message API."""
    p = privacy.secagg_params
    fedavg = LegacyFedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=num_clients,
                          min_evaluate_clients=num_clients, min_available_clients=num_clients,
                          initial_parameters=ndarrays_to_parameters(list(initial)),
                          on_fit_config_fn=lambda r: {**train_config, "server-round": r})
    strategy = SecAggEavesdroppingStrategy(fedavg, eavesdropper, privacy.observed(num_clients))
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=num_rounds), strategy=strategy)
    workflow = SecAggPlusWorkflow(p["shares"], p["threshold"], max_weight=p["max_weight"], clipping_range=p["clip"])
    DefaultWorkflow(fit_workflow=workflow)(grid, legacy)
    return strategy


__all__ = ["AGGREGATE_NODE", "SecAggEavesdroppingStrategy", "client_mods", "legacy_fit_mod", "privacy_mod",
           "run_secure_aggregation", "with_central_dp"]
