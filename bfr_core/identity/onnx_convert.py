"""insightface ArcFace ONNX graphs (iresnet family) → our `IResNet`, so gradients flow in PyTorch.

The graph is not interpreted: it is walked along its data flow, every layer is matched to the
iresnet pattern (stem, pre-activation units with optional 1×1 shortcut, BN/flatten/FC/BN head), and
its initializers are renamed into an arcface_torch state dict that loads strictly into `IResNet`.
Every node must be matched and every initializer consumed, otherwise the file is refused.

Handled variants:
* PyTorch exports (insightface's `torch2onnx.py`: `glintr100.onnx` of antelopev2 = iresnet100,
  `w600k_r50.onnx` of buffalo_l = iresnet50): the exporter folds every BN that follows a conv into
  the conv (weight and bias); those come back as a BN with unit scale, zero mean and the conv bias as
  shift, which computes the same function. PReLU slopes are stored [C, 1, 1]; identical tensors may
  be deduplicated behind `Identity` nodes.
* Unfused graphs (BN nodes kept, any BN epsilon) and MXNet-style input normalisation (`Sub` / `Mul`
  / `Div` / `Add` by constants before the first conv).

Input normalisation, as insightface's `ArcFaceONNX` defines it: a graph whose first nodes include
both a Sub (`Sub*` / `_minus*`) and a Mul (`Mul*` / `_mul*`) node takes raw RGB pixels in [0, 255]
(input_mean 0, std 1); every other graph takes (pixel − 127.5) / 127.5, i.e. RGB in [-1, 1]
(insightface logs `recognition ['None', 3, 112, 112] 127.5 127.5` for both glintr100.onnx and
w600k_r50.onnx: they contain no normalisation). Our model contract is RGB in [-1, 1]; for raw-pixel
graphs the converted module is wrapped in `InputAffine` (x → 127.5·x + 127.5 followed by the graph's
own constant ops).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from ..models.checkpoint import CheckpointError, load_strict
from ..archs.iresnet import BN_EPS, INPUT_SIZE, WIDTHS, IResNet, InputAffine

_PASS_THROUGH = {"Identity", "Dropout"}
_PREFIX_OPS = {"Sub", "Mul", "Div", "Add"}


def _import_onnx(path: str | os.PathLike):
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:  # optional dependency
        raise CheckpointError(
            f"cannot read {path}: ArcFace .onnx models need the optional `onnx` package (`pip install onnx` in "
            f"the Python environment that runs this pack), or use facexlib's recognition_arcface_ir_se50.pth "
            f"or an arcface_torch backbone.pth instead."
        ) from exc
    return onnx, numpy_helper


class _NotIResNet(Exception):
    """The graph does not follow the iresnet pattern (message says where)."""


@dataclass
class _Graph:
    nodes: list
    consts: dict[str, np.ndarray]
    alias: dict[str, str]
    consumers: dict[str, list] = field(default_factory=dict)
    producer: dict[str, object] = field(default_factory=dict)
    visited: set[int] = field(default_factory=set)
    used_consts: set[str] = field(default_factory=set)

    def name(self, t: str) -> str:
        while t in self.alias:
            t = self.alias[t]
        return t

    def const(self, t: str) -> np.ndarray | None:
        t = self.name(t)
        if t in self.consts:
            self.used_consts.add(t)
            return self.consts[t]
        return None

    def take(self, node) -> None:
        self.visited.add(id(node))

    def outs(self, t: str) -> list:
        return [n for n in self.consumers.get(self.name(t), []) if id(n) not in self.visited]

    def next(self, t: str, op: str, what: str):
        """The one unvisited consumer of `t` with type `op`."""
        cands = [n for n in self.outs(t) if n.op_type == op]
        if len(cands) != 1:
            found = [n.op_type for n in self.outs(t)]
            raise _NotIResNet(f"{what}: expected one {op} after tensor {t!r}, found {found}")
        return cands[0]

    def sole(self, t: str):
        """The only unvisited consumer of `t`, or None when there are several or none."""
        outs = self.outs(t)
        return outs[0] if len(outs) == 1 else None


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _build_graph(model, numpy_helper) -> _Graph:
    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    alias: dict[str, str] = {}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "Constant":
            attrs = _attrs(node)
            if "value" not in attrs:
                raise _NotIResNet(f"unsupported Constant node {node.name!r}")
            consts[node.output[0]] = numpy_helper.to_array(attrs["value"])
            continue
        if node.op_type in _PASS_THROUGH:
            if len([o for o in node.output[1:] if o]):
                raise _NotIResNet(f"{node.op_type} node {node.name!r} with a mask output")
            alias[node.output[0]] = node.input[0]
            continue
        nodes.append(node)
    g = _Graph(nodes, consts, alias)
    for node in nodes:
        for t in node.input:
            if t:
                g.consumers.setdefault(g.name(t), []).append(node)
        for t in node.output:
            g.producer[t] = node
    return g


def _conv(g: _Graph, node, cin: int, cout: int, k: int, stride: int, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    a = _attrs(node)
    w = g.const(node.input[1])
    b = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if w is None or (len(node.input) > 2 and node.input[2] and b is None):
        raise _NotIResNet(f"{what}: conv weights are not constants")
    if tuple(w.shape) != (cout, cin, k, k):
        raise _NotIResNet(f"{what}: conv weight {tuple(w.shape)}, expected {(cout, cin, k, k)}")
    pad = (k - 1) // 2
    ok = (list(a.get("strides", [1, 1])) == [stride, stride] and a.get("group", 1) == 1
          and list(a.get("dilations", [1, 1])) == [1, 1] and list(a.get("pads", [0, 0, 0, 0])) == [pad] * 4
          and a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))
    if not ok:
        raise _NotIResNet(f"{what}: conv attributes {a} differ from a {k}x{k}/stride {stride} conv")
    return w, b


def _bn_params(g: _Graph, node, c: int, what: str) -> dict[str, np.ndarray]:
    scale, bias, mean, var = (g.const(t) for t in node.input[1:5])
    if any(v is None for v in (scale, bias, mean, var)):
        raise _NotIResNet(f"{what}: BatchNormalization parameters are not constants")
    if any(v.size != c for v in (scale, bias, mean, var)):
        raise _NotIResNet(f"{what}: BatchNormalization over {scale.size} channels, expected {c}")
    eps = float(_attrs(node).get("epsilon", 1e-5))
    # Same function with our eps: (x - m) / sqrt(v + eps_graph) = (x - m) / sqrt(v' + BN_EPS).
    return {"weight": scale.reshape(c), "bias": bias.reshape(c), "running_mean": mean.reshape(c),
            "running_var": (var.astype(np.float64) + eps - BN_EPS).reshape(c)}


def _shift_bn(bias: np.ndarray | None, c: int) -> dict[str, np.ndarray]:
    """A BN equal to `+ bias` (the inverse of the exporter folding a BN into the preceding conv)."""
    b = np.zeros(c, np.float32) if bias is None else bias.reshape(c)
    return {"weight": np.ones(c, np.float32), "bias": b, "running_mean": np.zeros(c, np.float32),
            "running_var": np.full(c, 1.0 - BN_EPS, np.float64)}


def _conv_bn(g: _Graph, t: str, cin: int, cout: int, k: int, stride: int, what: str,
             conv=None) -> tuple[str, np.ndarray, dict[str, np.ndarray]]:
    """conv (k×k, stride) then an optional BN. Returns (output tensor, conv weight, BN params)."""
    node = conv if conv is not None else g.next(t, "Conv", what)
    g.take(node)
    w, b = _conv(g, node, cin, cout, k, stride, what)
    out = node.output[0]
    nxt = g.sole(out)
    if nxt is not None and nxt.op_type == "BatchNormalization":
        g.take(nxt)
        bn = _bn_params(g, nxt, cout, what)
        if b is not None:  # conv bias followed by BN: fold the bias into the BN mean
            bn["running_mean"] = bn["running_mean"] - b.reshape(cout)
        return nxt.output[0], w, bn
    return out, w, _shift_bn(b, cout)


def _prelu(g: _Graph, t: str, c: int, what: str) -> tuple[str, np.ndarray]:
    node = g.next(t, "PRelu", what)
    g.take(node)
    slope = g.const(node.input[1])
    if slope is None or slope.size not in (1, c):
        raise _NotIResNet(f"{what}: PRelu slope {None if slope is None else slope.shape}, expected {c} values")
    return node.output[0], np.broadcast_to(slope.reshape(-1), (c,)).copy()


_SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast"}


def _flatten(g: _Graph, t: str):
    """The head's flatten: Flatten(axis=1), Reshape to a constant [N, -1] / [N, 25088], or Reshape by a
    shape computed from `t` (Shape → Gather → Unsqueeze → Concat, as older exporters wrote flatten)."""
    outs = g.outs(t)
    main = [n for n in outs if n.op_type != "Shape"]
    if len(main) != 1 or main[0].op_type not in ("Flatten", "Reshape"):
        raise _NotIResNet(f"head: expected Flatten after the last BN, found {[n.op_type for n in outs]}")
    flat = main[0]
    if flat.op_type == "Flatten":
        if _attrs(flat).get("axis", 1) != 1 or len(outs) != 1:
            raise _NotIResNet("head: Flatten with axis != 1")
    else:
        shape = g.const(flat.input[1])
        if shape is not None:
            if shape.size != 2 or int(shape[1]) not in (-1, WIDTHS[-1] * 49) or len(outs) != 1:
                raise _NotIResNet(f"head: Reshape to {shape}, expected [N, 25088]")
        else:  # every node computing the shape must be shape arithmetic on `t` or constants
            todo, seen = [flat.input[1]], []
            while todo:
                name = g.name(todo.pop())
                if name == g.name(t) or g.const(name) is not None:
                    continue
                node = g.producer.get(name)
                if node is None or node.op_type not in _SHAPE_OPS:
                    raise _NotIResNet(f"head: Reshape by a shape computed with {getattr(node, 'op_type', name)}")
                if node.op_type != "Shape":
                    todo += [i for i in node.input if i]
                elif g.name(node.input[0]) != g.name(t):
                    raise _NotIResNet("head: Reshape by the shape of another tensor")
                seen.append(node)
            for node in seen:
                g.take(node)
    if any(id(n) not in g.visited for n in outs if n.op_type == "Shape"):
        raise _NotIResNet("head: a Shape of the last BN output that is not used by the flatten")
    g.take(flat)
    return flat


def _put(sd: dict, prefix: str, params: dict[str, np.ndarray]) -> None:
    for k, v in params.items():
        sd[f"{prefix}.{k}"] = v


def _input_prefix(g: _Graph, t: str, first_nodes: list) -> tuple[str, np.ndarray, np.ndarray]:
    """Constant affine ops before the stem conv → (tensor after them, scale[3], shift[3]) on [-1, 1] input."""
    names = [n.name for n in first_nodes]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    # insightface's rule for what the graph is fed: raw pixels [0, 255] or (pixel - 127.5) / 127.5.
    scale = np.full(3, 127.5 if (has_sub and has_mul) else 1.0)
    shift = np.full(3, 127.5 if (has_sub and has_mul) else 0.0)
    while True:
        node = g.sole(t)
        if node is None or node.op_type not in _PREFIX_OPS:
            return t, scale, shift
        first = g.name(node.input[0]) == g.name(t)
        if not first and node.op_type in ("Sub", "Div"):
            raise _NotIResNet(f"input normalisation node {node.name!r} takes the image as its second operand")
        c = g.const(node.input[1] if first else node.input[0])
        if c is None or c.size not in (1, 3):
            raise _NotIResNet(f"input normalisation node {node.name!r} has no per-channel constant")
        c = np.broadcast_to(c.astype(np.float64).reshape(-1), (3,))
        if node.op_type == "Sub":
            shift = shift - c
        elif node.op_type == "Add":
            shift = shift + c
        elif node.op_type == "Mul":
            scale, shift = scale * c, shift * c
        else:
            scale, shift = scale / c, shift / c
        g.take(node)
        t = node.output[0]


def _graph_input(model) -> tuple[str, list]:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise _NotIResNet(f"{len(inputs)} inputs and {len(model.graph.output)} outputs (an ArcFace model has 1 and 1)")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] not in (3, None) or any(d not in (INPUT_SIZE, None) for d in dims[2:]):
        raise _NotIResNet(f"input shape {dims}; an ArcFace recognizer takes [N, 3, 112, 112]")
    return inputs[0].name, dims


def _walk(model, numpy_helper) -> tuple[dict[str, np.ndarray], tuple[int, ...], np.ndarray, np.ndarray]:
    x, _ = _graph_input(model)
    g = _build_graph(model, numpy_helper)
    t, in_scale, in_shift = _input_prefix(g, x, list(model.graph.node[:8]))
    sd: dict[str, np.ndarray] = {}

    # Stem: conv3x3 (3 → 64, stride 1) [BN] PReLU.
    t, sd["conv1.weight"], bn = _conv_bn(g, t, 3, WIDTHS[0], 3, 1, "stem")
    _put(sd, "bn1", bn)
    t, sd["prelu.weight"] = _prelu(g, t, WIDTHS[0], "stem")

    # Residual units until the head's BN is followed by something other than a conv.
    stages: list[int] = []
    cin = WIDTHS[0]
    while True:
        bn_node = g.next(t, "BatchNormalization", f"unit {sum(stages) + 1}")
        after = g.sole(bn_node.output[0])
        if after is None or after.op_type != "Conv":
            break
        downsample = next((n for n in g.outs(t) if n.op_type == "Conv"), None)
        if downsample is not None:  # the first unit of a stage
            if len(stages) == len(WIDTHS):
                raise _NotIResNet("more than four stages")
            stages.append(0)
        if not stages:
            raise _NotIResNet("the first residual unit has no downsampling shortcut")
        cout, stride = WIDTHS[len(stages) - 1], (2 if downsample is not None else 1)
        p = f"layer{len(stages)}.{stages[-1]}"
        what = f"unit {p}"
        g.take(bn_node)
        _put(sd, f"{p}.bn1", _bn_params(g, bn_node, cin, what))
        m, sd[f"{p}.conv1.weight"], bn = _conv_bn(g, bn_node.output[0], cin, cout, 3, 1, what, conv=after)
        _put(sd, f"{p}.bn2", bn)
        m, sd[f"{p}.prelu.weight"] = _prelu(g, m, cout, what)
        m, sd[f"{p}.conv2.weight"], bn = _conv_bn(g, m, cout, cout, 3, stride, what)
        _put(sd, f"{p}.bn3", bn)
        if downsample is not None:
            s, sd[f"{p}.downsample.0.weight"], bn = _conv_bn(g, t, cin, cout, 1, stride, what + " shortcut",
                                                            conv=downsample)
            _put(sd, f"{p}.downsample.1", bn)
        else:
            s = t
        add = g.next(m, "Add", what)
        if sorted(g.name(i) for i in add.input) != sorted([g.name(m), g.name(s)]):
            raise _NotIResNet(f"{what}: the residual Add does not join the unit with its shortcut")
        g.take(add)
        t, cin = add.output[0], cout
        stages[-1] += 1
    if len(stages) != len(WIDTHS):
        raise _NotIResNet(f"{len(stages)} stages; iresnet has 4")

    # Head: BN2d → flatten → FC → BN1d.
    g.take(bn_node)
    _put(sd, "bn2", _bn_params(g, bn_node, WIDTHS[-1], "head"))
    t = bn_node.output[0]
    flat = _flatten(g, t)
    t = flat.output[0]
    fc = g.sole(t)
    n_in = WIDTHS[-1] * (INPUT_SIZE // 16) ** 2
    if fc is not None and fc.op_type == "Gemm":
        a = _attrs(fc)
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise _NotIResNet(f"head: Gemm attributes {a}")
        w = g.const(fc.input[1])
        b = g.const(fc.input[2]) if len(fc.input) > 2 and fc.input[2] else None
        if w is None:
            raise _NotIResNet("head: Gemm weight is not a constant")
        w = w if a.get("transB", 0) else w.T
        g.take(fc)
        t = fc.output[0]
    elif fc is not None and fc.op_type == "MatMul":
        w = g.const(fc.input[1])
        if w is None:
            raise _NotIResNet("head: MatMul weight is not a constant")
        w, b = w.T, None
        g.take(fc)
        t = fc.output[0]
        add = g.sole(t)
        if add is not None and add.op_type == "Add":
            b = g.const(add.input[1] if g.name(add.input[0]) == g.name(t) else add.input[0])
            g.take(add)
            t = add.output[0]
    else:
        raise _NotIResNet("head: expected Gemm or MatMul after the flatten")
    if w.ndim != 2 or w.shape[1] != n_in:
        raise _NotIResNet(f"head: FC weight {tuple(w.shape)}, expected [features, {n_in}]")
    nf = w.shape[0]
    sd["fc.weight"] = np.ascontiguousarray(w)
    sd["fc.bias"] = np.zeros(nf, np.float32) if b is None else b.reshape(nf)
    feat = g.sole(t)
    if feat is not None and feat.op_type == "BatchNormalization":
        g.take(feat)
        _put(sd, "features", _bn_params(g, feat, nf, "head"))
        t = feat.output[0]
    else:
        _put(sd, "features", _shift_bn(None, nf))

    # Everything must have been used, and the walk must end at the graph's output.
    if g.name(t) != g.name(model.graph.output[0].name):
        raise _NotIResNet("the head does not end at the graph output")
    left = [n for n in g.nodes if id(n) not in g.visited]
    if left:
        raise _NotIResNet(f"{len(left)} nodes outside the iresnet pattern (e.g. {left[0].op_type} {left[0].name!r})")
    unused = [i.name for i in model.graph.initializer if i.name not in g.used_consts]
    if unused:
        raise _NotIResNet(f"{len(unused)} initializers not consumed (e.g. {unused[0]!r})")
    return sd, tuple(stages), in_scale, in_shift


def iresnet_from_onnx(path: str | os.PathLike) -> tuple[torch.nn.Module, str, str]:
    """Read an insightface ArcFace .onnx (iresnet family) into a float32 `IResNet` (eval mode).

    Returns (module, arch, detail). The module takes [B, 3, 112, 112] RGB in [-1, 1] and returns the
    raw embedding; a graph that expects raw pixels comes wrapped in `InputAffine` (said in detail).
    """
    onnx, numpy_helper = _import_onnx(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise CheckpointError(f"cannot read ONNX file {path} ({type(exc).__name__}: {exc}); "
                              f"the file may be truncated, download it again") from exc
    try:
        sd, stages, in_scale, in_shift = _walk(model, numpy_helper)
    except _NotIResNet as exc:
        raise CheckpointError(
            f"{path} is not an ArcFace iresnet recognition model: {exc}. Supported ONNX recognizers are "
            f"insightface's iresnet exports such as antelopev2/glintr100.onnx and buffalo_l/w600k_r50.onnx "
            f"(detectors, landmark and gender/age models from the same folders are not recognizers)."
        ) from None
    net = IResNet(stages, num_features=sd["fc.weight"].shape[0])
    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in sd.items()}
    for name, buf in net.state_dict().items():  # BN counters are not in the graph
        if name.endswith("num_batches_tracked"):
            tensors[name] = torch.zeros_like(buf)
    load_strict(net, tensors, path, f"{net.arch} (converted from ONNX)")
    net.eval()
    module: torch.nn.Module = net
    detail = "input RGB in [-1, 1], no normalisation in the graph"
    if not (np.allclose(in_scale, 1.0) and np.allclose(in_shift, 0.0)):
        module = InputAffine(net, torch.from_numpy(in_scale), torch.from_numpy(in_shift)).eval()
        detail = (f"the graph normalises its own input: the network sees x*{in_scale.tolist()} + "
                  f"{in_shift.tolist()} for x in [-1, 1]")
    return module, net.arch, detail
