"""Training: the fit pipeline, its events and their subscribers, checkpoints and resume, distributed runs,
lr_find and activation statistics."""
