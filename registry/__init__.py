"""Records: the object store (MinIO/S3 or a local folder), MLflow tracking + model registry, the SQL catalogue.

``registry`` may import ``groupdiff`` (imports point down); ``groupdiff`` never imports ``registry``.
Submodules are imported on use so ``import registry`` stays cheap.
"""
