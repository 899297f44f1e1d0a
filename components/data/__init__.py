"""Data prep: the demo review task, the gold scorer, TRL dataset formats, tokenizers, manifests."""
