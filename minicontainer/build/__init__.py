"""minicontainer build: Dockerfile -> image, with a layer cache (see builder.py)."""
