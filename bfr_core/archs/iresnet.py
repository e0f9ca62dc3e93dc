"""ArcFace recognition networks, with parameter names matching the published checkpoints.

* `IResNet`: insightface `arcface_torch` (`backbone.pth` of iresnet18/34/50/100/200). Pre-activation
  "improved" residual units BN → conv3x3 → BN → PReLU → conv3x3(stride) → BN, plus a 1×1 conv + BN
  shortcut on the first unit of every stage (always stride 2). Stem conv3x3 + BN + PReLU at full
  resolution; head BN2d → flatten (512·7·7) → Linear → BatchNorm1d. The same network is what
  insightface's `glintr100.onnx` (iresnet100) and `w600k_r50.onnx` (iresnet50) contain.
* `IRSEBackbone`: the TreB1eN / facexlib `Backbone(num_layers, drop_ratio, mode)` layout of
  `recognition_arcface_ir_se50.pth` (IR-SE50): `input_layer`, `body.N.res_layer` /
  `body.N.shortcut_layer`, `output_layer`, with squeeze-excitation in every unit for `ir_se`.

Both take [B, 3, 112, 112] RGB in [-1, 1] and return the raw (not normalised) embedding [B, 512].
Written from the published architectures; no code is copied from either project.
"""
from __future__ import annotations

import os
from typing import Mapping

import torch
from torch import Tensor, nn

# Units per stage of the published arcface_torch variants.
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}
# Units per stage of the TreB1eN / facexlib IR and IR-SE backbones.
IRSE_LAYERS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
}
WIDTHS = (64, 128, 256, 512)
INPUT_SIZE = 112
BN_EPS = 1e-5


def iresnet_name(layers: tuple[int, ...]) -> str:
    """'iresnet50' for (3, 4, 14, 3); a descriptive name for other unit counts."""
    for name, known in IRESNET_LAYERS.items():
        if tuple(layers) == known:
            return name
    return "iresnet(" + ",".join(str(n) for n in layers) + ")"


class IBasicBlock(nn.Module):
    """arcface_torch residual unit (bn1, conv1, bn2, prelu, conv2, bn3, downsample.{0,1})."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, eps=BN_EPS))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """insightface arcface_torch IResNet; `layers` = units per stage, e.g. (3, 4, 14, 3) for iresnet50."""

    def __init__(self, layers: tuple[int, int, int, int] = IRESNET_LAYERS["iresnet50"], num_features: int = 512):
        super().__init__()
        self.layers_spec = tuple(int(n) for n in layers)
        self.num_features = num_features
        self.conv1 = nn.Conv2d(3, WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0], eps=BN_EPS)
        self.prelu = nn.PReLU(WIDTHS[0])
        cin = WIDTHS[0]
        for i, (width, units) in enumerate(zip(WIDTHS, self.layers_spec)):
            blocks = [IBasicBlock(cin, width, 2)] + [IBasicBlock(width, width, 1) for _ in range(units - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width
        self.bn2 = nn.BatchNorm2d(WIDTHS[-1], eps=BN_EPS)
        side = INPUT_SIZE // 16
        self.fc = nn.Linear(WIDTHS[-1] * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)

    @property
    def arch(self) -> str:
        return iresnet_name(self.layers_spec)

    def forward(self, x: Tensor) -> Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        return self.features(self.fc(x))


class _Subsample(nn.Module):
    """`MaxPool2d(1, stride)` of the IR units' identity shortcut: keeps every `stride`-th pixel."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x


