"""Threshold options of the AdaMoLE layer (issue 10) against a per-expert loop reference.

Options: ``balance_score`` (load-balancing loss on p instead of p - tau), ``threshold_budget``
(a target mean active-expert count), ``threshold_entropy`` (entropy of the active count),
``max_threshold = 1/(2N)`` and ``expert_init="orthogonal"``. The reference below is written like
the official code: a Python loop over experts, each gathering its active tokens with ``nonzero``,
in float64; the aux loss is built expert by expert, and the active-count distribution of the
entropy term by enumerating all 2^N subsets of experts (not the layer's one-expert-at-a-time
recursion). Tolerances as
in test_layer.py: ``rtol=1e-4, atol=1e-5`` (float32 layer against float64 reference).
"""

import itertools
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from torch import nn

from sparsekit.adamole import AdaMoLEConfig, AdaMoLELinear, collect_aux_loss, routing_statistics

from .layer_helpers import HAND_X, PARAMETER_SYMBOLS, hand_made_layer

D_IN, D_OUT, N, R = 24, 20, 4, 3


def subset_count_distribution(chance):
    """[T, N+1] distribution of the number of active experts, by enumerating all subsets."""
    T, n = chance.shape
    dist = torch.zeros(T, n + 1, dtype=chance.dtype)
    for subset in itertools.product((0, 1), repeat=n):
        prob = torch.ones(T, dtype=chance.dtype)
        for i, on in enumerate(subset):
            prob = prob * (chance[:, i] if on else 1 - chance[:, i])
        dist[:, sum(subset)] += prob
    return dist


def loop_reference(
    x, P, *, tau_max, scaling, balance_score="adapted", budget=None, entropy=None, valid=None
):
    """Output and aux loss of one adaptive AdaMoLE layer, expert by expert (float64).

    ``valid``: float [T] token mask (1 = real token) for the aux loss, or None."""
    y = x @ P["W0"].T + P["b0"]
    X = x.reshape(-1, x.shape[-1])
    T = X.shape[0]
    p = torch.softmax(X @ P["Wg"].T, dim=-1)
    tau = torch.sigmoid(X @ P["Wt"].T + P["bt"]) * tau_max  # [T, 1]
    out = torch.zeros(T, P["B"].shape[0], dtype=X.dtype)
    v = torch.ones(T, dtype=X.dtype) if valid is None else valid.to(X.dtype)
    n_valid = v.sum()
    active = [(p[:, i] - tau[:, 0]) >= 0 for i in range(N)]
    total = sum(torch.where(active[i], p[:, i] - tau[:, 0], 0.0) for i in range(N))
    total = torch.where(total == 0, torch.ones_like(total), total)
    aux = 0.0
    soft_count = torch.zeros(T, dtype=X.dtype)
    for i in range(N):
        a_i = p[:, i] - tau[:, 0]
        idx = torch.nonzero(active[i]).flatten()
        if len(idx) > 0:
            w_i = a_i[idx] / total[idx]
            A_i = P["A"][i * R : (i + 1) * R]
            B_i = P["B"][:, i * R : (i + 1) * R]
            expert = (X[idx] @ A_i.T) @ B_i.T * scaling
            out = out.index_add(0, idx, w_i[:, None] * expert)
        f_i = (v * active[i].to(X.dtype)).sum() / n_valid
        score_i = a_i if balance_score == "adapted" else p[:, i]
        aux = aux + N * f_i * (v * score_i).sum() / n_valid
        soft_count = soft_count + torch.sigmoid(a_i / (0.1 * tau_max))
    if budget is not None:
        aux = aux + ((v * soft_count).sum() / n_valid - budget) ** 2
    if entropy is not None:
        chance = torch.sigmoid((p - tau) / (0.1 * tau_max))
        q = (v[:, None] * subset_count_distribution(chance)).sum(0) / n_valid
        aux = aux + entropy * (math.log(N + 1) + (q * torch.log(q)).sum())
    return y + out.reshape(*x.shape[:-1], -1), aux


