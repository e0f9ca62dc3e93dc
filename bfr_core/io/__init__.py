"""Files in and out: image reading/writing (EXIF, bit depth, alpha) and atomic writes."""
