"""Real data: on a ResNet-18 trained on sklearn's digits (models.digits, cached), collapsing the k
lowest-scored activations (EASIER, TLC) costs less test accuracy than collapsing k random ones.

Collapsing is done by the tool's own definition (driver.requested_semantics = linearize alone) and
the accuracy measured with onnxruntime on the 400 held-out digits.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from test_scores_helpers import export_ts

KS = tuple(range(1, 9))
DRAWS = 8


def _accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    from collapse_passes.verify import session

    sess = session(model, optimize=True)
    name = sess.get_inputs()[0].name
    pred = np.array([int(np.argmax(sess.run(None, {name: x[i:i + 1]})[0])) for i in range(len(x))])
    return float(np.mean(pred == y))


@pytest.fixture(scope="module")
def digits_resnet(tmp_path_factory):
    from models.digits import digits_data, train_digits_model

    net, acc = train_digits_model("resnet18")
    x_tr, _, x_te, y_te = digits_data("resnet18")
    path = export_ts(net, tmp_path_factory.mktemp("digits") / "r.onnx", net.digits_input_shape)
    idx = np.random.default_rng(0).choice(len(x_tr), 128, replace=False)
    return {"model": onnx.load(path), "calib": {"input": x_tr.numpy()[idx]}, "x": x_te.numpy(),
            "y": y_te.numpy(), "acc": acc}


@pytest.mark.slow
def test_lowest_scored_collapse_beats_random(digits_resnet):
    from collapse_passes.onnx.driver import requested_semantics
    from collapse_passes.onnx.keys import display_key
    from collapse_passes.scores import compute_scores
    from collapse_passes.scores._acts import load_activations

    model, x, y = digits_resnet["model"], digits_resnet["x"], digits_resnet["y"]
    _, acts = load_activations(model)
    anchor = {display_key(a): a.name for a in acts}
    keys = list(anchor)
    base = _accuracy(model, x, y)
    assert base > 0.9

    cache: dict = {}

    def acc_without(ks) -> float:
        chosen = frozenset(anchor[k] for k in ks)
        if chosen not in cache:
            cache[chosen] = _accuracy(requested_semantics(model, set(chosen)), x, y)
        return cache[chosen]

    rng = np.random.default_rng(0)
    random_acc = {k: np.mean([acc_without(rng.choice(keys, k, replace=False)) for _ in range(DRAWS)]) for k in KS}
    for method in ("easier", "tlc"):
        res = compute_scores(method, model, calib=digits_resnet["calib"])
        assert set(res.scores) == set(keys)
        ranked = [k for k, _ in res.ranked()]
        scored_acc = {k: acc_without(ranked[:k]) for k in KS}
        # mean over k = 1..8 (the area under the accuracy-vs-k curve): lowest-scored first keeps more
        # accuracy than random. Single k can go either way on a net not trained towards collapse.
        print(method, {k: round(v, 3) for k, v in scored_acc.items()}, "random", {k: round(float(v), 3) for k, v in random_acc.items()})
        assert np.mean(list(scored_acc.values())) > np.mean(list(random_acc.values())), (method, scored_acc,
                                                                                          random_acc)
