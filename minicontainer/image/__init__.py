"""OCI images: format helpers (oci), layer tarballs (layer), the local store
(store) and the bootstrap images (bootstrap).

Import the submodule you need (``from minicontainer.image.store import
ImageStore``): this package imports nothing eagerly, so ``minicontainer run``
does not pay for tarfile and gzip until a layer must be unpacked.
"""
