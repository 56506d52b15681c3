"""Experiment trackers a run reports to besides its own directory: subscribers to training's events."""
