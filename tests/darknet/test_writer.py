"""The Darknet path with real trained weights: the demo detector written as .cfg + .weights + .names
(python -m edgecsp.export --format darknet), read back through the generic cfg path, gives the
native model's outputs, AP50 and compiled AP50."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testpaths import CFG_DIR

from edgecsp.errors import EdgeCSPError
from edgecsp.models.checkpoint import ModelSource, resolve_model

VERIFY_IMAGES = 32  # of the default validation set: enough detections for AP50, small enough for CI


@pytest.fixture(scope="module")
def native():
    return resolve_model("demo")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from edgecsp.export import main

    out = tmp_path_factory.mktemp("darknet")
    assert main(["--format", "darknet", "--model", "demo", "--out", str(out)]) == 0
    return {ext: out / f"csp-tiny-efm.{ext}" for ext in ("cfg", "weights", "names")}


@pytest.fixture(scope="module")
def round_trip(files):
    return resolve_model(ModelSource(str(files["cfg"]), str(files["weights"]), str(files["names"])))


@pytest.fixture(scope="module")
def val():
    from edgecsp.data.coco import resolve_dataset
    from edgecsp.data.shapes import default_val_dir

    return resolve_dataset(default_val_dir())


def _batch(dataset, n: int, size: int = 320) -> np.ndarray:
    from edgecsp.data.preprocess import letterbox, to_tensor_batch

    return to_tensor_batch([letterbox(dataset[i][0], size)[0] for i in range(n)])


def test_written_cfg_has_darknet_layers_for_every_demo_block(files):
    from edgecsp.darknet import parse_cfg

    cfg = parse_cfg(files["cfg"])
    kinds = [s.type for s in cfg.layers]
    assert cfg.net.get_int("letter_box") == 1 and cfg.width == cfg.height == 320
    assert kinds.count("yolo") == 3 and kinds.count("sam") == 3 and kinds.count("upsample") == 2
    maxout = [s for s in cfg.layers if s.type == "maxpool"]
    assert len(maxout) == 3 and all(s.get_int("maxpool_depth") == 1 and s.get_int("out_channels") == 64 for s in maxout)
    for s in cfg.layers:  # new_coords: Darknet applies the logistic in the conv before [yolo]
        if s.type == "yolo":
            assert s.get_int("new_coords") == 1 and s.get_float("scale_x_y") == 2.0
            assert cfg.layers[s.index - 1].get_str("activation") == "logistic"
    assert files["names"].read_text().split() == ["circle", "square", "triangle", "pentagon", "star", "cross"]


def test_round_trip_gives_the_native_outputs(native, round_trip, val, files):
    (model, _), (back, description) = native, round_trip
    assert type(back).__name__ == "DarknetDetector" and description["class_names"][0] == "circle"
    batch = torch.from_numpy(_batch(val, 8))
    with torch.inference_mode():
        want, got = model.predict(batch), back.predict(batch)
    assert want.shape == got.shape and float(want[..., 4].max()) > 0.5  # real detections, not an empty map
    assert float((want[..., :4] - got[..., :4]).abs().max()) <= 1e-4  # px
    assert float((want[..., 4:] - got[..., 4:]).abs().max()) <= 1e-5

    # The check can fail: one changed weight in the .weights file changes the outputs.
    from edgecsp.models.darknet_detector import DarknetDetector, config_from_cfg_text

    broken = files["weights"].with_name("broken.weights")
    data = bytearray(files["weights"].read_bytes())
    data[-4:] = np.float32(5.0).tobytes()  # the last prediction conv's last weight
    broken.write_bytes(bytes(data))
    other = DarknetDetector(config_from_cfg_text(files["cfg"].read_text(), str(files["cfg"]))).eval()
    other.load_darknet_weights(broken)
    with torch.inference_mode():
        assert float((other.predict(batch) - want).abs().max()) > 1e-3


def test_round_trip_ap50_equals_the_native_models(native, round_trip, val):
    from edgecsp.pipeline import model_hash_of, reference_metrics

    # reference_metrics is the compile's FP32 AP (cached): the compile test below reuses both.
    ap = [reference_metrics(m, model_hash_of(m), val, 320, VERIFY_IMAGES)["AP50"] for m, _ in (native, round_trip)]
    assert ap[0] > 0.9, ap  # the demo detects the shapes: the comparison is not vacuous
    assert abs(ap[0] - ap[1]) <= 0.002, ap


def test_round_trip_compiles_to_the_native_artifacts_ap50(files, tmp_path):
    from edgecsp.pipeline import CompileOptions, compile_artifact

    recipe = tmp_path / "small.toml"
    recipe.write_text('[calibration]\nsource = "shapes"\nnum_images = 8\nmethod = "minmax"\n')
    source = ModelSource(str(files["cfg"]), str(files["weights"]), str(files["names"]))
    ap50 = {}
    for name, model in (("native", "demo"), ("darknet", source)):
        _, manifest = compile_artifact(CompileOptions(target="onnxruntime", model=model, precision="int8",
                                                      calibration=str(recipe), out=tmp_path / name,
                                                      verify_images=VERIFY_IMAGES), progress=lambda line: None)
        assert manifest["precision"] == "int8" and manifest["accuracy"]["passed"]
        ap50[name] = manifest["accuracy"]["artifact"]["AP50"]
    assert ap50["native"] > 0.9 and abs(ap50["native"] - ap50["darknet"]) <= 0.002, ap50


def test_checkpoint_trained_from_a_cfg_writes_its_own_cfg_back(files, tmp_path):
    """A cfg-built model (as edgecsp.train saves it) goes back to the same .cfg and bit-identical .weights."""
    from edgecsp.export import main
    from edgecsp.models.checkpoint import describe, save_checkpoint

    model, description = resolve_model(ModelSource(str(files["cfg"]), str(files["weights"]), str(files["names"])))
    ckpt = save_checkpoint(tmp_path / "trained.safetensors", model, describe(model, description["class_names"],
                                                                              name="shapes-from-cfg"))
    assert main(["--format", "darknet", "--model", str(ckpt), "--out", str(tmp_path / "back")]) == 0
    back = tmp_path / "back"
    assert (back / "shapes-from-cfg.cfg").read_text() == files["cfg"].read_text()
    assert (back / "shapes-from-cfg.weights").read_bytes() == files["weights"].read_bytes()
    assert (back / "shapes-from-cfg.names").read_text() == files["names"].read_text()


def test_a_block_without_darknet_form_is_refused_by_name(tmp_path):
    from edgecsp.darknet.writer import darknet_files
    from edgecsp.models.detector import Detector, DetectorConfig

    elastic = Detector(DetectorConfig("densenet201-elastic", "efm", {"width": 32}, width=0.25, depth=0.1,
                                      input_size=64, num_classes=2))
    with pytest.raises(EdgeCSPError, match=r"ElasticDenseLayer 'backbone\.stages\.0\.blocks\.0'.*bilinear"):
        darknet_files(elastic, ["a", "b"], "elastic")
    uneven = Detector(DetectorConfig("csppeleenet-fusion-last", "efm", {"width": 32}, width=0.25, depth=0.33,
                                     input_size=64, num_classes=2))
    with pytest.raises(EdgeCSPError, match=r"CSPStage 'backbone\.stages\.4'.*channel slice"):
        darknet_files(uneven, ["a", "b"], "uneven")


@pytest.mark.parametrize("name", ["cspdarknet53-panet-spp", "csppeleenet-efm"])
def test_zoo_detectors_round_trip_exactly(name):
    """PANet-SPP (SPP pools, PAN routes) and CSPPeleeNet (channel-slice split, avg pools) with random
    weights and BN statistics: the written files compute the same outputs."""
    from edgecsp.darknet.writer import darknet_files, output_difference, read_back
    from edgecsp.models.detector import build_detector

    torch.manual_seed(0)
    small = {"width": 0.25, "neck_args": {"width": 64}} if "panet" in name else {}
    model = build_detector(name, input_size=64, num_classes=2, **small).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    back = read_back(darknet_files(model, ["a", "b"], name))
    box, score = output_difference(model, back, torch.rand(2, 3, 64, 64).numpy())
    assert box <= 1e-4 and score <= 1e-5


def test_export_darknet_refuses_onnx_options_and_a_file_as_out(tmp_path, capsys):
    from edgecsp import cli
    from edgecsp.export import main

    assert cli.run(main, ["--format", "darknet", "--nms", "--out", str(tmp_path)]) == 2
    assert "--nms is an ONNX export option" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli.run(main, ["--format", "darknet", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing written


def test_files_that_do_not_read_back_the_same_are_not_written(native, tmp_path, monkeypatch):
    from edgecsp.darknet import writer

    model, description = native
    monkeypatch.setattr(writer, "output_difference", lambda a, b, batch: (0.5, 0.0))  # as a wrong layer would
    with pytest.raises(EdgeCSPError, match="differ from the model by 0.5 px.*nothing written"):
        writer.export_darknet(model, description, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_written_panet_spp_is_the_published_cfg_layer_for_layer():
    """The zoo's cspdarknet53-panet-spp written out has csdarknet53-panet-spp.cfg's layer types, in
    its order, and its convolutions (shapes, strides, groups, BN)."""
    if not (CFG_DIR / "csdarknet53-panet-spp.cfg").is_file():
        pytest.skip(f"published Darknet cfgs not found at {CFG_DIR}")
    from edgecsp.darknet import DarknetModel, parse_cfg
    from edgecsp.darknet.cfg import parse_cfg_text
    from edgecsp.darknet.writer import darknet_files
    from edgecsp.models.detector import build_detector

    def layers(model):
        convs = [(m.conv.in_channels, m.conv.out_channels, m.conv.kernel_size, m.conv.stride, m.conv.groups,
                  m.bn is None) for m in model.layers if type(m).__name__ == "ConvLayer"]
        return [info.type for info in model.layer_info], convs

    text = darknet_files(build_detector("cspdarknet53-panet-spp", num_classes=80), [str(i) for i in range(80)],
                         "x").cfg_text
    written = DarknetModel(parse_cfg_text(text), input_size=64)
    published = DarknetModel(parse_cfg(CFG_DIR / "csdarknet53-panet-spp.cfg"), input_size=64)
    assert layers(written) == layers(published)