def make_layer(seed=0, gate_std=0.5, **cfg):
    kwargs = {"num_experts": N, "r": R, "lora_alpha": 6, "init_lora_weights": False}
    kwargs.update(cfg)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer = AdaMoLELinear(nn.Linear(D_IN, D_OUT), "default", config=AdaMoLEConfig(**kwargs))
        with torch.no_grad():
            layer.lora_gate["default"].weight.normal_(0, gate_std)
    return layer


def inputs(seed=1, shape=(2, 13)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, D_IN, generator=gen).requires_grad_()
    g = torch.randn(*shape, D_OUT, generator=gen)
    return x, g


def compare(layer, *, balance_score, budget, entropy=None, valid=None, aux_weight=0.7):
    """Output, aux loss and every gradient of ``sum(out * g) + aux_weight * aux`` equal the loop."""
    layer.zero_grad(set_to_none=True)
    x, g = inputs()
    mask = None if valid is None else valid.reshape(x.shape[:-1])
    with collect_aux_loss(layer, attention_mask=mask) as aux:
        out = layer(x)
    ((out * g).sum() + aux_weight * aux.loss).backward()
    P = {
        PARAMETER_SYMBOLS[n]: p.detach().double().requires_grad_()
        for n, p in layer.named_parameters()
    }
    x_ref = x.detach().double().requires_grad_()
    ref_out, ref_aux = loop_reference(
        x_ref,
        P,
        tau_max=layer.tau_max["default"],
        scaling=layer.scaling["default"],
        balance_score=balance_score,
        budget=budget,
        entropy=entropy,
        valid=valid,
    )
    ((ref_out * g.double()).sum() + aux_weight * ref_aux).backward()
    tol = {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(out.detach().double(), ref_out.detach(), **tol)
    torch.testing.assert_close(aux.loss.detach().double(), ref_aux.detach(), **tol)
    torch.testing.assert_close(x.grad.double(), x_ref.grad, **tol)
    for name, p in layer.named_parameters():
        torch.testing.assert_close(
            p.grad.double(), P[PARAMETER_SYMBOLS[name]].grad, **tol, msg=name
        )
    return aux.loss.item(), ref_aux.item()


# ----------------------------------------------------------------------------- reference checks
@pytest.mark.parametrize("expert_compute", ["dense", "gathered"])
@pytest.mark.parametrize("balance_score", ["adapted", "probs"])
@pytest.mark.parametrize("budget", [None, 2.0, 1.0])
@pytest.mark.parametrize("entropy", [None, 0.5])
def test_options_match_loop_reference(balance_score, budget, entropy, expert_compute):
    """Outputs, aux loss and all gradients equal the loop reference for every combination."""
    layer = make_layer(
        balance_score=balance_score,
        threshold_budget=budget,
        threshold_entropy=entropy,
        expert_compute=expert_compute,
    )
    compare(layer, balance_score=balance_score, budget=budget, entropy=entropy)


@pytest.mark.parametrize("balance_score", ["adapted", "probs"])
@pytest.mark.parametrize("entropy", [None, 2.0])
def test_options_exclude_padding_like_the_reference(balance_score, entropy):
    valid = torch.ones(26)
    valid[[3, 10, 11, 25]] = 0
    layer = make_layer(balance_score=balance_score, threshold_budget=1.5, threshold_entropy=entropy)
    compare(layer, balance_score=balance_score, budget=1.5, entropy=entropy, valid=valid)


def test_the_options_change_the_loss():
    """Each option gives a different aux loss than the default on the same layer (so a test
    comparing against the reference with the option can tell it from the default)."""
    base, _ = compare(make_layer(), balance_score="adapted", budget=None)
    probs, _ = compare(make_layer(balance_score="probs"), balance_score="probs", budget=None)
    budget, _ = compare(make_layer(threshold_budget=2.0), balance_score="adapted", budget=2.0)
    entropy, _ = compare(
        make_layer(threshold_entropy=0.5), balance_score="adapted", budget=None, entropy=0.5
    )
    assert abs(probs - base) > 1e-3 and abs(budget - base) > 1e-3 and abs(entropy - base) > 1e-3


# ----------------------------------------------------------------------------- what they do


def test_balance_on_probs_does_not_push_the_threshold():
    """On p - tau the aux loss raises tau (negative gradient on the threshold bias); on p it has
    no path to tau at all (the active fractions carry no gradient)."""
    adapted, probs = hand_made_layer(), hand_made_layer(balance_score="probs")
    for layer in (adapted, probs):
        with collect_aux_loss(layer) as aux:
            layer(HAND_X)
        aux.loss.backward()
    assert adapted.lora_threshold["default"].bias.grad.item() < -0.1
    grad = probs.lora_threshold["default"].bias.grad
    assert grad is None or grad.item() == 0.0
    # f = [2/3, 2/3], mean p = [7/15, 8/15]: L = 2 * (2/3) * 1 = 4/3
    with collect_aux_loss(probs) as aux:
        probs(HAND_X)
    torch.testing.assert_close(aux.loss, torch.tensor(4 / 3))


def test_threshold_budget_pulls_the_threshold_down_when_too_few_experts_are_active():
    """Smooth mean count 1.43 (margins .55/-.05, .25/.25, -.15/.65 at temperature 0.05): a
    budget of 2 adds a positive gradient on the threshold bias (descent lowers tau, against the
    balance loss's push up); a budget of 1 (below the count) adds a negative one."""
    grads = {}
    for budget in (None, 1.0, 2.0):
        layer = hand_made_layer(threshold_budget=budget)
        with collect_aux_loss(layer) as aux:
            layer(HAND_X)
        aux.loss.backward()
        grads[budget] = layer.lora_threshold["default"].bias.grad.item()
    torch.testing.assert_close(grads[None], -1 / 3)  # the paper's loss raises tau
    # budget term: 2 (k - 2) dk/db, dk/db = -(1/3) sum_t,i s'(a_ti / .05) / .05 * (1/8)
    a = torch.tensor([[0.55, -0.05], [0.25, 0.25], [-0.15, 0.65]], dtype=torch.float64)
    s = torch.sigmoid(a / 0.05)
    k = s.sum(-1).mean()
    dk_db = -(s * (1 - s) / 0.05).sum() / 3 * (0.5 * 0.25)
    for budget in (1.0, 2.0):
        expected = float(2 * (k - budget) * dk_db)
        assert grads[budget] - grads[None] == pytest.approx(expected, rel=1e-4)
    assert grads[2.0] > grads[None] > grads[1.0]


def test_threshold_entropy_is_the_gap_to_an_even_spread_of_active_counts():
    """N = 2, margins .55/-.05, .25/.25, -.15/.65 at temperature 0.05: with s = sigmoid(a / .05)
    the count of token t is 0, 1, 2 with chances (1-s1)(1-s2), s1(1-s2) + (1-s1)s2, s1 s2; q is
    their token mean and the term adds beta * (log 3 - H(q)) to the paper's loss. Equal counts
    (every token with p = [.5, .5], both experts active) give nearly the largest gap, log 3."""
    losses = {}
    for beta in (None, 0.3):
        layer = hand_made_layer(threshold_entropy=beta)
        with collect_aux_loss(layer) as aux:
            layer(HAND_X)
        losses[beta] = aux.loss.item()
    a = torch.tensor([[0.55, -0.05], [0.25, 0.25], [-0.15, 0.65]], dtype=torch.float64)
    s1, s2 = torch.sigmoid(a / 0.05).unbind(-1)
    q = torch.stack([(1 - s1) * (1 - s2), s1 * (1 - s2) + (1 - s1) * s2, s1 * s2]).mean(-1)
    gap = math.log(3) + float((q * q.log()).sum())
    assert 0.3 < gap < 0.6  # counts 1, 2, 1: spread, but not evenly over 0, 1, 2
    assert losses[0.3] - losses[None] == pytest.approx(0.3 * gap, rel=1e-5)

    same = torch.zeros(1, 3, 2)  # p = [.5, .5] for every token: margins .25, count 2 everywhere
    terms = []
    for beta in (None, 1.0):
        layer = hand_made_layer(threshold_entropy=beta)
        with collect_aux_loss(layer) as aux:
            layer(same)
        terms.append(aux.loss.item())
    equal_gap = terms[1] - terms[0]
    assert math.log(3) - 0.1 < equal_gap <= math.log(3)
    assert equal_gap > gap + 0.4


def test_threshold_entropy_gradients_stay_finite_when_the_counts_saturate():
    """Margins of +-.2 at temperature .0125 (N = 8) make sigmoid exactly 0 or 1 in float32, so
    some count probabilities are exactly 0; the gradients must stay finite (a plain q log q gave
    NaN here)."""
    layer = make_layer(num_experts=8, gate_std=20.0, threshold_entropy=1.0)
    x, g = inputs()
    with collect_aux_loss(layer) as aux:
        out = layer(x * 10)
    ((out * g).sum() + aux.loss).backward()
    assert torch.isfinite(aux.loss)
    for name, param in layer.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), name