class _SqueezeExcite(nn.Module):
    """Channel attention with bias-free 1×1 convs `fc1`, `fc2` (reduction 16)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        w = torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))
        return x * torch.sigmoid(self.fc2(w))


class IRUnit(nn.Module):
    """TreB1eN IR / IR-SE unit: res_layer.{0 BN, 1 conv, 2 PReLU, 3 conv(stride), 4 BN, [5 SE]}."""

    def __init__(self, cin: int, depth: int, stride: int, se: bool):
        super().__init__()
        if cin == depth:
            self.shortcut_layer = _Subsample(stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth, eps=BN_EPS))
        res = [nn.BatchNorm2d(cin, eps=BN_EPS), nn.Conv2d(cin, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
               nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth, eps=BN_EPS)]
        if se:
            res.append(_SqueezeExcite(depth))
        self.res_layer = nn.Sequential(*res)

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSEBackbone(nn.Module):
    """facexlib `recognition_arcface_ir_se50.pth` network (TreB1eN `Backbone`), returning the raw embedding.

    facexlib's own forward ends with an L2 normalisation; this one stops before it (our `.model`
    contract), so `F.normalize(IRSEBackbone(...)(x))` equals facexlib's output.
    """

    def __init__(self, layers: tuple[int, int, int, int] = IRSE_LAYERS[50], se: bool = True, num_features: int = 512):
        super().__init__()
        self.layers_spec = tuple(int(n) for n in layers)
        self.se = se
        self.input_layer = nn.Sequential(nn.Conv2d(3, WIDTHS[0], 3, 1, 1, bias=False),
                                         nn.BatchNorm2d(WIDTHS[0], eps=BN_EPS), nn.PReLU(WIDTHS[0]))
        units, cin = [], WIDTHS[0]
        for width, n in zip(WIDTHS, self.layers_spec):
            units.append(IRUnit(cin, width, 2, se))
            units += [IRUnit(width, width, 1, se) for _ in range(n - 1)]
            cin = width
        self.body = nn.Sequential(*units)
        side = INPUT_SIZE // 16
        # Indices 1 and 2 (dropout, flatten) hold no parameters; kept so the keys match the file.
        self.output_layer = nn.Sequential(nn.BatchNorm2d(WIDTHS[-1], eps=BN_EPS), nn.Identity(), nn.Flatten(1),
                                          nn.Linear(WIDTHS[-1] * side * side, num_features),
                                          nn.BatchNorm1d(num_features, eps=BN_EPS))

    @property
    def arch(self) -> str:
        depth = {v: k for k, v in IRSE_LAYERS.items()}.get(self.layers_spec)
        kind = "ir_se" if self.se else "ir"
        return f"{kind}{depth}" if depth else f"{kind}(" + ",".join(map(str, self.layers_spec)) + ")"

    def forward(self, x: Tensor) -> Tensor:
        return self.output_layer(self.body(self.input_layer(x)))


class InputAffine(nn.Module):
    """x → x·scale + shift per channel, in front of a network whose graph normalises its own input."""

    def __init__(self, net: nn.Module, scale: Tensor, shift: Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1).float())
        self.register_buffer("shift", shift.reshape(1, -1, 1, 1).float())

    @property
    def arch(self) -> str:
        return getattr(self.net, "arch", type(self.net).__name__)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x * self.scale + self.shift)


# ------------------------------------------------------------------------------------------ detection and loading
# Key-based detectors for the registry (`bfr_core.archs.registry`), on prefix-free state dicts.

_IRESNET_MARKERS = frozenset({"conv1.weight", "fc.weight", "features.weight", "layer1.0.bn1.weight"})
_IRSE_MARKERS = frozenset({"input_layer.0.weight", "output_layer.3.weight"})


def stage_counts(sd: Mapping[str, Tensor], prefix: str) -> int:
    """Number of units ``prefix.N.`` (0..N-1 all present), -1 if the numbering has holes."""
    idx = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    if idx and idx != set(range(max(idx) + 1)):
        return -1
    return len(idx)


def is_iresnet_state_dict(sd: Mapping[str, Tensor]) -> bool:
    """insightface arcface_torch `backbone.pth` (iresnet18..200)."""
    return _IRESNET_MARKERS <= set(sd)


def is_irse_state_dict(sd: Mapping[str, Tensor]) -> bool:
    """TreB1eN / facexlib IR and IR-SE backbones (`recognition_arcface_ir_se50.pth`)."""
    return _IRSE_MARKERS <= set(sd) and any(k.startswith("body.") for k in sd)


def is_resnet_arcface_state_dict(sd: Mapping[str, Tensor]) -> bool:
    """GFPGAN/basicsr's `ResNetArcFace` (`arcface_resnet18.pth`, 128×128 grayscale input): recognised to be refused."""
    return "fc5.weight" in sd and "conv1.weight" in sd and sd["conv1.weight"].ndim == 4 and sd["conv1.weight"].shape[1] == 1


def load_iresnet(sd: Mapping[str, Tensor], path: str | os.PathLike = "<state dict>") -> IResNet:
    """The arcface_torch IResNet in ``sd`` (units per stage read from the keys), strictly loaded."""
    from ..models.checkpoint import CheckpointError, load_strict

    layers = tuple(stage_counts(sd, f"layer{i}.") for i in range(1, 5))
    if min(layers) < 1:
        raise CheckpointError(f"{path}: unexpected arcface_torch layer numbering (units per stage {layers})")
    net = IResNet(layers, num_features=sd["fc.weight"].shape[0])
    load_strict(net, sd, path, f"arcface_torch {iresnet_name(layers)}")
    return net


def load_irse(sd: Mapping[str, Tensor], path: str | os.PathLike = "<state dict>") -> IRSEBackbone:
    """The facexlib IR / IR-SE backbone in ``sd`` (units per stage from the unit widths), strictly loaded."""
    from ..models.checkpoint import CheckpointError, load_strict

    n_units = stage_counts(sd, "body.")
    if n_units < 1:
        raise CheckpointError(f"{path}: unexpected IR-SE layer numbering")
    depths = []
    for i in range(n_units):
        w = sd.get(f"body.{i}.res_layer.1.weight")
        if w is None:
            raise CheckpointError(f"{path}: IR-SE unit {i} has no res_layer.1.weight")
        depths.append(int(w.shape[0]))
    layers = tuple(depths.count(w) for w in WIDTHS)
    if sum(layers) != n_units or min(layers) < 1:
        raise CheckpointError(f"{path}: IR-SE unit widths {sorted(set(depths))} differ from {WIDTHS}")
    se = "body.0.res_layer.5.fc1.weight" in sd
    net = IRSEBackbone(layers, se=se, num_features=sd["output_layer.3.weight"].shape[0])
    load_strict(net, sd, path, f"facexlib {net.arch}")
    return net


def refuse_resnet_arcface(sd: Mapping[str, Tensor], path: str | os.PathLike = "<state dict>") -> nn.Module:
    from ..models.checkpoint import CheckpointError

    raise CheckpointError(
        f"{path} is GFPGAN/basicsr's ResNetArcFace (arcface_resnet18.pth: 128×128 grayscale input), "
        f"a training-loss network that is not supported here.")
