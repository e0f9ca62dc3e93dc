"""ArcFace recognizers: every published layout loads and computes what the original computes.

Checkpoints are written by the tests in the published layouts with random weights:
arcface_torch `backbone.pth` (plain state dict), facexlib `recognition_arcface_ir_se50.pth`
(facexlib's own class), insightface ONNX (torch.onnx export the way insightface's torch2onnx.py
does it, and a hand-built MXNet-style graph with its own input normalisation and unfused BNs).
References are independent: a functional iresnet written here, facexlib's module, onnxruntime.
"""
from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bfr_core.models.checkpoint import CheckpointError
from bfr_core.identity import (ARCFACE_TEMPLATE_112, IRESNET_LAYERS, InputAffine, IResNet, IRSEBackbone, Recognizer,
                               arcface_affine, arcface_box, arcface_crop, load_recognizer)
from bfr_core.faces.geometry import ffhq_template, invert_affine, transform_points

R18 = IRESNET_LAYERS["iresnet18"]

try:
    import onnxruntime as ort
except ImportError:  # optional: compare with the torch source module instead
    ort = None


# ---------------------------------------------------------------- helpers

def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN statistics/affines and PReLU slopes, so no parameter is a default constant."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            elif isinstance(m, torch.nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(m.weight[0].numel()))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return module.eval()


def ref_iresnet(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """arcface_torch iresnet forward written out with torch.nn.functional on the state dict."""
    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                            False, 0.0, 1e-5)

    x = F.prelu(bn(F.conv2d(x, sd["conv1.weight"], padding=1), "bn1"), sd["prelu.weight"])
    for stage in range(1, 5):
        i = 0
        while f"layer{stage}.{i}.conv1.weight" in sd:
            p = f"layer{stage}.{i}"
            stride = 2 if i == 0 else 1
            y = F.conv2d(bn(x, p + ".bn1"), sd[p + ".conv1.weight"], padding=1)
            y = F.prelu(bn(y, p + ".bn2"), sd[p + ".prelu.weight"])
            y = bn(F.conv2d(y, sd[p + ".conv2.weight"], stride=stride, padding=1), p + ".bn3")
            short = x if i else bn(F.conv2d(x, sd[p + ".downsample.0.weight"], stride=stride), p + ".downsample.1")
            x = y + short
            i += 1
    x = bn(x, "bn2").flatten(1)
    return bn(F.linear(x, sd["fc.weight"], sd["fc.bias"]), "features")


def assert_close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4):
    err = float((a - b).abs().max() / b.abs().max())
    assert err < rtol, f"relative error {err}"


def smooth_image(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 12, 12, generator=g)
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def export_like_insightface(module: torch.nn.Module, path) -> None:
    """torch.onnx.export as insightface's torch2onnx.py does it (legacy exporter, opset 11, input 'data',
    eval-mode BN folding, batch dimension renamed 'None')."""
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), torch.zeros(1, 3, 112, 112), str(path), input_names=["data"],
                          keep_initializers_as_inputs=False, opset_version=11, dynamo=False)
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "None"
    onnx.save(model, str(path))


