"""Datasets: built-in Fashion-MNIST and (later) ImageFolder / pre-encoded latents."""
