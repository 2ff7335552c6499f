"""Flower glue: eavesdrop on a real Flower federation from its server.

:class:`EavesdroppingStrategy` wraps any Flower message-API strategy (``flwr.serverapp.strategy``,
Flower ≥ 1.21; FedAvg first). Each training round it records the weights θ sent to every node
and the weights θ' each node returns, hands the aggregation to the wrapped strategy untouched,
and passes every reply, as a :class:`~gradleak.integrations.capture.CapturedUpdate`, to an
:class:`~gradleak.integrations.eavesdropper.Eavesdropper`, which attacks it off the round's path.

This module and :mod:`~gradleak.integrations.flower_privacy` (Flower's DP wrappers/mods and SecAgg+
around the same eavesdropper) are the only ones that know Flower's types (``ArrayRecord``, ``Message``); the rest
lives in framework-free modules: :mod:`~gradleak.integrations.weights` (θ, θ' → update),
:mod:`~gradleak.integrations.capture` (captures and ground-truth files) and
:mod:`~gradleak.integrations.eavesdropper` (the attack, scoring, result sinks, threat model).
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import GradleakError
from .capture import CapturedUpdate, GroundTruth
from .eavesdropper import EavesdropConfig, Eavesdropper, ResultSink
from .weights import TaskSpec

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, ConfigRecord, Message

try:  # flwr is an optional extra; everything but the strategy wrapper works without it
    from flwr.serverapp.strategy import Strategy as _FlowerStrategy

    HAVE_FLWR = True
except ModuleNotFoundError as _exc:  # pragma: no cover - exercised only without flwr
    if not (_exc.name or "").startswith("flwr"):
        raise
    _FlowerStrategy = object  # type: ignore[assignment,misc]
    HAVE_FLWR = False

FLWR_MISSING = "Flower is not installed; pip install 'gradleak[flower]' (flwr 1.41)"


def require_flwr() -> None:
    """Raise a one-line GradleakError unless flwr can be imported."""
    if not HAVE_FLWR:
        raise GradleakError(FLWR_MISSING)


# --------------------------------------------------------------------------------------------
# ArrayRecord helpers and the strategy wrapper


def _record_to_numpy(record: "ArrayRecord") -> dict[str, np.ndarray]:
    return {k: np.array(v.numpy(), copy=True) for k, v in record.items()}


def _plain(record: Any) -> dict[str, Any]:
    return dict(record.items()) if record is not None else {}


class EavesdroppingStrategy(_FlowerStrategy):
    """Any Flower message-API strategy, plus a curious server reading every training reply.

    Every call is delegated to ``strategy``; ``aggregate_train`` gets the very replies it would
    have got, and its return value is passed back unchanged. Capturing costs one copy of the
    arrays per reply on the round's path; attacking happens in the :class:`Eavesdropper`'s
    off-path workers.
    """

    def __init__(self, strategy: "_FlowerStrategy", eavesdropper: Eavesdropper,
                 observed: str = "individual reply") -> None:
        require_flwr()
        self.strategy = strategy
        self.eavesdropper = eavesdropper
        self.observed = observed  # what each reply is, in the records (e.g. "individual reply, clipped …")
        self._sent: dict[tuple[int, int], tuple[dict[str, np.ndarray], dict[str, Any]]] = {}

    def __getattr__(self, name: str) -> Any:
        # Attributes the wrapped strategy has (weighted_by_key, fractions, …) read through.
        if name in ("strategy", "eavesdropper", "_sent", "observed"):
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: "ArrayRecord", config: "ConfigRecord", grid
    ) -> Iterable["Message"]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        try:
            snapshots: dict[int, tuple[dict[str, np.ndarray], dict[str, Any]]] = {}
            for msg in messages:
                content = msg.content
                if id(content) not in snapshots:  # FedAvg sends every node the same RecordDict
                    record = self._pick(content.array_records, "arrayrecord_key")
                    conf = self._pick(content.config_records, "configrecord_key")
                    snapshots[id(content)] = (_record_to_numpy(record) if record is not None else {}, _plain(conf))
                self._sent[(server_round, int(msg.metadata.dst_node_id))] = snapshots[id(content)]
        except Exception:  # noqa: BLE001 - eavesdropping must never break the round
            traceback.print_exc()
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable["Message"]):
        replies = list(replies)  # may be a one-shot iterator; the wrapped strategy gets the same list
        for reply in replies:
            try:
                self._capture(server_round, reply)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
        self._sent = {k: v for k, v in self._sent.items() if k[0] > server_round}
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays, config, grid):
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies):
        return self.strategy.aggregate_evaluate(server_round, replies)

    def _pick(self, records: Mapping[str, Any], key_attr: str):
        key = getattr(self.strategy, key_attr, None)
        if key is not None and key in records:
            return records[key]
        return next(iter(records.values()), None)

    def _capture(self, server_round: int, reply: "Message") -> None:
        node_id = int(reply.metadata.src_node_id)
        if reply.has_error():
            self.eavesdropper.skip((server_round, node_id), f"client replied with an error: {reply.error.reason}")
            return
        sent = self._sent.get((server_round, node_id))
        record = self._pick(reply.content.array_records, "arrayrecord_key")
        if sent is None or record is None:
            self.eavesdropper.skip((server_round, node_id), "no weights sent to or returned by this node")
            return
        metrics = next(iter(reply.content.metric_records.values()), None)
        self.eavesdropper.capture(CapturedUpdate(server_round, node_id, sent[0], _record_to_numpy(record),
                                                 dict(sent[1]), _plain(metrics), observed=self.observed))


def eavesdrop(strategy: "_FlowerStrategy", task: TaskSpec, config: EavesdropConfig = EavesdropConfig(),
              ground_truth: GroundTruth | None = None, sinks: Sequence[ResultSink] = ()) -> EavesdroppingStrategy:
    """Wrap ``strategy`` so that every training reply is attacked as ``config`` says."""
    return EavesdroppingStrategy(strategy, Eavesdropper(task, config, ground_truth, sinks))


__all__ = ["FLWR_MISSING", "HAVE_FLWR", "EavesdroppingStrategy", "eavesdrop", "require_flwr"]