def mxnet_style_onnx(sd: dict, path, sub_name: str = "_minus0", mul_name: str = "_mulscalar0",
                     eps: float = 2e-5, dynamic_reshape: bool = False) -> None:
    """A hand-built graph in the style of MXNet-converted ArcFace models: (x - 127.5) * 0.0078125 inside,
    BN nodes not folded (epsilon 2e-5), shortcut before the main path, Dropout, Reshape (to a constant
    shape, or to one computed by Shape → Gather → Unsqueeze → Concat), MatMul + Add."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, k = [], [], [0]

    def name(prefix):
        k[0] += 1
        return f"{prefix}{k[0]}"

    def const(arr, dtype=np.float32):
        n = name("c")
        arr = arr.numpy() if isinstance(arr, torch.Tensor) else arr
        inits.append(numpy_helper.from_array(np.array(arr, dtype), n))
        return n

    def op(kind, inputs, node_name=None, **attrs):
        out = name("t")
        nodes.append(helper.make_node(kind, inputs, [out], name=node_name or name(kind.lower()), **attrs))
        return out

    def bn(x, p):  # variance adjusted so that eps=2e-5 computes the eps=1e-5 model
        var = sd[p + ".running_var"].numpy() + 1e-5 - eps
        return op("BatchNormalization", [x, const(sd[p + ".weight"]), const(sd[p + ".bias"]),
                                         const(sd[p + ".running_mean"]), const(var)], epsilon=eps, momentum=0.9)

    def conv(x, w, stride=1):
        k_ = w.shape[-1]
        return op("Conv", [x, const(w)], kernel_shape=[k_, k_], strides=[stride, stride], pads=[k_ // 2] * 4)

    def prelu(x, w):
        return op("PRelu", [x, const(w.reshape(-1, 1, 1))])

    x = op("Sub", ["data", const(127.5)], node_name=sub_name)
    x = op("Mul", [x, const(0.0078125)], node_name=mul_name)
    x = prelu(bn(conv(x, sd["conv1.weight"]), "bn1"), sd["prelu.weight"])
    for stage in range(1, 5):
        i = 0
        while f"layer{stage}.{i}.conv1.weight" in sd:
            p = f"layer{stage}.{i}"
            stride = 2 if i == 0 else 1
            short = x if i else bn(conv(x, sd[p + ".downsample.0.weight"], stride), p + ".downsample.1")
            y = conv(bn(x, p + ".bn1"), sd[p + ".conv1.weight"])
            y = prelu(bn(y, p + ".bn2"), sd[p + ".prelu.weight"])
            y = bn(conv(y, sd[p + ".conv2.weight"], stride), p + ".bn3")
            x = op("Add", [short, y])
            i += 1
    x = op("Dropout", [bn(x, "bn2")])
    if dynamic_reshape:
        n = op("Unsqueeze", [op("Gather", [op("Shape", [x]), const(0, np.int64)], axis=0)], axes=[0])
        x = op("Reshape", [x, op("Concat", [n, const([-1], np.int64)], axis=0)])
    else:
        x = op("Reshape", [x, const([0, -1], np.int64)])
    x = op("Add", [op("MatMul", [x, const(sd["fc.weight"].numpy().T)]), const(sd["fc.bias"])])
    out = bn(x, "features")
    graph = helper.make_graph(nodes, "arcface", [helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                                                                ["None", 3, 112, 112])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["None", 512])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def r18() -> IResNet:
    return randomize(IResNet(R18), seed=1)


@pytest.fixture(scope="module")
def r18_sd(r18) -> dict:
    return {k: v.clone() for k, v in r18.state_dict().items()}


@pytest.fixture(scope="module")
def r18_pth(r18_sd, tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "backbone.pth"
    torch.save(r18_sd, path)
    return path


@pytest.fixture(scope="module")
def rec(r18) -> Recognizer:
    return Recognizer(randomize(IResNet(R18), seed=1), "iresnet18", "test")


@pytest.fixture(scope="module")
def x112() -> torch.Tensor:
    return torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(5)) * 2 - 1


# ---------------------------------------------------------------- architectures and loading

def test_real_iresnet_structures_on_meta():
    # Parameter counts of insightface arcface_torch's own iresnet definitions.
    expected = {"iresnet18": 24_025_600, "iresnet34": 34_139_328, "iresnet50": 43_590_848,
                "iresnet100": 65_156_160}
    with torch.device("meta"):
        for name, n in expected.items():
            net = IResNet(IRESNET_LAYERS[name])
            assert sum(p.numel() for p in net.parameters()) == n, name
            assert net.arch == name
            # the variant is read back from the key layout
            from bfr_core.identity.recognizers import _stage_counts

            sd = net.state_dict()
            assert tuple(_stage_counts(sd, f"layer{i}.") for i in range(1, 5)) == IRESNET_LAYERS[name]


def test_irse50_structure_matches_facexlib():
    arch = pytest.importorskip("facexlib.recognition.arcface_arch")
    with torch.device("meta"):
        ours, theirs = IRSEBackbone(), arch.Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 43_797_696
    assert ours.arch == "ir_se50"


def test_iresnet_pth_matches_functional_reference(r18_pth, r18_sd, x112):
    rec = load_recognizer(r18_pth)
    assert (rec.arch, rec.source) == ("iresnet18", "arcface_torch")
    assert isinstance(rec.model, IResNet)
    with torch.no_grad():
        assert_close(rec.model(x112), ref_iresnet(r18_sd, x112))


def test_iresnet_pth_with_dataparallel_prefix(r18_sd, tmp_path, x112):
    path = tmp_path / "model.pt"
    torch.save({"module." + k: v for k, v in r18_sd.items() if not k.endswith("num_batches_tracked")}, path)
    rec = load_recognizer(path)
    with torch.no_grad():
        assert_close(rec.model(x112), ref_iresnet(r18_sd, x112))


def test_facexlib_irse50_matches_facexlib(tmp_path):
    arch = pytest.importorskip("facexlib.recognition.arcface_arch")
    theirs = randomize(arch.Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se"), seed=2)
    path = tmp_path / "recognition_arcface_ir_se50.pth"
    torch.save(theirs.state_dict(), path)
    rec = load_recognizer(path)
    assert (rec.arch, rec.source) == ("ir_se50", "facexlib")
    x = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(3)) * 2 - 1  # ~2 s per image on CPU
    with torch.no_grad():
        raw = rec.model(x)
        # facexlib's forward L2-normalises; ours returns the raw embedding
        assert_close(F.normalize(raw, dim=1), theirs(x))


@pytest.mark.parametrize("weights", ["random", "default_init"])
def test_onnx_torch_export_layout(weights, r18, tmp_path, x112):
    pytest.importorskip("onnx")
    # default init: identical BN tensors are deduplicated by the exporter behind Identity nodes
    src = r18 if weights == "random" else IResNet(R18).eval()
    path = tmp_path / "w600k_r18.onnx"
    export_like_insightface(src, path)
    rec = load_recognizer(path)
    assert (rec.arch, rec.source) == ("iresnet18", "onnx")
    assert isinstance(rec.model, IResNet), "torch exports hold no input normalisation"
    with torch.no_grad():
        ours = rec.model(x112)
        assert_close(ours, src(x112))
    if ort is not None:
        assert_close(ours, run_onnx(path, x112))


@pytest.mark.parametrize("names", [("_minus0", "_mulscalar0"), ("norm_a", "norm_b")])
def test_onnx_mxnet_style_graph(names, r18_sd, tmp_path, x112):
    pytest.importorskip("onnx")
    path = tmp_path / "glintr18.onnx"
    mxnet_style_onnx(r18_sd, path, *names, dynamic_reshape=names[0] != "_minus0")
    rec = load_recognizer(path)
    assert isinstance(rec.model, InputAffine)
    raw_pixels = names[0].startswith("_minus")  # insightface's rule: Sub + Mul nodes → feed [0, 255]
    graph_input = (x112 + 1) * 127.5 if raw_pixels else x112
    with torch.no_grad():
        ours = rec.model(x112)
        ref = ref_iresnet(r18_sd, (graph_input - 127.5) * 0.0078125)
        assert_close(ours, ref)
    if ort is not None:
        assert_close(ours, run_onnx(path, graph_input))


# ---------------------------------------------------------------- the ArcFace crop

def test_arcface_crop_geometry():
    m = arcface_affine(512)
    # the FFHQ template lands on the ArcFace template as well as a similarity can (the two templates'
    # proportions differ: least-squares residuals 1-2.5 px at 112, centroids identical)
    mapped = transform_points(m, ffhq_template(512))
    assert float((mapped - ARCFACE_TEMPLATE_112).norm(dim=1).max()) < 3.0
    assert torch.allclose(mapped.mean(0), ARCFACE_TEMPLATE_112.mean(0), atol=1e-6)
    assert abs(float(torch.hypot(m[0, 0], m[1, 0])) - 0.29209) < 1e-4  # 383.4 px of the 512 face → 112
    # DESIGN §4 box: x in [64.8, 448.2], y in [61.1, 444.6] = crop coordinates 0 and 112 mapped back
    inv = invert_affine(m)
    corners = transform_points(inv, torch.tensor([[0.0, 0.0], [112.0, 112.0]], dtype=torch.float64))
    assert torch.allclose(corners, torch.tensor([[64.8, 61.1], [448.2, 444.6]], dtype=torch.float64), atol=0.15)
    # the pixel-edge box (OpenCV convention) is half an output pixel (1.7 px) further out
    x0, y0, x1, y1 = arcface_box(512)
    assert abs(x0 - 64.8) < 2 and abs(y0 - 61.1) < 2 and abs(x1 - 448.2) < 2 and abs(y1 - 444.6) < 2
    assert abs((x1 - x0) - 112 / float(torch.hypot(m[0, 0], m[1, 0]))) < 0.1  # + a 0.009° rotation


@pytest.mark.parametrize("size", [512, 256])
def test_arcface_crop_matches_opencv(size):
    cv2 = pytest.importorskip("cv2")
    faces = smooth_image(2, size)
    m = arcface_affine(size).numpy()
    ref = np.stack([cv2.warpAffine(f.permute(1, 2, 0).numpy(), m, (112, 112), flags=cv2.INTER_LINEAR)
                    for f in faces])
    ref = torch.from_numpy(ref).permute(0, 3, 1, 2)
    crop = arcface_crop(faces, antialias=False)
    assert crop.shape == (2, 3, 112, 112)
    assert float((crop - ref).abs().max()) < 2e-3  # OpenCV's 1/32-px fixed-point weights
    # the antialiased crop differs only by the prefilter on smooth content
    assert float((arcface_crop(faces) - ref).abs().mean()) < 5e-3


def test_arcface_crop_antialias_suppresses_aliasing():
    # a 1-px checkerboard is pure detail above the 112-px Nyquist limit: it must average out to grey
    yy, xx = torch.meshgrid(torch.arange(512), torch.arange(512), indexing="ij")
    board = ((yy + xx) % 2).float().expand(1, 3, -1, -1)
    assert float(arcface_crop(board, antialias=True).std()) < 0.05
    assert float(arcface_crop(board, antialias=False).std()) > 0.1


# ---------------------------------------------------------------- embed

def test_embed_unit_norm_and_differentiable(rec):
    faces = smooth_image(2, 512).requires_grad_(True)
    emb = rec.embed(faces)
    assert emb.shape == (2, 512) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    target = F.normalize(torch.randn(2, 512, generator=torch.Generator().manual_seed(0)), dim=1)
    (1 - (emb * target).sum(1)).sum().backward()
    g = faces.grad
    assert torch.isfinite(g).all() and float(g.abs().max()) > 0
    # the gradient covers the ArcFace region densely (antialiased crop), nothing outside it
    x0, y0, x1, y1 = (int(v) for v in arcface_box(512))
    inside = g[:, :, y0 + 4:y1 - 4, x0 + 4:x1 - 4]
    assert float((inside.abs().sum(1) > 0).float().mean()) > 0.99
    assert float(g[:, :, :, : x0 - 8].abs().max()) == 0


def test_embed_batch_consistent_and_any_size(rec):
    faces = smooth_image(3, 512, seed=1)
    with torch.no_grad():
        batch = rec.embed(faces)
        single = torch.cat([rec.embed(f[None]) for f in faces])
        assert torch.allclose(batch, single, atol=1e-5)
        assert torch.allclose(rec.embed(faces[0]), batch[0], atol=1e-5)  # [3, S, S] input
        # the same face at another resolution gives (nearly) the same ArcFace crop
        half = F.interpolate(faces, size=(256, 256), mode="bicubic", antialias=True, align_corners=False)
        assert float((rec.crop(half) - rec.crop(faces)).abs().mean()) < 0.01
    with pytest.raises(ValueError):
        rec.embed(torch.rand(1, 3, 512, 256))
    with pytest.raises(ValueError):
        rec.embed(torch.rand(1, 4, 512, 512))


def test_embed_dtypes(rec, r18_pth):
    faces = smooth_image(2, 256, seed=2)
    with torch.no_grad():
        ref = rec.embed(faces)
        assert torch.allclose(rec.embed(faces.double()), ref, atol=1e-5)
        bf16 = load_recognizer(r18_pth, dtype=torch.bfloat16)
        assert bf16.dtype == torch.bfloat16 and bf16.device == torch.device("cpu")
        emb = bf16.embed(faces)
    assert emb.dtype == torch.float32
    assert float((emb * ref).sum(1).min()) > 0.98  # `rec` holds the same weights as r18_pth


def test_to_and_devices(r18_pth):
    rec = load_recognizer(r18_pth)
    assert rec.to("cpu") is rec and rec.device == torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: cross-device embed not exercised")
    faces = smooth_image(1, 256).requires_grad_(True)
    ref = rec.embed(faces)
    rec.to("cuda")
    emb = rec.embed(faces)  # CPU faces, CUDA recognizer: result comes back on the CPU
    assert emb.device == faces.device and torch.allclose(emb, ref, atol=1e-3)
    emb.sum().backward()
    assert faces.grad is not None and faces.grad.device == faces.device
    cpu_rec = load_recognizer(r18_pth)
    out = cpu_rec.embed(faces.detach().cuda())  # CUDA faces, CPU recognizer
    assert out.device.type == "cuda"


# ---------------------------------------------------------------- refusals

def test_wrong_kind_pth(tmp_path):
    path = tmp_path / "parsing_bisenet.pth"
    torch.save({"cp.resnet.conv1.weight": torch.zeros(64, 3, 7, 7), "cp.resnet.bn1.weight": torch.ones(64)}, path)
    with pytest.raises(CheckpointError, match="parsing_bisenet.pth") as err:
        load_recognizer(path)
    assert "models/insightface" in str(err.value) and "models/facerestore_models" in str(err.value)


def test_gfpgan_arcface_refused_with_reason(tmp_path):
    path = tmp_path / "arcface_resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(64, 1, 3, 3), "fc5.weight": torch.zeros(512, 512 * 8 * 8)}, path)
    with pytest.raises(CheckpointError, match="grayscale"):
        load_recognizer(path)


def test_truncated_files(r18_pth, r18, tmp_path):
    data = r18_pth.read_bytes()
    cut = tmp_path / "backbone_cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="backbone_cut.pth") as err:
        load_recognizer(cut)
    assert "models/insightface" in str(err.value)
    pytest.importorskip("onnx")
    full = tmp_path / "glintr100.onnx"
    export_like_insightface(IResNet(R18), full)
    cut = tmp_path / "glintr100_cut.onnx"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="glintr100_cut.onnx"):
        load_recognizer(cut)
    with pytest.raises(CheckpointError, match="not found"):
        load_recognizer(tmp_path / "missing.onnx")


def test_non_recognizer_onnx_refused(tmp_path):
    pytest.importorskip("onnx")

    class Detector(torch.nn.Module):  # a detector-like graph: dynamic input, two heads
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, 2, 1)

        def forward(self, x):
            return self.conv(x).amax((2, 3))

    path = tmp_path / "scrfd_10g_bnkps.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Detector().eval(), torch.zeros(1, 3, 640, 640), str(path), opset_version=11, dynamo=False)
    with pytest.raises(CheckpointError, match="scrfd_10g_bnkps.onnx is not an ArcFace"):
        load_recognizer(path)
    # an ArcFace-sized conv net that is not an iresnet is refused too
    small = tmp_path / "w600k_mbf.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Detector().eval(), torch.zeros(1, 3, 112, 112), str(small), opset_version=11, dynamo=False)
    with pytest.raises(CheckpointError, match="not an ArcFace iresnet"):
        load_recognizer(small)


def test_yunet_onnx_refused(yunet_path):
    pytest.importorskip("onnx")
    with pytest.raises(CheckpointError, match="not an ArcFace"):
        load_recognizer(yunet_path)


def test_onnx_package_missing(monkeypatch, tmp_path):
    path = tmp_path / "glintr100.onnx"
    path.write_bytes(b"\x08\x07")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx → ImportError
    with pytest.raises(CheckpointError, match="pip install onnx"):
        load_recognizer(path)
