"""Looking at a trained model: interpretation of the validation set, evaluation on a test set, plots."""
