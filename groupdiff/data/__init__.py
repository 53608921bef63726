"""Datasets: built-in Fashion-MNIST, ImageNet-layout folders and pre-encoded VAE latents.

``build_dataset(DataConfig)`` returns a torch Dataset with ``labels``, ``num_classes``, ``channels`` and a
content ``digest``. An ImageNet folder (``root/<class>/<image>``, ADM centre crop, RGB):
``--set data.dataset=imagefolder --set data.root=/data/imagenet/train --set data.image_size=256``
(``data.skip_corrupt=true`` skips and lists unreadable files). Latents for latent-space training:
``groupdiff encode-latents --set data.dataset=imagefolder --set data.root=... --set data.vae.weights=/weights/sd-vae-ft-ema
--out /data/latents`` then ``--set data.dataset=latents --set data.root=/data/latents``.
"""
