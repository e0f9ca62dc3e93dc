"""Stand-ins for the parts of AUTOMATIC1111/stable-diffusion-webui (v1.x) that scripts/bfr_face_restorer.py uses,
with the same names and call shapes as the real modules (face_restoration, shared, devices, paths,
script_callbacks). Nothing else of the web UI is imitated."""
