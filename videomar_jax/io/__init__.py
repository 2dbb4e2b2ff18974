"""Generic I/O at the bottom of the layering: video and image files, safetensors, key maps."""
