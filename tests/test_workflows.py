"""Example workflows: every node exists, links are type-correct, widget values fit the inputs."""
import json

import pytest

from conftest import ROOT

# Signatures of the ComfyUI core nodes the examples use: (inputs in order, outputs).
# Widget inputs are (name, kind); kind "IMAGE"-like upper-case names are links.
CORE_NODES = {
    "LoadImage": ([("image", "COMBO"), ("upload", "UPLOAD")], ["IMAGE", "MASK"]),
    "SaveImage": ([("images", "IMAGE"), ("filename_prefix", "STRING")], []),
    "PreviewImage": ([("images", "IMAGE")], []),
    "ImageSharpen": ([("image", "IMAGE"), ("sharpen_radius", "INT"), ("sigma", "FLOAT"), ("alpha", "FLOAT")], ["IMAGE"]),
    # ComfyUI's core video nodes (comfy_extras/nodes_video.py, v0.3.64)
    "LoadVideo": ([("file", "COMBO"), ("upload", "UPLOAD")], ["VIDEO"]),
    "GetVideoComponents": ([("video", "VIDEO")], ["IMAGE", "AUDIO", "FLOAT"]),
    "CreateVideo": ([("images", "IMAGE"), ("fps", "FLOAT"), ("audio", "AUDIO")], ["VIDEO"]),
    "SaveVideo": ([("video", "VIDEO"), ("filename_prefix", "STRING"), ("format", "COMBO"), ("codec", "COMBO")], []),
    "PreviewAny": ([("source", "*")], []),  # shows a STRING (the similarity report)
    # SD/SDXL checkpoints, prompts and custom sampling (nodes.py, comfy_extras/nodes_custom_sampler.py, v0.3.64)
    "CheckpointLoaderSimple": ([("ckpt_name", "COMBO")], ["MODEL", "CLIP", "VAE"]),
    "CLIPTextEncode": ([("text", "STRING"), ("clip", "CLIP")], ["CONDITIONING"]),
    "VAEEncode": ([("pixels", "IMAGE"), ("vae", "VAE")], ["LATENT"]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], ["IMAGE"]),
    "RandomNoise": ([("noise_seed", "INT", {"min": 0, "control_after_generate": True})], ["NOISE"]),
    "KSamplerSelect": ([("sampler_name", "COMBO")], ["SAMPLER"]),
    "BasicScheduler": ([("model", "MODEL"), ("scheduler", "COMBO"), ("steps", "INT", {"min": 1, "max": 10000}),
                        ("denoise", "FLOAT", {"min": 0.0, "max": 1.0})], ["SIGMAS"]),
    "SamplerCustomAdvanced": ([("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"),
                               ("latent_image", "LATENT")], ["LATENT", "LATENT"]),
}
LINK_TYPES = {"IMAGE", "MASK", "LATENT", "MODEL", "VAE", "CLIP", "CONDITIONING", "VIDEO", "AUDIO", "NOISE", "GUIDER",
              "SAMPLER", "SIGMAS"}
UPLOAD_NODES = ("LoadImage", "LoadVideo")  # the frontend stores the upload widget's value after the file name

# workflows/ui: drag-and-drop (UI) format; workflows/api: the HTTP API twins (same stem). Only
# example_workflows/ holds JSON directly: ComfyUI lists every `<pack>/{example_workflows,workflows,...}/*.json`
# as a template, so no JSON may sit directly in workflows/.
UI_FILES = sorted((ROOT / "workflows" / "ui").glob("*.json"))
API_FILES = sorted((ROOT / "workflows" / "api").glob("*.json"))


def _signature(nodes_map, node_type):
    """[(name, type, options)] in widget order, and output types, for a pack or core node."""
    if node_type in nodes_map:
        cls = nodes_map[node_type]
        spec = cls.INPUT_TYPES()
        inputs = []
        for group in ("required", "optional"):
            for name, entry in spec.get(group, {}).items():
                kind, opts = entry[0], entry[1] if len(entry) > 1 else {}
                if isinstance(kind, list):  # V1 combo: the choices are the type
                    kind, opts = "COMBO", {**opts, "options": kind}
                inputs.append((name, kind, opts, opts.get("options") if kind == "COMBO" else None))
        return inputs, list(cls.RETURN_TYPES)
    if node_type in CORE_NODES:
        ins, outs = CORE_NODES[node_type]
        return [(n, k, rest[0] if rest else {}, None) for n, k, *rest in ins], outs
    raise AssertionError(f"unknown node type {node_type}")


def _is_link_type(kind):
    return kind in LINK_TYPES or kind.startswith("BFR_") or kind == "*"


