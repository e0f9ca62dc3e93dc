"""Commercial-use switch: every registry file has a licence class; --commercial-only / $BFR_COMMERCIAL_ONLY refuse
known non-commercial files (naming the file, its licence and an alternative) in the CLI, the library loaders and the
nodes, and let unknown files through with a warning."""
from __future__ import annotations

import shutil
import warnings

import pytest

from bfr_core.cli import main
from bfr_core.models import files as model_files
from bfr_core.models.files import ENV_COMMERCIAL_ONLY, LICENCE_KINDS, REGISTRY, LicenceError, check_licence
from conftest import run_node, shared_path

PRIOR = "iddpm_ffhq512_ema500000.pth"
SWINIR = "swinir_restoration512_L1.pth"


def test_every_registry_file_has_a_licence_class_matching_its_licence_text():
    for entry in [*REGISTRY.values(), *model_files.LICENCE_ONLY.values()]:
        assert entry.licence_kind in LICENCE_KINDS, entry.name
        assert entry.commercial == ("non-commercial" not in entry.licence.lower()), entry.name
        if not entry.commercial:
            assert entry.alternative, entry.name
    assert not REGISTRY[PRIOR].commercial and not REGISTRY[SWINIR].commercial
    assert REGISTRY["face_detection_yunet_2023mar.onnx"].commercial


def test_check_licence_refuses_known_non_commercial_files_by_name_or_stem(tmp_path):
    for name in (PRIOR, "iddpm_ffhq512_ema500000.safetensors", SWINIR, "antelopev2/glintr100.onnx"):
        with pytest.raises(LicenceError) as info:
            check_licence(tmp_path / name, commercial_only=True)
        msg = str(info.value)
        assert name.split("/")[-1] in msg and ("S-Lab" in msg or "non-commercial research" in msg)
        assert "Use instead" in msg
    assert "a copy of iddpm_ffhq512_ema500000.pth" in str(
        pytest.raises(LicenceError, check_licence, tmp_path / "iddpm_ffhq512_ema500000.safetensors", True).value)
    assert check_licence(tmp_path / PRIOR, commercial_only=False) is REGISTRY[PRIOR]  # off: allowed
    assert check_licence(tmp_path / "face_detection_yunet_2023mar.onnx", True).commercial


def test_unknown_files_are_allowed_with_one_warning(tmp_path):
    path = tmp_path / "my_own_prior.safetensors"
    with pytest.warns(UserWarning, match="not in the registry"):
        assert check_licence(path, commercial_only=True) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_licence(path, commercial_only=True)  # once per file
        check_licence(tmp_path / "other.pth", commercial_only=False)  # mode off: silent


def test_environment_switch_values(monkeypatch, tmp_path):
    for value, on in (("1", True), ("true", True), ("YES", True), ("0", False), ("", False), ("off", False)):
        monkeypatch.setenv(ENV_COMMERCIAL_ONLY, value)
        assert model_files.commercial_only_from_env() is on
    monkeypatch.setenv(ENV_COMMERCIAL_ONLY, "maybe")
    with pytest.raises(ValueError, match=ENV_COMMERCIAL_ONLY):
        check_licence(tmp_path / PRIOR)


def test_library_loaders_check_the_environment_before_reading(monkeypatch, tmp_path):
    from bfr_core.diffusion.loading import load_prior
    from bfr_core.faces.parsing import load_face_parser
    from bfr_core.restoration.backbones import load_restorer

    for name in (PRIOR, SWINIR):
        (tmp_path / name).write_bytes(b"not read")
    monkeypatch.setenv(ENV_COMMERCIAL_ONLY, "1")
    with pytest.raises(LicenceError, match=PRIOR):
        load_prior(tmp_path / PRIOR)
    with pytest.raises(LicenceError, match=SWINIR):
        load_restorer(tmp_path / SWINIR)
    assert load_restorer("none") is not None  # nothing loaded, nothing to check
    monkeypatch.delenv(ENV_COMMERCIAL_ONLY)
    with pytest.raises(Exception) as info:  # mode off: the file is read (and is garbage)
        load_prior(tmp_path / PRIOR)
    assert not isinstance(info.value, LicenceError)
    with pytest.raises(Exception) as info:
        load_face_parser(tmp_path / PRIOR)
    assert not isinstance(info.value, LicenceError)


def test_cli_flag_and_environment(tmp_path, yunet_path, capsys, monkeypatch):
    monkeypatch.delenv(ENV_COMMERCIAL_ONLY, raising=False)
    photo = shared_path("images/whole/gfpgan_00.jpg")
    (tmp_path / PRIOR).write_bytes(b"not read")
    args = ["restore", str(photo), "-o", str(tmp_path / "out"), "--detector", str(yunet_path),
            "--prior", str(tmp_path / PRIOR)]
    assert main(args + ["--commercial-only"]) == 2
    err = capsys.readouterr().err
    assert PRIOR in err and "S-Lab License 1.0" in err and "google/ddpm-ema-celebahq-256" in err
    monkeypatch.setenv(ENV_COMMERCIAL_ONLY, "1")
    assert main(args) == 2
    assert "commercial-only mode" in capsys.readouterr().err
    # an unknown detector file: used, with a warning
    other = tmp_path / "my_detector.onnx"
    shutil.copy(yunet_path, other)
    with pytest.warns(UserWarning, match="my_detector.onnx"):
        assert main(["detect", str(photo), "--detector", str(other), "--commercial-only"]) == 0
    monkeypatch.delenv(ENV_COMMERCIAL_ONLY)
    assert main(["similarity", str(photo), str(photo), "--recognizer", str(tmp_path / PRIOR),
                 "--commercial-only"]) == 2
    assert PRIOR in capsys.readouterr().err


def test_nodes_get_the_switch_from_the_environment(comfy_pack, tmp_path, monkeypatch):
    import folder_paths

    (tmp_path / PRIOR).write_bytes(b"not read")
    folder_paths.folder_names_and_paths["facerestore_models"] = ([str(tmp_path)], {".pth"})
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    monkeypatch.setenv(ENV_COMMERCIAL_ONLY, "1")
    # The pack is imported under another package name here: match the message, not the class.
    with pytest.raises(ValueError, match="commercial-only mode: iddpm_ffhq512_ema500000.pth is licensed S-Lab"):
        run_node(nodes["BFRLoadDiffusionPrior"], PRIOR, "fp32")
    with pytest.raises(ValueError, match="commercial-only mode"):
        run_node(nodes["BFRLoadRestorer"], PRIOR, "fp32")
