"""Graph facts about an exported detector that quantizers need.

The detection head (the last convolution on every path to the output) and the box decoding
after it stay in float by default: INT8 there crushes confidence scores (the pitfalls list).
"""

from __future__ import annotations

from pathlib import Path

import onnx


def head_nodes(model: onnx.ModelProto | str | Path) -> list[str]:
    """Names of the prediction convolutions and of every node after them (decode, NMS).

    Walks back from the graph outputs: everything reached before (and including) the first Conv
    on each path is head/decode. Nodes are named by the export; unnamed ones are skipped.
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    producer = {out: node for node in model.graph.node for out in node.output}
    head: dict[str, onnx.NodeProto] = {}
    stack = [o.name for o in model.graph.output]
    seen: set[str] = set()
    while stack:
        tensor = stack.pop()
        node = producer.get(tensor)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        head[node.name] = node
        if node.op_type == "Conv":
            continue  # a prediction conv: stop here, the backbone/neck is before it
        stack.extend(node.input)
    return [name for name in head if name]
