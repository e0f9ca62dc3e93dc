"""Files in and out: image reading/writing (EXIF, bit depth, alpha), video files in chunks (PyAV), atomic writes."""