def test_half_max_threshold_is_expressible():
    """``max_threshold = 1/(2N)`` reaches the layer as tau_max and the routing uses it."""
    layer = make_layer(max_threshold=1 / (2 * N))
    assert layer.tau_max["default"] == pytest.approx(1 / 8)
    compare(layer, balance_score="adapted", budget=None)
    x, _ = inputs()
    with collect_aux_loss(layer):
        layer(x)
    stats = routing_statistics(layer)
    # tau = sigmoid(.) / 8 < 1/8, so every tau is below the cap 1/8, and tau / tau_max in (0, 1)
    assert 0 < stats["tau_mean"] < 1 / 8
    assert stats["tau_over_max"] == pytest.approx(stats["tau_mean"] * 8)


def test_orthogonal_expert_init_breaks_the_symmetry():
    """With the LoRA init (B = 0) the gate gets no gradient from the task loss at step 0; with
    ``expert_init="orthogonal"`` it does, the experts' A blocks are orthogonal to each other and
    the initial update is tiny."""
    grads, layers = {}, {}
    for init in ("lora", "orthogonal"):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            cfg = AdaMoLEConfig(num_experts=N, r=R, expert_init=init)
            layer = AdaMoLELinear(nn.Linear(D_IN, D_OUT), "default", config=cfg)
        x, g = inputs()
        (layer(x) * g).sum().backward()
        grads[init] = layer.lora_gate["default"].weight.grad.abs().max().item()
        layers[init] = layer
    assert grads["lora"] == 0.0
    assert grads["orthogonal"] > 0.0
    A = layers["orthogonal"].lora_A["default"].weight.detach()
    torch.testing.assert_close(A @ A.T, torch.eye(N * R) / 3, atol=1e-6, rtol=0)
    B = layers["orthogonal"].lora_B["default"].weight.detach()
    assert 0 < B.abs().max() < 1e-2
    # the forward still equals the loop reference with this init
    compare(layers["orthogonal"], balance_score="adapted", budget=None)


