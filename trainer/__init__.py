"""trainer: fastai's image classification recipes as one reliable command."""

__version__ = "0.1.0"
