"""Defence-aware attacks (knows_defense): known answers for each piece, and the aware inversion
against the naive one on a pruned digits update."""

import json

import pytest
import torch

import gradleak.attacks.inversion.defense_aware as da
from gradleak.attacks.inversion import InversionConfig, invert, preset
from gradleak.attacks.inversion.invert import GradientMatcher
from gradleak.attacks.labels import recover_labels
from gradleak.attacks.labels.unclip import clip_scale
from gradleak.defenses import apply_defenses, build_defenses, global_norm
from gradleak.metrics import evaluate_images
from gradleak.models import build_model
from gradleak.threat import ClientUpdate, ThreatModel, simulate_client
from gradleak.threat.io import load_update, save_update

pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(digits, spec, B=1, seed=0, clip_fraction=None):
    """LeNet (eval mode), the first B digits after ``seed·B``, the defended update and both threat models."""
    x, y = digits.images[seed * B:(seed + 1) * B], digits.labels[seed * B:(seed + 1) * B]
    m = build_model("lenet", digits.input_shape, 10, seed=seed)
    m.eval()
    if clip_fraction is not None:  # clip to a fraction of the true gradient's norm
        plain = simulate_client(m, x, y, mean=digits.mean, std=digits.std)
        spec = f"{spec}:C={clip_fraction * float(global_norm(plain.tensors))}"
    upd = simulate_client(m, x, y, mean=digits.mean, std=digits.std, defenses=build_defenses([spec]))

    def observe(know, labels=True):
        return ThreatModel(knows_labels=labels, knows_defense=know).observe(
            m, upd, digits.input_shape, 10, digits.mean, digits.std, batch_size=B, labels=y)

    return m, x, y, upd, observe


def _true_gradient(m, x, y, digits):
    return simulate_client(m, x, y, mean=digits.mean, std=digits.std).tensors


def test_the_defence_record_reaches_the_attacker_only_when_granted(digits, tmp_path):
    m, x, y, upd, observe = _setup(digits, "prune:keep=0.1")
    assert observe(False).defenses is None
    assert observe(True).defenses == [{"name": "prune", "keep": 0.1}]
    assert da.pieces(observe(False), "cosine") == [] and da.pieces(observe(True), "cosine") == ["prune-mask"]
    # a recorded update carries the record too
    loaded = load_update(save_update(tmp_path / "u.safetensors", upd, m)).update
    assert loaded.defenses == [{"name": "prune", "keep": 0.1}]


@pytest.mark.parametrize("objective", ["l2", "cosine"])
def test_prune_mask_objective_is_zero_exactly_at_the_true_gradients_kept_entries(digits, objective):
    m, x, y, upd, observe = _setup(digits, "prune:keep=0.1", B=2)
    g = _true_gradient(m, x, y, digits)
    aware = da.aware_objective(observe(True), objective)
    assert float(aware(g)) == pytest.approx(0.0, abs=1e-6)
    # only the kept entries count: change every pruned entry and it is still zero
    other = [torch.where(t != 0, gi, torch.randn_like(gi)) for t, gi in zip(upd.tensors, g)]
    assert float(aware(other)) == pytest.approx(0.0, abs=1e-6)
    assert float(aware([gi * (1 + 0.1 * torch.randn_like(gi)) for gi in g])) > 1e-6  # a kept entry moved
    from gradleak.attacks.inversion import OBJECTIVES

    assert float(OBJECTIVES.get(objective)(upd.tensors)(g)) > 1e-3  # the naive match sees zeros as values


def test_l2_under_whole_update_clipping_clips_the_dummy_too(digits):
    m, x, y, upd, observe = _setup(digits, "clip", clip_fraction=0.2)
    g = _true_gradient(m, x, y, digits)
    aware = da.aware_objective(observe(True), "l2")
    assert da.pieces(observe(True), "l2") == ["clip-scale"] and da.pieces(observe(True), "cosine") == []
    assert float(aware(g)) == pytest.approx(0.0, abs=1e-10)
    assert float(aware([3 * t for t in g])) == pytest.approx(0.0, abs=1e-10)  # any norm above C clips to C
    assert float(aware([0.1 * t for t in g])) > 0  # a dummy below C (0.2 ‖g‖) is not scaled up


def test_per_example_clipping_of_the_dummy_equals_the_clients_dp_sgd_gradient_without_noise(digits):
    m, x, y, upd, observe = _setup(digits, "dp-sgd:C=0.5,sigma=0", B=3)
    params = list(m.parameters())
    norms = [float(global_norm(_true_gradient(m, x[i:i + 1], y[i:i + 1], digits))) for i in range(3)]
    assert max(norms) > 0.5  # the clip is active for some example

    def loss_of(xi, yi):
        return torch.nn.functional.cross_entropy(m(observe(True).normalize(xi)), yi)

    mine = da.clipped_mean_gradient(loss_of, params, x, y, 0.5, create_graph=False)
    for a, b in zip(mine, upd.tensors):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # and the matcher uses it: the L2 match is zero at the true images only when dp-sgd is known
    config = InversionConfig(objective="l2", regularizers={})
    aware = GradientMatcher(observe(True), config, y).matching_loss(x, create_graph=False)[0]
    naive = GradientMatcher(observe(False), config, y).matching_loss(x, create_graph=False)[0]
    assert float(aware) == pytest.approx(0.0, abs=1e-9) and float(naive) > 1e-6


