"""Pretraining: run configs, optimizer and schedule, the torch loop, the Ray Train adapter."""
