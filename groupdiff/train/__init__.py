"""Training on DeepSpeed (importing this package must stay light: no deepspeed import here)."""
