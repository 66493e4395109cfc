"""The registry side of the workflow: an embedded OCI Distribution server
(``server``) and a client that pushes and pulls images (``client``)."""
