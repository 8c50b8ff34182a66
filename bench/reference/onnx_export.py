"""A demo bundle's encoder (its backbone, the layer the bench reads) as an
ONNX model, for the onnxruntime-web side of `cargo xtask bench wasm`: the
same layers in the same order with the bundle's own weights, so the bench
can check that both runtimes compute the same embedding.

    python3 onnx_export.py BUNDLE_DIR OUT.onnx

Needs numpy and onnx (pip). Tiny CNN, ResNet-18 and ViT (patch embedding
without a conv stem) backbones, as `engine/src/model/` builds them.
"""

import json
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def read_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = {"F32": np.float32, "F16": np.float16}[info["dtype"]]
        a, b = info["data_offsets"]
        raw = np.frombuffer(data[8 + n + a : 8 + n + b], dtype=dtype)
        out[name] = raw.reshape(info["shape"]).astype(np.float32)
    return out


class Graph:
    def __init__(self, weights):
        self.w = weights
        self.nodes = []
        self.inits = []
        self.count = 0

    def fresh(self, prefix):
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, array, prefix="c"):
        name = self.fresh(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, key):
        return self.const(self.w[key], key.replace(".", "_"))

    def op(self, kind, inputs, **attrs):
        out = self.fresh(kind)
        self.nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def conv_bn(self, x, prefix, stride):
        w = self.w[prefix + ".conv.weight"]
        k = w.shape[2]
        y = self.op(
            "Conv",
            [x, self.weight(prefix + ".conv.weight")],
            strides=[stride, stride],
            pads=[k // 2] * 4,
            kernel_shape=[k, k],
        )
        bn = [self.weight(f"{prefix}.bn.{p}") for p in ("weight", "bias", "running_mean", "running_var")]
        return self.op("BatchNormalization", [y] + bn, epsilon=1e-5)

    def relu(self, x):
        return self.op("Relu", [x])

    def linear(self, x, prefix):
        y = self.op("MatMul", [x, self.const(self.w[prefix + ".weight"].T.copy(), prefix.replace(".", "_"))])
        return self.op("Add", [y, self.weight(prefix + ".bias")])

    def layer_norm(self, x, prefix):
        return self.op(
            "LayerNormalization",
            [x, self.weight(prefix + ".weight"), self.weight(prefix + ".bias")],
            axis=-1,
            epsilon=1e-6,
        )

    def shape(self, dims):
        return self.const(np.array(dims, dtype=np.int64), "shape")

    def pool(self, x):
        return self.op("Flatten", [self.op("GlobalAveragePool", [x])], axis=1)


def tiny_cnn(g, x):
    for i, stride in enumerate([1, 2, 2]):
        x = g.relu(g.conv_bn(x, f"backbone.block{i}", stride))
    return g.pool(x)


def resnet18(g, x, backbone):
    if backbone.get("stem") == "imagenet":
        raise SystemExit("the ImageNet stem is not exported")
    x = g.relu(g.conv_bn(x, "backbone.stem", 1))
    for s in range(4):
        for b in range(2):
            p = f"backbone.layer{s + 1}.{b}"
            stride = 2 if s > 0 and b == 0 else 1
            h = g.relu(g.conv_bn(x, p + ".conv1", stride))
            skip = g.conv_bn(x, p + ".shortcut", stride) if p + ".shortcut.conv.weight" in g.w else x
            x = g.relu(g.op("Add", [g.conv_bn(h, p + ".conv2", 1), skip]))
    return g.pool(x)


def vit(g, x, backbone, size):
    if backbone.get("conv_stem"):
        raise SystemExit("the ViT conv stem is not exported")
    p, d, heads = backbone["patch_size"], backbone["width"], backbone["heads"]
    grid, hd = size // p, backbone["width"] // backbone["heads"]
    n = grid * grid + 1
    t = g.op("Reshape", [x, g.shape([1, 3, grid, p, grid, p])])
    t = g.op("Transpose", [t], perm=[0, 2, 4, 3, 5, 1])
    t = g.op("Reshape", [t, g.shape([1, grid * grid, p * p * 3])])
    t = g.linear(t, "backbone.patch_embed")
    pos = g.w["backbone.pos_embed"]
    t = g.op("Add", [t, g.const(pos[:, 1:, :].copy(), "pos")])
    cls = g.const(g.w["backbone.cls_token"] + pos[:, :1, :], "cls")
    h = g.op("Concat", [cls, t], axis=1)
    scale = g.const(np.array(1.0 / np.sqrt(hd), dtype=np.float32), "scale")
    half, one = (g.const(np.array(v, dtype=np.float32), "k") for v in (0.5, 1.0))
    root2 = g.const(np.array(np.sqrt(2.0), dtype=np.float32), "root2")
    for i in range(backbone["depth"]):
        b = f"backbone.blocks.{i}"
        qkv = g.linear(g.layer_norm(h, b + ".norm1"), b + ".attn.qkv")
        qkv = g.op("Reshape", [qkv, g.shape([1, n, 3, heads, hd])])
        qkv = g.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])
        q, k, v = (g.op("Gather", [qkv, g.const(np.array(j, dtype=np.int64), "j")], axis=0) for j in range(3))
        scores = g.op("MatMul", [g.op("Mul", [q, scale]), g.op("Transpose", [k], perm=[0, 1, 3, 2])])
        a = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        a = g.op("Reshape", [g.op("Transpose", [a], perm=[0, 2, 1, 3]), g.shape([1, n, d])])
        h = g.op("Add", [h, g.linear(a, b + ".attn.proj")])
        m = g.linear(g.layer_norm(h, b + ".norm2"), b + ".mlp.fc1")
        # GELU with erf, as the engine's.
        gelu = g.op("Mul", [g.op("Mul", [m, half]), g.op("Add", [one, g.op("Erf", [g.op("Div", [m, root2])])])])
        h = g.op("Add", [h, g.linear(gelu, b + ".mlp.fc2")])
    h = g.layer_norm(h, "backbone.norm")
    out = g.op("Gather", [h, g.const(np.array(0, dtype=np.int64), "j")], axis=1)
    if "backbone.head.weight" in g.w:
        out = g.linear(out, "backbone.head")
    return out


def main():
    bundle, out_path = sys.argv[1], sys.argv[2]
    manifest = json.load(open(f"{bundle}/manifest.json"))
    model = manifest["models"][0]
    spec = model["spec"]
    backbone, size = spec["backbone"], manifest["input_size"]
    g = Graph(read_safetensors(f"{bundle}/{model['weights']}"))
    kind = backbone["kind"]
    if kind == "tiny_cnn":
        y = tiny_cnn(g, "x")
    elif kind == "resnet18":
        y = resnet18(g, "x", backbone)
    elif kind == "vit":
        y = vit(g, "x", backbone, size)
    else:
        raise SystemExit(f"no ONNX export for `{kind}`")
    g.nodes.append(helper.make_node("Identity", [y], ["y"]))
    graph = helper.make_graph(
        g.nodes,
        f"sslab-{kind}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, model["dim"]])],
        g.inits,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, out_path)
    print(f"wrote {out_path}: {kind}, {len(g.nodes)} nodes")


if __name__ == "__main__":
    main()
