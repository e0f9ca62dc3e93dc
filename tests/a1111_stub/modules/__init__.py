"""Stand-ins for the parts of AUTOMATIC1111/stable-diffusion-webui (v1.x) that scripts/bfr_face_restorer.py uses,
with the same names and call shapes as the real modules (face_restoration, shared, devices, paths,
script_callbacks, scripts, scripts_postprocessing, ui_components). Nothing else of the web UI is imitated. Read
from Forge (lllyasviel/stable-diffusion-webui-forge dfdcbab6), which keeps A1111 1.10's interfaces for these."""
