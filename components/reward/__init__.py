"""Reward model: Bradley-Terry pairwise loss on a sequence-classification head."""