def test_statistics_report_spread_and_cap():
    """Counts 1, 2, 1 -> mean 4/3, sd sqrt(2 - 16/9); tau = tau_max / 2 -> ratio 0.5, none near
    the cap; a large threshold bias puts every token near the cap."""
    layer = hand_made_layer()
    with collect_aux_loss(layer):
        layer(HAND_X)
    stats = routing_statistics(layer)
    assert stats["mean_active_experts"] == pytest.approx(4 / 3)
    assert stats["active_experts_std"] == pytest.approx(math.sqrt(2 - 16 / 9))
    assert stats["tau_over_max"] == pytest.approx(0.5)
    assert stats["near_cap_fraction"] == 0.0
    with torch.no_grad():
        layer.lora_threshold["default"].bias.fill_(5.0)  # sigmoid(5) = 0.993
    with collect_aux_loss(layer):
        layer(HAND_X)
    stats = routing_statistics(layer)
    assert stats["near_cap_fraction"] == 1.0
    assert stats["tau_over_max"] == pytest.approx(1 / (1 + math.exp(-5)))


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"balance_score": "p"}, "balance_score"),
        ({"expert_init": "random"}, "expert_init"),
        ({"threshold_budget": 0.5}, r"threshold_budget.*\[1, num_experts=8\]"),
        ({"threshold_budget": 9}, r"threshold_budget.*\[1, num_experts=8\]"),
        ({"threshold_budget": True}, "threshold_budget"),
        ({"threshold_budget": 2, "routing": "topk"}, "needs routing='adaptive'"),
        ({"threshold_entropy": 0.0}, "threshold_entropy.*positive finite"),
        ({"threshold_entropy": -1.0}, "threshold_entropy.*positive finite"),
        ({"threshold_entropy": float("inf")}, "threshold_entropy.*positive finite"),
        ({"threshold_entropy": True}, "threshold_entropy"),
        ({"threshold_entropy": "1"}, "threshold_entropy"),
        ({"threshold_entropy": 1.0, "routing": "threshold"}, "needs routing='adaptive'"),
    ],
)
def test_config_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaMoLEConfig(**kwargs)