def test_there_are_examples():
    assert UI_FILES and API_FILES


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_is_consistent(path, comfy_pack):
    wf = json.loads(path.read_text())
    nodes_map = comfy_pack.NODE_CLASS_MAPPINGS
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert wf["last_node_id"] >= max(nodes) and wf["last_link_id"] >= max(l[0] for l in wf["links"])
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        _, src_outs = _signature(nodes_map, nodes[src]["type"])
        assert src_outs[src_slot] == typ, f"link {link_id}: {nodes[src]['type']} output {src_slot} is not {typ}"
        dst_node = nodes[dst]
        assert dst_node["inputs"][dst_slot]["type"] in (typ, "*") and dst_node["inputs"][dst_slot]["link"] == link_id
        assert link_id in (nodes[src]["outputs"][src_slot]["links"] or [])
    for node in wf["nodes"]:
        inputs, outs = _signature(nodes_map, node["type"])
        links_in = [i["name"] for i in node.get("inputs", []) if i.get("link") is not None and "widget" not in i]
        link_inputs = [n for n, k, _, _ in inputs if _is_link_type(k)]
        for name in links_in:
            assert name in link_inputs, f"{node['type']}.{name} is not a link input"
        # A widget fed by a link (e.g. fps from Get Video Components) keeps its value in widgets_values.
        widget_names = [n for n, k, _, _ in inputs if not _is_link_type(k) and k != "UPLOAD"]
        for i in node.get("inputs", []):
            if "widget" in i:
                assert i["widget"]["name"] == i["name"] in widget_names, f"{node['type']}.{i['name']} is no widget"
        required = [n for n, k, _, _ in inputs if _is_link_type(k)]
        assert set(required) <= {i["name"] for i in node.get("inputs", [])}, f"{node['type']} misses a link input"
        widgets = []
        for n, k, o, c in inputs:
            if not _is_link_type(k) and k != "UPLOAD":
                widgets.append((n, k, o, c))
                if o.get("control_after_generate"):  # the frontend stores its mode right after the value
                    widgets.append((n + ":control", "CONTROL", {}, None))
        values = node["widgets_values"]
        if node["type"] in UPLOAD_NODES:
            values = values[:1]
        assert len(values) == len(widgets), f"{node['type']}: {len(values)} widget values for {len(widgets)} widgets"
        for value, (name, kind, opts, choices) in zip(values, widgets):
            if kind == "CONTROL":
                assert value in ("fixed", "increment", "decrement", "randomize"), f"{node['type']}.{name}"
            if kind == "COMBO" and choices is not None and name not in ("model_name",):
                assert value in choices, f"{node['type']}.{name}={value!r}"
            elif kind == "INT":
                assert isinstance(value, int) and opts.get("min", value) <= value <= opts.get("max", value)
            elif kind == "FLOAT":
                assert isinstance(value, (int, float)) and opts.get("min", value) <= value <= opts.get("max", value)
            elif kind == "STRING":
                assert isinstance(value, str)
        assert [o["type"] for o in node.get("outputs", [])] == outs


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_api_workflow_matches_its_ui_twin(path, comfy_pack):
    api = json.loads(path.read_text())
    ui = json.loads((ROOT / "workflows" / "ui" / path.name).read_text())
    nodes_map = comfy_pack.NODE_CLASS_MAPPINGS
    ui_nodes = {str(n["id"]): n for n in ui["nodes"]}
    assert set(api) == set(ui_nodes)
    for node_id, node in api.items():
        assert node["class_type"] == ui_nodes[node_id]["type"]
        inputs, _ = _signature(nodes_map, node["class_type"])
        names = {n for n, k, _, _ in inputs if k != "UPLOAD"}
        assert set(node["inputs"]) <= names, f"{node_id}: unknown inputs {set(node['inputs']) - names}"
        for name, kind, _, _ in inputs:
            if _is_link_type(kind) and name in node["inputs"]:
                src, slot = node["inputs"][name]
                _, outs = _signature(nodes_map, api[src]["class_type"])
                assert kind == "*" or outs[slot] == kind, f"{node_id}.{name}: {api[src]['class_type']}[{slot}] is {outs[slot]}"
        widget_names = []
        for n, k, o, _ in inputs:
            if not _is_link_type(k) and k != "UPLOAD":
                widget_names.append(n)
                if o.get("control_after_generate"):
                    widget_names.append(None)  # the UI-only control value has no API input
        ui_values = ui_nodes[node_id]["widgets_values"]
        assert all(n is None or n in node["inputs"] for n in widget_names), f"{node_id}: a widget is missing"
        kinds = {n: k for n, k, _, _ in inputs}
        for name, value in zip(widget_names, ui_values):
            if name is None:
                continue
            if isinstance(node["inputs"][name], list):  # a widget fed by a link: the link's type must fit
                src, slot = node["inputs"][name]
                _, outs = _signature(nodes_map, api[src]["class_type"])
                assert outs[slot] == kinds[name], f"{node_id}.{name}: {api[src]['class_type']}[{slot}] is {outs[slot]}"
                continue
            assert node["inputs"][name] == value, f"{node_id}.{name}: API {node['inputs'][name]!r} vs UI {value!r}"


