"""Node contract, run without ComfyUI: the pack is imported the way ComfyUI imports it, with stand-ins."""

import sys

import pytest
import torch

from bfr_core.faces.align import align_faces
from conftest import combo_options, load_rgb, run_node, shared_path, validate_node
from test_paste import _faces_at

NODE_IDS = {"BFRLoadFaceDetector", "BFRDetectFaces", "BFRAlignFaces", "BFRPasteFaces"}


# ComfyUI executes every node inside torch.inference_mode(); so do these tests (conftest fixture).
pytestmark = pytest.mark.usefixtures("comfy_inference_mode")


def test_pack_exports_the_nodes(comfy_pack):
    assert NODE_IDS <= set(comfy_pack.NODE_CLASS_MAPPINGS)
    assert set(comfy_pack.NODE_DISPLAY_NAME_MAPPINGS) == set(comfy_pack.NODE_CLASS_MAPPINGS)


def test_every_node_is_documented(comfy_pack):
    from comfy_api.latest import io

    for node_id, cls in comfy_pack.NODE_CLASS_MAPPINGS.items():
        assert issubclass(cls, io.ComfyNode), f"{node_id} is not a V3 node"
        info = cls.GET_NODE_INFO_V1()  # what ComfyUI's /object_info sends for a V3 node
        assert info["name"] == node_id and info["category"] == "face restore/BFR" and info["description"], node_id
        assert info["display_name"] == comfy_pack.NODE_DISPLAY_NAME_MAPPINGS[node_id]
        assert cls.DESCRIPTION and cls.CATEGORY and hasattr(cls, cls.FUNCTION), node_id
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
        tips = cls.OUTPUT_TOOLTIPS
        assert tips is not None and len(tips) == len(cls.RETURN_TYPES), f"{node_id} needs one output tooltip each"
        assert all(isinstance(t, str) and t.strip() for t in tips), f"{node_id} has an empty output tooltip"
        spec = cls.INPUT_TYPES()
        for group in spec.values():
            for name, entry in group.items():
                assert len(entry) == 2 and entry[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
                if entry[0] == "COMBO":
                    options = entry[1]["options"]
                    default = entry[1].get("default", options[0])
                    assert default in options, f"{node_id}.{name}"


@pytest.mark.parametrize("query", ["difface", "gfpgan", "codeformer", "restore", "face"])
def test_node_search_finds_every_node(comfy_pack, query):
    """The search words each node declares (sent as the Schema's `search_aliases` where ComfyUI has that field)."""
    from bfr_pack_under_test.nodes.schema import search_aliases

    for node_id, cls in comfy_pack.NODE_CLASS_MAPPINGS.items():
        aliases = search_aliases(*cls.SEARCH)
        assert all(isinstance(a, str) and a for a in aliases), node_id
        assert any(query in a.lower() for a in aliases), f"{node_id}: '{query}' finds nothing"


def test_search_aliases_reach_newer_comfyui_schemas(comfy_pack, monkeypatch):
    """A ComfyUI whose Schema has `search_aliases` gets them; v0.3.64's Schema (the stand-in) has none and still
    builds every node."""
    import dataclasses

    from comfy_api.latest import io

    assert "search_aliases" not in {f.name for f in dataclasses.fields(io.Schema)}

    @dataclasses.dataclass
    class NewerSchema(io.Schema):
        search_aliases: list = None

    monkeypatch.setattr(io, "Schema", NewerSchema)
    for node_id, cls in comfy_pack.NODE_CLASS_MAPPINGS.items():
        schema = cls.define_schema()
        assert "difface" in schema.search_aliases and set(cls.SEARCH) <= set(schema.search_aliases), node_id


def test_loaders_offer_a_placeholder_that_names_the_file(comfy_pack, tmp_path):
    """Empty model folders: each loader lists the file it expects (not an empty list, which ComfyUI answers with
    a bare "Value not in list"), and running it names the folder to put the file in, without CLI flags."""
    import folder_paths

    for folder in ("facedetection", "facerestore_models", "insightface"):
        folder_paths.folder_names_and_paths[folder] = ([str(tmp_path / folder)], {".onnx", ".pth"})
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    expected = {"BFRLoadFaceDetector": ("face_detection_yunet_2023mar.onnx", "facedetection"),
                "BFRLoadDiffusionPrior": ("iddpm_ffhq512_ema500000.pth", "facerestore_models"),
                "BFRLoadRestorer": ("swinir_restoration512_L1.pth", "facerestore_models"),
                "BFRLoadFaceRecognizer": ("facerestore_models:recognition_arcface_ir_se50.pth", "facerestore_models")}
    for node_id, (name, folder) in expected.items():
        spec = nodes[node_id].INPUT_TYPES()["required"]
        assert name in combo_options(nodes[node_id], "model_name"), node_id
        args = [name] + ([] if len(spec) == 1 else [spec["dtype"][1]["default"]])
        with pytest.raises(Exception, match=folder) as err:
            run_node(nodes[node_id], *args)
        assert "--" not in str(err.value), f"{node_id}: {err.value}"
        # Refused at queue time already, with the same words (ComfyUI's own check would say "Value not in list").
        verdict = validate_node(nodes[node_id], model_name="another_name.pth")
        assert isinstance(verdict, str) and "another_name.pth" in verdict and folder in verdict, verdict
    assert combo_options(nodes["BFRLoadRestorer"], "model_name")[0] == "none"  # still the default


def test_library_hints_name_no_cli_flags():
    from bfr_core.diffusion.loading import PRIOR_HINT
    from bfr_core.identity.recognizers import FOLDER_HINT
    from bfr_core.models.files import expectation_hint

    from bfr_core.models.files import check_licence

    for hint in (PRIOR_HINT, FOLDER_HINT, expectation_hint("iddpm_ffhq512_ema500000.pth")):
        assert hint and "--" not in hint, hint
    with pytest.raises(ValueError, match="commercial-only mode") as err:  # BFR_COMMERCIAL_ONLY=1 in ComfyUI
        check_licence("iddpm_ffhq512_ema500000.pth", commercial_only=True)
    assert "--" not in str(err.value)


def test_out_of_range_index_is_not_reported_as_no_faces(comfy_pack, detector_node_output, caplog):
    import logging

    img = _comfy_image("images/whole/gfpgan_10045.png")
    with caplog.at_level(logging.INFO):
        dets, _, count = run_node(comfy_pack.NODE_CLASS_MAPPINGS["BFRDetectFaces"], 
            img, detector_node_output, 0.6, 0, "indices", "7", "area", 0)
    messages = [r.getMessage() for r in caplog.records]
    assert count == 0 and any("out of range" in m for m in messages), messages
    assert any("none kept by the selection" in m for m in messages), messages
    assert not any("no faces found" in m.lower() or "no face found" in m.lower() for m in messages), messages


def test_model_folders_are_merged_not_overwritten(comfy_pack):
    import folder_paths

    from bfr_pack_under_test.nodes.comfy_glue import register_model_folders

    folder_paths.folder_names_and_paths["facedetection"] = (["/user/extra/facedetection"], {".pth"})
    folder_paths.folder_names_and_paths["facerestore_models"] = (["/user/restore"], set())
    register_model_folders()
    paths, exts = folder_paths.folder_names_and_paths["facedetection"]
    assert paths[0] == "/user/extra/facedetection" and len(paths) == 2 and ".onnx" in exts and ".pth" in exts
    paths, exts = folder_paths.folder_names_and_paths["facerestore_models"]
    assert "/user/restore" in paths and exts == set()  # an empty set (= every file) stays as the user had it
    register_model_folders()
    assert len(folder_paths.folder_names_and_paths["facedetection"][0]) == 2


@pytest.fixture
def detector_node_output(comfy_pack, tmp_path):
    import folder_paths

    yunet = shared_path("models/face_detection_yunet_2023mar.onnx")
    folder_paths.folder_names_and_paths["facedetection"] = ([str(yunet.parent)], {".onnx", ".pth"})
    cls = comfy_pack.NODE_CLASS_MAPPINGS["BFRLoadFaceDetector"]
    choices = combo_options(cls, "model_name")
    assert yunet.name in choices
    return run_node(cls, yunet.name)[0]


def _comfy_image(rel):
    return load_rgb(shared_path(rel)).movedim(1, -1)


def test_detect_align_paste_graph_on_a_video_like_batch(comfy_pack, detector_node_output):
    import comfy.utils

    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    frame = _comfy_image("images/whole/gfpgan_10045.png")
    batch = torch.cat([frame, torch.full_like(frame, 0.5), frame])
    comfy.utils.UPDATES.clear()
    dets, preview, count = run_node(nodes["BFRDetectFaces"], batch, detector_node_output, 0.6, 0, "all", "", "area", 0)
    assert len(dets) == 3 and len(dets[1]) == 0 and count == len(dets[0]) * 2
    assert preview.shape == batch.shape and not torch.equal(preview[0], batch[0])
    assert comfy.utils.UPDATES, "no progress reported"
    crops, faces = run_node(nodes["BFRAlignFaces"], batch, dets, 512, "reflect")
    assert crops.shape == (count, 512, 512, 3) and crops.dtype == torch.float32
    out, mask = run_node(nodes["BFRPasteFaces"], batch, crops, faces, "ellipse", 0.1, "none", "none")
    assert out.shape == batch.shape and mask.shape == batch.shape[:3]
    assert float(10 * torch.log10(1 / ((out - batch) ** 2).mean())) > 40
    assert torch.equal(out[1], batch[1]) and not mask[1].any() and mask[0].max() > 0.99


def test_no_faces_passthrough(comfy_pack, detector_node_output):
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    blank = torch.full((1, 64, 96, 3), 0.5)
    dets, _, count = run_node(nodes["BFRDetectFaces"], blank, detector_node_output, 0.6, 0, "all", "", "area", 0)
    crops, faces = run_node(nodes["BFRAlignFaces"], blank, dets, 256, "reflect")
    assert count == 0 and crops.shape == (1, 256, 256, 3) and len(faces) == 0
    out, mask = run_node(nodes["BFRPasteFaces"], blank, crops, faces, "ellipse", 0.1, "none", "none")
    assert torch.equal(out, blank) and not mask.any()


def test_rgba_image_keeps_alpha(comfy_pack, detector_node_output):
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    rgb = _comfy_image("images/whole/gfpgan_Blake_Lively.jpg")
    rgba = torch.cat([rgb, torch.full_like(rgb[..., :1], 0.7)], -1)
    dets, _, count = run_node(nodes["BFRDetectFaces"], rgba, detector_node_output, 0.6, 0, "largest", "", "area", 0)
    crops, faces = run_node(nodes["BFRAlignFaces"], rgba, dets, 512, "reflect")
    out, _ = run_node(nodes["BFRPasteFaces"], rgba, crops, faces, "square", 0.1, "lowpass", "none")
    assert count == 1 and crops.shape[-1] == 3 and out.shape == rgba.shape
    assert torch.equal(out[..., 3], rgba[..., 3])


def test_cancel_mid_batch_stops_the_run(comfy_pack, detector_node_output):
    import comfy.model_management as mm

    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    batch = torch.rand(6, 64, 64, 3)
    mm.INTERRUPT["flag"] = True
    with pytest.raises(mm.InterruptProcessingException):
        run_node(nodes["BFRDetectFaces"], batch, detector_node_output, 0.6, 0, "all", "", "area", 0)


def test_mismatched_inputs_are_clear_errors(comfy_pack, detector_node_output):
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    img = _comfy_image("images/whole/gfpgan_10045.png")
    dets, _, _ = run_node(nodes["BFRDetectFaces"], img, detector_node_output, 0.6, 0, "all", "", "area", 0)
    with pytest.raises(ValueError, match="same IMAGE"):
        run_node(nodes["BFRAlignFaces"], torch.cat([img, img]), dets, 512, "reflect")
    crops, faces = run_node(nodes["BFRAlignFaces"], img, dets, 512, "reflect")
    with pytest.raises(ValueError, match="crops for"):
        run_node(nodes["BFRPasteFaces"], img, crops[:1], faces, "ellipse", 0.1, "none", "none")
    with pytest.raises(ValueError, match="parsing model"):
        run_node(nodes["BFRPasteFaces"], img, crops, faces, "parsing", 0.1, "none", "none")


def test_parsing_mask_from_a_facexlib_layout_checkpoint(comfy_pack, tmp_path):
    import folder_paths
    from facexlib.parsing.bisenet import BiSeNet

    torch.manual_seed(0)
    torch.save(BiSeNet(num_class=19).state_dict(), tmp_path / "parsing_bisenet.pth")
    folder_paths.folder_names_and_paths["facedetection"] = ([str(tmp_path)], {".pth", ".onnx"})
    cls = comfy_pack.NODE_CLASS_MAPPINGS["BFRPasteFaces"]
    assert "parsing_bisenet.pth" in combo_options(cls, "parsing_model")
    from bfr_core.faces.parsing import load_face_parser

    parser = load_face_parser(tmp_path / "parsing_bisenet.pth")
    assert parser.kind == "bisenet"
    crops = load_rgb(shared_path("images/aligned512/gfpgan_Adele_crop.png"))
    assert parser.labels(crops).shape == (1, 512, 512)


def test_parsenet_checkpoint_loads_and_wrong_kind_is_named(tmp_path):
    from facexlib.parsing.parsenet import ParseNet

    from bfr_core import CheckpointError
    from bfr_core.faces.parsing import load_face_parser

    torch.save({"module." + k: v for k, v in ParseNet(512, 512, 19).state_dict().items()}, tmp_path / "p.pth")
    assert load_face_parser(tmp_path / "p.pth").kind == "parsenet"
    torch.save({"x.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="other.pth"):
        load_face_parser(tmp_path / "other.pth")


def test_parsing_mask_follows_the_labels():
    from bfr_core.faces.parsing import FaceParser

    class FixedLabels(torch.nn.Module):
        """Logits saying 'skin' (class 1) in a centred square and 'hair' (17) elsewhere."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            logits = torch.zeros(x.shape[0], 19, *x.shape[-2:])
            logits[:, 17] = 1
            logits[:, 1, 128:384, 128:384] = 2
            return (logits,)

    mask = FaceParser(FixedLabels(), "bisenet").mask(torch.rand(2, 3, 512, 512))
    assert mask.shape == (2, 512, 512)
    assert float(mask[:, 240:272, 240:272].min()) > 0.99
    assert float(mask[:, :64, :].max()) < 0.01
    assert float(mask[:, 100:412, 100:412].mean()) > float(mask.mean())


def test_parsing_labels_are_the_same_in_chunks():
    from bfr_core.faces.parsing import FaceParser

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 19, 3, padding=1))
    parser = FaceParser(_Tuple(net), "parsenet")
    crops = torch.rand(5, 3, 64, 64)
    assert torch.equal(parser.labels(crops, batch_size=2), parser.labels(crops, batch_size=8))
    with pytest.raises(ValueError, match="RGB"):
        parser.labels(torch.rand(2, 1, 64, 64))
    with pytest.raises(ValueError, match="batch_size"):
        parser.labels(crops, batch_size=0)


class _Tuple(torch.nn.Module):
    """facexlib's parsing networks return a tuple whose first item is the logits."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return (self.net(x),)


def test_paste_node_runs_the_parser_in_comfyui_memory_manager(comfy_pack, tmp_path, monkeypatch):
    """mask=parsing: the parser goes through load_models_gpu with its activation estimate; the node keeps no copy
    of it (no module-level cache: ComfyUI decides what stays loaded)."""
    import comfy.model_management as mm
    import folder_paths
    from facexlib.parsing.bisenet import BiSeNet

    torch.manual_seed(0)
    torch.save(BiSeNet(num_class=19).state_dict(), tmp_path / "parsing_bisenet.pth")
    folder_paths.folder_names_and_paths["facedetection"] = ([str(tmp_path)], {".pth", ".onnx"})
    img = torch.rand(1, 3, 96, 96)
    crops, faces = align_faces(img, _faces_at(img, [(48.0, 48.0)]), 64)
    img, crops = img.movedim(1, -1), crops.movedim(1, -1)
    paste = comfy_pack.NODE_CLASS_MAPPINGS["BFRPasteFaces"]
    mm.LOAD_REQUESTS.clear()
    first = run_node(paste, img, crops, faces, "parsing", 0.1, "none", "parsing_bisenet.pth")
    second = run_node(paste, img, crops, faces, "parsing", 0.1, "none", "parsing_bisenet.pth")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert mm.LOAD_REQUESTS == [("ManagedNetworks", 284 * 512 * 512)] * 2  # one face, BiSeNet's bytes per pixel
    assert_no_module_level_models(comfy_pack)


def assert_no_module_level_models(comfy_pack):
    """No global of the pack's node modules holds a network (directly or in a container)."""
    import sys

    for name, module in list(sys.modules.items()):
        if not name.startswith("bfr_pack_under_test.nodes"):
            continue
        for attr, value in vars(module).items():
            items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple, set)) else [value]
            for item in items:
                assert not isinstance(item, torch.nn.Module) and not hasattr(item, "comfy_patcher"), f"{name}.{attr}"


def _contract(node_cls) -> dict:
    """What a saved workflow depends on: inputs in order (group, name, type, widget options) and outputs."""
    inputs = []
    for group, entries in node_cls.INPUT_TYPES().items():
        for name, (kind, opts) in entries.items():
            keep = {k: opts[k] for k in ("default", "min", "max", "step", "control_after_generate", "options")
                    if k in opts}
            if name in ("model_name", "parsing_model"):  # file lists depend on the model folders
                keep.pop("options", None)
                keep.pop("default", None)
            inputs.append({"group": group, "name": name, "type": kind, **keep})
    return {"inputs": inputs, "outputs": list(node_cls.RETURN_TYPES), "output_names": list(node_cls.RETURN_NAMES),
            "output_is_list": list(node_cls.OUTPUT_IS_LIST)}


def test_v3_nodes_keep_the_v1_contract(comfy_pack):
    """tests/node_contract_v1.json was dumped from the V1 nodes (before the V3 move): node ids, input names, order,
    types, widget defaults and ranges, output types and names. V1-era workflows load only while each node's V1
    inputs stay a prefix of its inputs (new inputs are appended) and its outputs keep their types and order."""
    import json
    from pathlib import Path

    v1 = json.loads((Path(__file__).parent / "node_contract_v1.json").read_text())
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    assert set(v1) <= set(nodes), set(v1) - set(nodes)
    # a node without an entry would have no protection: every registered node gets one when it is added
    assert set(nodes) <= set(v1), f"add {sorted(set(nodes) - set(v1))} to tests/node_contract_v1.json"
    for node_id, old in v1.items():
        new = _contract(nodes[node_id])
        assert new["inputs"][:len(old["inputs"])] == old["inputs"], node_id
        appended = new["inputs"][len(old["inputs"]):]
        assert all(i["group"] == "optional" or "default" in i for i in appended), \
            f"{node_id}: a new input must be optional or a widget with a default"
        for key in ("outputs", "output_names", "output_is_list"):
            assert new[key][:len(old[key])] == old[key], f"{node_id}.{key}"


def test_bad_settings_are_refused_before_the_run(comfy_pack):
    """validate_inputs runs at queue time on the widget values alone (links are not computed yet): the messages
    reach the user before anything loads or samples."""
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    guidance = nodes["BFRIdentityGuidance"]
    assert validate_node(guidance, strength=1.0, start=1.0, end=0.0, mask_mode="features", fidelity=0.0) is True
    verdict = validate_node(guidance, strength=1.0, start=0.2, end=0.5, mask_mode="features", fidelity=0.0)
    assert isinstance(verdict, str) and "end must not be larger than start" in verdict
    assert isinstance(validate_node(guidance, start=1.5, end=0.0), str)
    detect = nodes["BFRDetectFaces"]
    assert validate_node(detect, select="indices", indices="0, -1") is True
    assert validate_node(detect, select="all", indices="not numbers") is True  # ignored unless select=indices
    assert "integers" in validate_node(detect, select="indices", indices="0,x")
    assert "select must be one of" in validate_node(detect, select="biggest", indices="")
    paste = nodes["BFRPasteFaces"]
    assert validate_node(paste, mask="ellipse", parsing_model="none") is True
    assert "parsing model" in validate_node(paste, mask="parsing", parsing_model="none")
    assert "mask must be one of" in validate_node(paste, mask="circle", parsing_model="none")
    with pytest.raises(ValueError, match="validation refused"):
        run_node(guidance, None, 1.0, 0.2, 0.5, "features", 0.0)  # refused before execute would see the recognizer


def test_validate_inputs_accepts_linked_inputs(comfy_pack):
    """ComfyUI validates a prompt before any node runs: an input fed by a link reaches validate_inputs as None
    (execution.get_input_data marks it missing). No node may refuse or crash on that — the shipped video workflow
    links fps — and the same check still refuses a bad widget value."""
    import inspect

    from comfy_api.internal import first_real_override

    checked_nodes = 0
    for node_id, cls in comfy_pack.NODE_CLASS_MAPPINGS.items():
        func = first_real_override(cls, "validate_inputs")
        if func is None:
            continue
        declared = [a for a in inspect.getfullargspec(func).args if a != "cls"]
        assert validate_node(cls, **dict.fromkeys(declared)) is True, node_id  # every declared input linked
        checked_nodes += 1
    assert checked_nodes >= 8
    guidance = comfy_pack.NODE_CLASS_MAPPINGS["BFRIdentityGuidance"]
    assert validate_node(guidance, start=None, end=0.5) is True  # start linked: checked when the node runs
    assert isinstance(validate_node(guidance, start=0.2, end=0.5), str)  # both widgets: end > start refused


def test_node_search_finds_the_pack_by_what_users_type(comfy_pack):
    """Frontend 1.27.10's node search (NodeSearchService) matches the node's name and display_name only, and
    ComfyUI 0.3.64 sends no search aliases: the words users search for must be in the display names."""
    fields = [f"{node_id} {cls.GET_NODE_INFO_V1()['display_name']}".lower()
              for node_id, cls in comfy_pack.NODE_CLASS_MAPPINGS.items()]
    for query in ("difface", "gfpgan", "restoreformer", "swinir", "restore", "face"):
        assert any(query in f for f in fields), query


def test_loader_precision_names(comfy_pack, monkeypatch):
    """The loaders' dtype widget: 'auto' keeps fp32 on the CPU and takes the library's choice on a GPU (bf16 where
    supported, else fp16); explicit names map as in the CLI."""
    from bfr_pack_under_test.nodes import comfy_glue

    assert comfy_glue.resolve_dtype("auto") == torch.float32  # the stand-in ComfyUI device is the CPU
    assert comfy_glue.resolve_dtype("bf16") == torch.bfloat16 and comfy_glue.resolve_dtype("fp16") == torch.float16
    monkeypatch.setattr(comfy_glue, "torch_device", lambda: torch.device("cuda"))
    for bf16_ok, expected in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, ok=bf16_ok, **k: ok)
        assert comfy_glue.resolve_dtype("auto") == expected
