"""Inference: stage-1 points and classifier predictions for a split, ensembling, OOF evaluation."""
