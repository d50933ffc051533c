"""The Darknet cfg reader: file and line kept, defaults, and every bad cfg refused by name."""

from __future__ import annotations

import pytest
import torch
from darknet_files import assert_one_line, randomize, write_cfg

from edgecsp.darknet import (
    DarknetModel,
    parse_cfg,
    read_weights,
)
from edgecsp.errors import EdgeCSPError


def test_parser_keeps_file_and_line(tmp_path):
    path = write_cfg(tmp_path, "# a comment\n; another\n[Convolutional]\n FILTERS = 4 \nsize=3 # inline\n")
    cfg = parse_cfg(path)
    conv = cfg.layers[0]
    assert conv.type == "convolutional" and conv.index == 0
    assert conv.line == 8 and conv.options["filters"].line == 9
    assert conv.get_int("filters") == 4 and conv.get_int("size") == 3
    assert conv.where("size") == "t.cfg:10"


def test_unknown_section(tmp_path):
    path = write_cfg(tmp_path, "[convolutional]\nfilters=2\n\n[frobnicate]\nx=1\n")
    with pytest.raises(EdgeCSPError) as err:
        parse_cfg(path)
    assert_one_line(err, "t.cfg:9:", "[frobnicate]")


def test_unsupported_darknet_section(tmp_path):
    with pytest.raises(EdgeCSPError) as err:
        parse_cfg(write_cfg(tmp_path, "[lstm]\noutput=2\n"))
    assert_one_line(err, "t.cfg:6:", "[lstm]", "not supported")


def test_unknown_option(tmp_path):
    with pytest.raises(EdgeCSPError) as err:
        parse_cfg(write_cfg(tmp_path, "[convolutional]\nfilters=2\nfilterz=3\n"))
    assert_one_line(err, "t.cfg:8:", "filterz", "[convolutional]")


def test_duplicate_option(tmp_path):
    with pytest.raises(EdgeCSPError) as err:
        parse_cfg(write_cfg(tmp_path, "[convolutional]\nfilters=2\nFilters=3\n"))
    assert_one_line(err, "t.cfg:8:", "filters", "line 7")


def test_duplicate_net_option_takes_the_first_as_darknet(tmp_path):
    # Darknet's option_find returns the first match; cfgs rely on it ("# Testing" batch=1 before
    # "# Training" batch=64, e.g. yolov3-openimages.cfg).
    path = tmp_path / "n.cfg"
    path.write_text("[net]\nbatch=1\nheight=16\nwidth=16\nchannels=3\nbatch=64\nheight=32\n\n"
                    "[convolutional]\nfilters=2\nsize=1\n")
    cfg = parse_cfg(path)
    assert cfg.net.get_int("batch") == 1 and cfg.height == 16 and cfg.net.options["batch"].line == 2


def test_blank_between_numbers_is_refused(tmp_path):
    body = "[convolutional]\nfilters=18\nsize=1\n\n[yolo]\nmask=0,1,2\nanchors=1,2, 3,4    5,6\nnum=3\nclasses=1\n"
    with pytest.raises(EdgeCSPError) as err:
        parse_cfg(write_cfg(tmp_path, body))
    assert_one_line(err, "t.cfg:12:", "anchors=", "'4    5'", "comma is missing", "45")


@pytest.mark.parametrize("layers,words", [("-99", "points before the first layer"), ("1", "not an earlier one"),
                                          ("-1,5", "not an earlier one")])
def test_dangling_route(tmp_path, layers, words):
    body = "[convolutional]\nfilters=2\nsize=1\n\n[route]\nlayers = " + layers + "\n"
    with pytest.raises(EdgeCSPError) as err:
        DarknetModel(write_cfg(tmp_path, body))
    assert_one_line(err, "t.cfg:11:", "[route]", f"layers={layers}", words, "layer 1")


@pytest.mark.parametrize(
    "body,words",
    [
        ("[shortcut]\nfrom=-1\nweights_type=per_channel\n", ["t.cfg:8:", "weights_type=per_channel", "not supported"]),
        ("[maxpool]\nsize=2\nstride=2\nantialiasing=1\n", ["t.cfg:9:", "antialiasing", "not supported"]),
        ("[maxpool]\nmaxpool_depth=1\nout_channels=2\n", ["t.cfg:8:", "out_channels=2", "divide the 3"]),
        ("[convolutional]\nfilters=2\nactivation=sparkle\n", ["t.cfg:8:", "unknown activation=sparkle"]),
        ("[convolutional]\nfilters=two\n", ["t.cfg:7:", "filters=two", "not an integer"]),
        ("[convolutional]\nfilters=254\nsize=1\n[yolo]\nmask=0,1,2\nnum=3\nanchors=1,2,3,4,5,6\nclasses=80\n",
         ["t.cfg:9:", "[yolo]", "filters=255"]),
        ("[convolutional]\nfilters=4\nsize=1\n[route]\nlayers=-1\n[route]\nlayers=-2,-1\ngroups=3\n",
         ["t.cfg:13:", "groups=3"]),
    ],
)
def test_bad_layers_name_the_line(tmp_path, body, words):
    with pytest.raises(EdgeCSPError) as err:
        DarknetModel(write_cfg(tmp_path, body))
    assert_one_line(err, *words)


def test_missing_files(tmp_path):
    with pytest.raises(EdgeCSPError) as err:
        parse_cfg(tmp_path / "nope.cfg")
    assert_one_line(err, "nope.cfg", "not found")
    with pytest.raises(EdgeCSPError) as err:
        read_weights(tmp_path / "nope.weights")
    assert_one_line(err, "nope.weights", "not found")


def test_darknet_defaults(tmp_path):
    """Missing activation= means logistic for conv/connected, linear for shortcut (Darknet's parser)."""
    path = tmp_path / "d.cfg"
    path.write_text(
        "[network]\nheight=4\nwidth=4\nchannels=2\n[conv]\nfilters=2\nsize=1\n"
        "[shortcut]\nfrom=-1\n[conn]\noutput=3\n"
    )
    model = randomize(DarknetModel(path))
    outs = {}
    for i, layer in enumerate(model.layers):
        layer.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o))
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        y = model(x)
        conv = model.layers[0].conv
        assert torch.allclose(outs[0], torch.sigmoid(conv(x)))
        assert torch.allclose(outs[1], 2 * outs[0])
        lin = model.layers[2].linear
        assert torch.allclose(y.flatten(1), torch.sigmoid(outs[1].flatten(1) @ lin.weight.T + lin.bias))
