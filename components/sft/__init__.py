"""Supervised fine-tuning: causal-LM loss on completion tokens only."""
