"""Face identity: ArcFace recognizers (arcface_torch iresnet, facexlib IR-SE50, insightface ONNX) and the
identity guidance that steers diffusion sampling with them."""
from ..lazy import lazy_exports

_EXPORTS = {
    "IRESNET_LAYERS": "..archs.iresnet",
    "IRSE_LAYERS": "..archs.iresnet",
    "InputAffine": "..archs.iresnet",
    "IResNet": "..archs.iresnet",
    "IRSEBackbone": "..archs.iresnet",
    "STRENGTH_UNIT": ".guidance",
    "FaceRecognizer": ".guidance",
    "IdentityGuidance": ".guidance",
    "cosine_distance": ".guidance",
    "feature_mask": ".guidance",
    "REGIONS": ".regions",
    "region_mask": ".regions",
    "ARCFACE_TEMPLATE_112": ".recognizers",
    "DEFAULT_RECOGNIZER": ".recognizers",
    "DEFAULT_RECOGNIZER_FOLDER": ".recognizers",
    "FOLDER_HINT": ".recognizers",
    "Recognizer": ".recognizers",
    "arcface_affine": ".recognizers",
    "arcface_box": ".recognizers",
    "arcface_crop": ".recognizers",
    "load_recognizer": ".recognizers",
    "recognizer_spellings": ".recognizers",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