def test_templates_folder_mirrors_the_ui_workflows():
    shipped = sorted((ROOT / "example_workflows").glob("*.json"))
    assert [p.name for p in shipped] == [p.name for p in UI_FILES]
    for p in shipped:
        assert p.read_bytes() == (ROOT / "workflows" / "ui" / p.name).read_bytes()
    # Other folder names ComfyUI scans for templates must not hold JSON, or templates appear twice.
    for name in ("example", "examples", "workflow", "workflows"):
        assert not list((ROOT / name).glob("*.json")), name


# The frontend these layouts were checked in (ComfyUI frontend 1.27.10, read from its bundle and measured in headless
# Chromium at 1920x1080, device pixel ratio 1): the canvas is 1856 x 1002 px (side bar 64 px, top bars 78 px); "fit
# view" leaves a quarter of it as margin (a 1840 px wide graph fits at 0.748); nodes switch to blank low-detail boxes
# below zoom LiteGraph.Canvas.MinFontSizeForLOD (8) / NODE_TEXT_SIZE (14) = 0.571. Node titles sit 30 px above pos.
CANVAS = (1856, 1002)
FIT_MARGIN = 0.75
DETAIL_ZOOM = 8 / 14
TITLE_HEIGHT = 30
# Smallest body heights the frontend computes for the nodes (LiteGraph computeSize), image nodes with a preview.
MIN_HEIGHT = {"LoadImage": 326, "BFRDetectFaces": 218, "BFRDiffusionRestore": 282, "BFRRestoreFaces": 354,
              "BFRIdentityGuidance": 214, "BFRPasteFaces": 194, "BFRRestoreCropsWithModel": 414,
              "BFRIdentityGuider": 158, "SamplerCustomAdvanced": 106, "CheckpointLoaderSimple": 98}


def _rects(wf):
    return [(n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1], n)
            for n in wf["nodes"]]


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_is_readable_at_fit_to_view(path):
    """No two nodes overlap (title bars included, 20 px apart at least), each node is as tall as its widgets need,
    and fit-to-view in a 1920x1080 window shows the graph above the frontend's detail threshold."""
    wf = json.loads(path.read_text())
    rects = _rects(wf)
    for i, (x0, y0, x1, y1, a) in enumerate(rects):
        assert a["size"][1] >= MIN_HEIGHT.get(a["type"], 0), f"{a['type']} is shorter than its widgets"
        for u0, v0, u1, v1, b in rects[i + 1:]:
            apart = x1 + 20 <= u0 or u1 + 20 <= x0 or y1 + 20 <= v0 or v1 + 20 <= y0
            assert apart, f"node {a['id']} ({a['type']}) overlaps node {b['id']} ({b['type']})"
    width = max(r[2] for r in rects) - min(r[0] for r in rects)
    height = max(r[3] for r in rects) - min(r[1] for r in rects)
    zoom = FIT_MARGIN * min(CANVAS[0] / width, CANVAS[1] / height)
    assert zoom >= DETAIL_ZOOM + 0.05, f"fit-to-view zoom {zoom:.2f}: nodes would render as blank boxes"


def test_every_template_has_a_thumbnail():
    """The Templates dialog shows <name>.jpg beside each example_workflows/<name>.json (frontend 1.27.10)."""
    for p in sorted((ROOT / "example_workflows").glob("*.json")):
        jpg = p.with_suffix(".jpg")
        assert jpg.is_file() and jpg.read_bytes()[:3] == b"\xff\xd8\xff", f"{jpg.name} missing or not a JPEG"


def test_a_workflow_uses_every_node():
    """Each of the pack's nodes appears in at least one shipped workflow (BFRFaceSimilarity: before/after)."""
    used = {n["type"] for p in UI_FILES for n in json.loads(p.read_text())["nodes"]}
    for node_id in ("BFRFaceSimilarity", "BFRIdentityGuidance", "BFRDiffusionRestore", "BFRRestoreFaces",
                    "BFRPasteFaces", "BFRLoadFaceRecognizer", "BFRRestoreCropsWithModel", "BFRIdentityGuider"):
        assert node_id in used, node_id
