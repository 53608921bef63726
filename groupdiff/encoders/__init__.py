"""Image encoders for group mining and evaluation: ``pixels``, ``classifier``, ``clip``, ``dinov2``.

Nothing is downloaded at run time (the stage sets ``HF_HUB_OFFLINE=1``); pretrained weights are local files:

* CLIP (open_clip): ``--set embed.encoder=clip --set embed.clip_arch=ViT-L-14
  --set embed.weights=/weights/open_clip_pytorch_model.bin`` (any open_clip architecture; a custom one
  can be registered with ``embed.clip_config=<model-config JSON named <arch>.json>``).
* DINOv2 (timm): ``--set embed.encoder=dinov2 --set embed.dinov2_arch=vit_base_patch14_dinov2
  --set embed.weights=/weights/dinov2_vitb14.safetensors`` (input side ``embed.dinov2_model_args.img_size``,
  224 by default; position embeddings are resampled).
* classifier: ``groupdiff train-classifier --out clf.safetensors`` then ``--set embed.encoder=classifier
  --set embed.weights=clf.safetensors``. ``load_classifier(path)`` gives a model with ``features(images)``
  and ``logits(images)`` for evaluation on the built-in data.
* pixels: flattened pixels, ``embed.pca_dim`` > 0 for a PCA fitted on ``embed.pca_fit_items`` images.
"""
