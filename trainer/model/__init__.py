"""The model: architectures and weights files (arch), the fastai learner (learner), precision callbacks."""
