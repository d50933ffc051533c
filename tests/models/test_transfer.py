"""Fine-tuning from a published Darknet detector cfg + .weights (matched to its native twin)."""

from __future__ import annotations

import pytest
import torch
from testpaths import CFG_DIR

from edgecsp.errors import EdgeCSPError

CFG = CFG_DIR / "csdarknet53-panet-spp.cfg"
pytestmark = pytest.mark.skipif(not CFG.is_file(), reason=f"published Darknet cfgs not found at {CFG_DIR}")


@pytest.fixture(scope="module")
def darknet_and_weights(tmp_path_factory):
    from edgecsp.darknet import DarknetModel, save_darknet_weights_from

    torch.manual_seed(0)
    darknet = DarknetModel(CFG, input_size=128).eval()
    for m in darknet.modules():  # non-trivial BN statistics so a misplaced tensor shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("w") / "random.weights"
    save_darknet_weights_from(darknet, path)
    return darknet, path


def test_cfg_and_weights_become_the_native_twin_with_identical_outputs(darknet_and_weights):
    from edgecsp.models.from_darknet import detector_from_cfg

    darknet, weights = darknet_and_weights
    model, twin = detector_from_cfg(CFG, weights)
    assert twin == "cspdarknet53-panet-spp" and model.config.input_size == 416
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), darknet(x)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_new_classes_keep_every_weight_but_the_prediction_convs(darknet_and_weights):
    from edgecsp.models.from_darknet import detector_from_cfg

    _, weights = darknet_and_weights
    base, _ = detector_from_cfg(CFG, weights)
    tuned, _ = detector_from_cfg(CFG, weights, num_classes=6)
    assert tuned.config.num_classes == 6 and tuned.config.anchors == base.config.anchors
    a, b = base.state_dict(), tuned.state_dict()
    changed = [k for k in a if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    assert changed and all(".pred" in k or "pred." in k for k in changed), changed
    assert all(b[k].shape[0] == 3 * (5 + 6) for k in changed)


def test_a_cfg_without_a_native_twin_is_a_clear_error(tmp_path):
    from edgecsp.models.from_darknet import detector_from_cfg

    text = CFG.read_text().replace("filters=32\nsize=3", "filters=24\nsize=3", 1)
    other = tmp_path / "other.cfg"
    other.write_text(text)
    with pytest.raises(EdgeCSPError, match="not one of the zoo's detector architectures"):
        detector_from_cfg(other)


def test_train_cli_fine_tunes_from_cfg_and_weights(darknet_and_weights, shapes_small, tmp_path):
    import subprocess
    import sys

    _, weights = darknet_and_weights
    out = tmp_path / "ft.safetensors"
    r = subprocess.run([sys.executable, "-m", "edgecsp.train", "--darknet-cfg", str(CFG), "--darknet-weights",
                        str(weights), "--data", str(shapes_small["train"]), "--epochs", "1", "--batch", "24",
                        "--input-size", "96", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == f"saved {out}" and "is the zoo's cspdarknet53" in r.stderr  # the result; progress
    from edgecsp.models.checkpoint import load_checkpoint

    model, desc = load_checkpoint(out)
    assert desc["num_classes"] == 6 and model.config.backbone == "cspdarknet53"
