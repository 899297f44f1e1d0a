"""Direct preference optimisation (Rafailov et al. 2023): the policy learns from preference pairs directly,
against the frozen SFT model as reference, with no reward model and no sampling."""