def test_classifier_passes_the_options_to_the_layers(clf_bert_dir, sentiment_data):
    from sparsekit.adamole import AdaMoLEClassifier

    X, y, _, _ = sentiment_data
    clf = AdaMoLEClassifier(
        base_model=clf_bert_dir,
        num_experts=4,
        expert_rank=2,
        max_threshold=1 / 8,
        balance_score="probs",
        threshold_budget=2.0,
        threshold_entropy=0.5,
        expert_init="orthogonal",
        num_epochs=1,
        batch_size=16,
        max_length=16,
        random_state=0,
    ).fit(X[:32], y[:32])
    layers = [m for m in clf.model_.modules() if isinstance(m, AdaMoLELinear)]
    assert layers
    for layer in layers:
        assert layer.balance_score["default"] == "probs"
        assert layer.threshold_budget["default"] == 2.0
        assert layer.threshold_entropy["default"] == 0.5
        assert layer.expert_init["default"] == "orthogonal"
        assert layer.tau_max["default"] == pytest.approx(1 / 8)
    assert clf.max_threshold_ == pytest.approx(1 / 8)
    record = clf.history_[-1]
    for key in ("active_experts_std", "tau_over_max", "near_cap_fraction"):
        assert record[key] is not None and math.isfinite(record[key])


def test_classifier_rejects_a_budget_without_adaptive_routing(clf_bert_dir, sentiment_data):
    from sparsekit.adamole import AdaMoLEClassifier

    X, y, _, _ = sentiment_data
    clf = AdaMoLEClassifier(
        base_model=clf_bert_dir, routing="topk", threshold_budget=2.0, num_epochs=1
    )
    with pytest.raises(ValueError, match="needs routing='adaptive'"):
        clf.fit(X[:16], y[:16])


def test_classifier_rejects_a_bad_threshold_entropy(clf_bert_dir, sentiment_data):
    from sklearn.utils._param_validation import InvalidParameterError

    from sparsekit.adamole import AdaMoLEClassifier

    X, y, _, _ = sentiment_data
    for bad in (0.0, -0.5):
        clf = AdaMoLEClassifier(base_model=clf_bert_dir, threshold_entropy=bad, num_epochs=1)
        with pytest.raises(InvalidParameterError, match="threshold_entropy"):
            clf.fit(X[:16], y[:16])
    clf = AdaMoLEClassifier(
        base_model=clf_bert_dir, routing="topk", threshold_entropy=1.0, num_epochs=1
    )
    with pytest.raises(ValueError, match="needs routing='adaptive'"):
        clf.fit(X[:16], y[:16])


def test_classifier_defaults_to_the_balance_loss_on_probs():
    """The estimator's default is the study's choice; the peft-level config keeps the paper's."""
    from sparsekit.adamole import AdaMoLEClassifier

    assert AdaMoLEClassifier().get_params()["balance_score"] == "probs"
    assert AdaMoLEConfig().balance_score == "adapted"
