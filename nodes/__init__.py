"""ComfyUI nodes (V3 schema): a thin adapter over bfr_core (argument mapping, model folders, memory, progress)."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .adapt import BFRAdaptRestorer, BFRPseudoTargets
from .align import BFRAlignFaces, BFRPasteFaces
from .comfy_glue import register_model_folders
from .detect import BFRDetectFaces, BFRLoadFaceDetector
from .identity import BFRFaceSimilarity, BFRIdentityGuidance, BFRLoadFaceRecognizer
from .restore import BFRDiffusionRestore, BFRLoadDiffusionPrior, BFRLoadRestorer, BFRRestoreFaces
from .sd_restore import BFRIdentityGuider, BFRRestoreCropsWithModel
from .track import BFRBlendFaceTracks, BFRTrackFaces

register_model_folders()

# The registration list: every node of the pack, in menu order. A new node module adds its classes here.
NODE_LIST: list[type[io.ComfyNode]] = [
    BFRLoadFaceDetector,
    BFRDetectFaces,
    BFRAlignFaces,
    BFRPasteFaces,
    BFRLoadDiffusionPrior,
    BFRLoadRestorer,
    BFRDiffusionRestore,
    BFRRestoreFaces,
    BFRLoadFaceRecognizer,
    BFRIdentityGuidance,
    BFRFaceSimilarity,
    BFRTrackFaces,
    BFRBlendFaceTracks,
    BFRPseudoTargets,
    BFRAdaptRestorer,
    BFRRestoreCropsWithModel,
    BFRIdentityGuider,
]


class BFRExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_LIST)


async def comfy_entrypoint() -> BFRExtension:
    """ComfyUI's V3 entry point (ComfyUI >= 0.3.47 calls it when the pack has no NODE_CLASS_MAPPINGS)."""
    return BFRExtension()
