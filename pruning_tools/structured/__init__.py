"""Structured pruning: remove whole output channels, attention heads and MLP neurons.

``trace`` records one forward and finds every slice coupled to each channel; ``groups`` turns that
into groups of units with scores, keep counts and masks; ``pruner`` is ``Prune(..., structure="channel")``;
``shrink`` removes the masked units for real; ``files`` saves and loads shrunk models.
"""
