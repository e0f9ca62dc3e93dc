"""Face identity: ArcFace recognizers (arcface_torch iresnet, facexlib IR-SE50, insightface ONNX) and the
identity guidance that steers diffusion sampling with them."""
from ..archs.iresnet import IRESNET_LAYERS, IRSE_LAYERS, InputAffine, IResNet, IRSEBackbone
from .guidance import STRENGTH_UNIT, FaceRecognizer, IdentityGuidance, cosine_distance, feature_mask
from .recognizers import (ARCFACE_TEMPLATE_112, FOLDER_HINT, Recognizer, arcface_affine, arcface_box, arcface_crop,
                          load_recognizer)

__all__ = [
    "STRENGTH_UNIT", "FaceRecognizer", "IdentityGuidance", "cosine_distance", "feature_mask",
    "ARCFACE_TEMPLATE_112", "FOLDER_HINT", "IRESNET_LAYERS", "IRSE_LAYERS", "IResNet", "IRSEBackbone", "InputAffine",
    "Recognizer", "arcface_affine", "arcface_box", "arcface_crop", "load_recognizer",
]
