"""Converters from official checkpoints (pure ``state_dict -> state_dict`` functions) and a loader
that reports missing, unexpected and resized keys."""