def test_wiener_weights_lie_in_zero_one_and_are_one_for_strong_coordinates():
    t = torch.tensor([0.0, 0.05, -0.1, 0.2, -1.0, 10.0])
    w = da.wiener_weights(t, 0.1)
    assert torch.all((w >= 0) & (w <= 1))
    assert w[0] == 0 and w[1] == 0 and float(w[2]) < 1e-6  # zero, and no stronger than the noise (t = σ)
    assert float(w[3]) == pytest.approx(1 - 0.25)  # 1 − σ²/t²
    assert float(w[5]) == pytest.approx(1 - 1e-4)  # |t| = 100 σ: ~1
    assert torch.all(w.diff() >= 0)  # t is sorted by |t|: the weights grow with it


def test_noise_weights_are_off_by_default_and_down_weight_when_on(digits, monkeypatch):
    m, x, y, upd, observe = _setup(digits, "client-dp:C=1,sigma=0.01")
    assert "snr-weights" not in da.pieces(observe(True), "cosine")
    assert da.aware_objective(observe(True), "cosine").weights is None
    monkeypatch.setattr(da, "SNR_WEIGHTS", True)
    obj = da.aware_objective(observe(True), "cosine")
    assert "snr-weights" in da.pieces(observe(True), "cosine")
    assert obj.weights.min() == 0 and obj.weights.max() > 0.99


def test_label_recovery_undoes_a_whole_update_clip(digits):
    for B, seed in [(4, 0), (8, 1)]:
        m, x, y, upd, observe = _setup(digits, "clip", B=B, seed=seed, clip_fraction=0.1)
        true = torch.bincount(y, minlength=10)
        assert clip_scale(observe(True, labels=False)) == pytest.approx(10, rel=0.1)  # û = 1/c, c = 0.1

        def correct(know, method):
            counts = recover_labels(observe(know, labels=False), method).counts
            return int(torch.minimum(counts, true).sum())

        assert correct(True, "geng") == B and correct(False, "geng") < B  # geng reads absolute units
        assert correct(True, "ilrg-dummy") >= correct(False, "ilrg-dummy")
    # an update whose norm is below C was not clipped: nothing to undo
    *_, observe = _setup(digits, "clip:C=1000")
    assert clip_scale(observe(True, labels=False)) == 1.0


def test_defence_aware_inversion_beats_the_naive_one_on_a_pruned_digit(digits):
    """Done-when of issue #26: same budget and seed, the aware attack reconstructs the pruned update better."""
    m, x, y, upd, observe = _setup(digits, "prune:keep=0.1")
    config = preset("ig", iterations=150, regularizers={}, seed=0)
    naive = evaluate_images(invert(observe(False), y, config, progress=False).images, x)
    aware = evaluate_images(invert(observe(True), y, config, progress=False).images, x)
    assert aware.ssim > 0.95 and aware.ssim > naive.ssim + 0.1, (naive, aware)


def test_result_json_records_knows_defense_and_the_aware_pieces(tmp_path, cli):
    out = tmp_path / "run"
    code, _, err = cli(["attack", "--dataset", "digits", "--model", "lenet", "--batch-size", "1",
                        "--defense", "prune:keep=0.1", "--knows-defense", "--iterations", "3", "-q", "-o", str(out)])
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["knows_defense"] is True and "prune-mask" in result["defense_aware"]


def test_pruned_then_noised_update_hides_the_mask():
    upd = apply_defenses(["prune:keep=0.1"], [torch.randn(50)], torch.Generator().manual_seed(0))
    assert int((upd[0] != 0).sum()) == 5
    from types import SimpleNamespace

    obs = SimpleNamespace(defenses=[{"name": "prune", "keep": 0.1}, {"name": "client-dp", "C": 1.0, "sigma": 0.1}],
                          update=ClientUpdate("fedsgd", [], []), batch_size=1)
    p = da.plan(obs)
    assert not p.masked and p.noise_std == pytest.approx(0.1)


def test_the_batched_engine_uses_the_same_aware_objective(digits):
    from gradleak.attacks.inversion.batched import invert_batched, invert_sequential

    m, x, y, upd, observe = _setup(digits, "prune:keep=0.1", B=2)
    config = preset("ig", iterations=10, regularizers={}, restarts=2)
    a = invert_batched(observe(True), y[None], config).reconstructions[0]
    b = invert_sequential(observe(True), y[None], config).reconstructions[0]
    naive = invert_sequential(observe(False), y[None], config).reconstructions[0]
    assert a.matching_loss == pytest.approx(b.matching_loss, rel=1e-4, abs=1e-7)
    torch.testing.assert_close(a.images, b.images, atol=1e-4, rtol=0)
    assert not torch.allclose(a.images, naive.images)


def test_gradient_scale_maps_update_units_to_gradient_units():
    assert ClientUpdate("fedsgd", [], []).gradient_scale() == 1.0
    assert ClientUpdate("fedavg", [], [], 5, 0.1).gradient_scale() == pytest.approx(2.0)  # 1 / (K η)
    assert ClientUpdate("fedavg", [], [], 5, None).gradient_scale() is None
