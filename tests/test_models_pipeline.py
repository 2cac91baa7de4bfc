"""The four reference models, exported by both torch exporters: collapse every activation and check
the result equals the requested semantics; merging makes the critical path strictly shorter."""
import pytest

import collapse_passes as cp

MODELS = ["resnet18", "mobilenet_v2", "vgg16_bn", "swin_t"]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", MODELS)
def test_collapse_all_matches_requested_semantics(exported, name, dynamo):
    path = exported(name, dynamo)
    keys = [k["key"] for k in cp.list_keys(path)]
    r = cp.collapse(path, collapse=keys)
    rep = r.report
    assert rep["passed"] and rep["verification"]["against_requested"]["passed"]
    assert rep["collapsed"] == len(rep["activations"]) > 0
    assert rep["after"]["depth_nonlinear"] < rep["before"]["depth_nonlinear"]
    if rep["merges"]:
        assert rep["after"]["depth_ops"] < rep["before"]["depth_ops"]
        assert all(m["exact"] for m in rep["merges"])
    # the collapse itself changes the function: that price is reported separately
    assert rep["verification"]["against_original"]["max_abs"] > 0


@pytest.mark.parametrize("name", MODELS)
def test_both_exporters_give_the_same_keys(exported, name):
    a = [k["key"] for k in cp.list_keys(exported(name, False))]
    b = [k["key"] for k in cp.list_keys(exported(name, True))]
    assert a == b


def test_mobilenet_blocks_merge_to_one_conv_and_lower_macs(exported):
    path = exported("mobilenet_v2", False)
    keys = [k["key"] for k in cp.list_keys(path)]
    r = cp.collapse(path, collapse=keys)
    rep = r.report
    conv_merges = [m for m in rep["merges"] if m["kind"] == "conv"]
    hoists = [m for m in rep["merges"] if m["kind"] == "pool-hoist"]
    # every inverted-residual block but the last, whose project conv runs after the global pool with the head
    # conv instead (onnx/passes/hoist_global_pool.py; cheaper than merging it into the block)
    assert len(conv_merges) >= 15 and len(hoists) == 2
    assert any(len(m["nodes"]) == 3 for m in conv_merges)  # pointwise-depthwise-pointwise -> one conv
    assert rep["after"]["macs"] < rep["before"]["macs"]
    assert any(m["kind"] == "residual-identity" for m in rep["merges"])


def test_swin_mlp_collapses_to_one_linear(exported):
    path = exported("swin_t", True)
    keys = [k["key"] for k in cp.list_keys(path)]
    assert all(k.endswith("mlp.act") for k in keys)
    r = cp.collapse(path, collapse=keys)
    dense = [m for m in r.report["merges"] if m["kind"] == "dense"]
    assert len(dense) == len(keys)
    assert all(m["macs_before"] == 8 * m["macs_after"] for m in dense)


def test_partial_collapse_by_module_path(exported):
    path = exported("resnet18", True)
    r = cp.collapse(path, scores={"layer1.0.relu1": 0.0, "layer2.1.relu2": 0.05, "layer3.0.relu1": 0.9}, threshold=0.1)
    assert [a["key"] for a in r.report["activations"] if a["collapsed"]] == ["layer1.0.relu1", "layer2.1.relu2"]
    assert r.report["passed"]


def test_block_keys_are_module_paths_for_both_exporters(exported):
    import onnx

    from collapse_passes.onnx.blocks import find_residual_blocks
    from collapse_passes.onnx.graph import node_key_names, to_graph

    keys = []
    for dynamo in (False, True):
        m = onnx.load(exported("resnet18", dynamo))
        keys.append([b.key for b in find_residual_blocks(to_graph(m), node_key_names(m))])
    assert keys[0] == keys[1] == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1",
                                  "layer4.0", "layer4.1"]
